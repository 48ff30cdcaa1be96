"""The dual-mode ASR model: streaming and full-context recognition in one network.

Paper equations (Shakeel et al., "Joint Optimization of Streaming and Non-Streaming ASR with
Multi-Decoder and Knowledge Distillation", arXiv 2405.13514), each computed in one named place:

- Eq. (2)-(3) cascade: ``H_st = stream_encoder(X)``, ``H_te = full_encoder(H_st)`` -> :meth:`encode_features`
- Eq. (4)  L_onl, streaming RNN-T -> :meth:`_rnnt_loss` on H_st (its prediction net:
  :meth:`_prediction_states`)
- Eq. (5)  L_ctc (ESPnet's ``CTC``), Eq. (6) L_rnnt (:meth:`_rnnt_loss`), Eq. (7) L_att
  (:meth:`_att_loss`), Eq. (8) L_mlm (:meth:`_mlm_loss`), all on H_te
- Eq. (9)  L_off = sum of the weighted offline losses -> :meth:`_offline_loss`
- Eq. (10)-(12) sp-KD of one layer pair -> :func:`espnet2_dualmode.losses.sp_kd_loss` (mse-ED
  baseline: :func:`espnet2_dualmode.losses.mse_distill_loss`); summed over the layer pairs
  -> :meth:`_encoder_distill_loss` (sp-ED, mse-ED), :meth:`_decoder_distill_loss` (sp-DD)
- L_dist of Eq. (13), the sum of the configured distillation terms -> :meth:`_distill_loss`
- Eq. (13) L = lambda_onl L_onl + lambda_off L_off + lambda_dist L_dist -> :meth:`_objective`

Not in the paper, both off by default, for short CPU runs (the demo): without a CTC term on
the streaming encoder, RNN-T and attention losses first learn the label prior and the
encoders stay nearly input-independent for the first thousand updates.
- an auxiliary CTC loss on H_st (``stream_ctc_weight``, as ESPnet's transducer
  ``auxiliary_ctc_weight``), added to Eq. (13);
- a CTC warm-up (``ctc_warmup_iters``): the first training iterations optimise only the CTC
  losses (streaming auxiliary + offline, weight 1 each) -> :meth:`_ctc_warmup_loss`.

Dynamic blocks (the streaming encoder's ``dynamic_block_sizes``, not in the paper): each
training batch runs the streaming encoder, and thus the whole cascade, at the geometry drawn
for its iteration (:meth:`_stream_geometry`), reported as ``block_size``. Validation keeps the
default geometry for the loss and adds the greedy streaming error rate at every geometry of
the set (``cer_onl_b<block>``, :meth:`_geometry_error_rates`).

The paper's baselines are configurations of the same class: standalone Context-T
(streaming encoder + streaming RNN-T only), standalone Conformer-T (full-context encoder
reading features + offline RNN-T only) and cascaded encoders with one shared RNN-T
decoder (``shared_rnnt: true``, Narayanan et al.).

Losses follow ESPnet's convention: per-utterance sums averaged over the batch.
Symbols: B batch, T input frames, T' encoder frames, U tokens, V vocabulary.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import editdistance
import torch
from espnet.nets.pytorch_backend.maskctc.add_mask_token import mask_uniform
from espnet.nets.pytorch_backend.nets_utils import th_accuracy
from espnet.nets.pytorch_backend.transformer.add_sos_eos import add_sos_eos
from espnet.nets.pytorch_backend.transformer.label_smoothing_loss import LabelSmoothingLoss
from espnet2.asr.ctc import CTC
from espnet2.asr.decoder.abs_decoder import AbsDecoder
from espnet2.asr.decoder.transducer_decoder import TransducerDecoder
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from espnet2.asr.specaug.abs_specaug import AbsSpecAug
from espnet2.asr_transducer.joint_network import JointNetwork
from espnet2.layers.abs_normalize import AbsNormalize
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel

from espnet2_dualmode.decoding.attention_search import attention_greedy
from espnet2_dualmode.decoding.ctc_search import ctc_greedy
from espnet2_dualmode.decoding.transducer_search import greedy_search
from espnet2_dualmode.encoders.contextual_block_conformer import ContextualBlockConformerEncoder
from espnet2_dualmode.encoders.full_context_conformer import FullContextConformerEncoder
from espnet2_dualmode.losses import mse_distill_loss, pruned_rnnt_loss, rnnt_loss, sp_kd_loss
from espnet2_dualmode.losses.transducer import check_fastemit_lambda
from espnet2_dualmode.train.collective_errors import raise_on_every_rank


class EncoderOutputs(NamedTuple):
    """Both encoders' outputs; a path absent from the configuration is None."""

    stream: Optional[torch.Tensor]  # (B, T', D) H_st
    stream_layers: List[torch.Tensor]
    full: Optional[torch.Tensor]  # (B, T', D) H_te
    full_layers: List[torch.Tensor]
    lengths: torch.Tensor  # (B,)


class DualModeASRModel(AbsESPnetModel):
    """Cascaded streaming / full-context encoders with separate decoders and sp-KD.

    Args:
        vocab_size: V, including ``<blank>`` (id 0) and ``<sos/eos>`` (id V-1).
        token_list: the V tokens.
        frontend, specaug, normalize: ESPnet feature pipeline (any may be None).
        stream_encoder: contextual-block Conformer (None: no streaming path).
        full_encoder: full-context Conformer (None: no full-context path).
        stream_decoder, stream_joint: streaming RNN-T prediction and joint networks.
        rnnt_decoder, rnnt_joint: offline RNN-T (None with ``shared_rnnt``).
        ctc, att_decoder, mlm_decoder: the other offline heads (None: absent).
        stream_ctc: auxiliary CTC head on H_st (None: absent).
        online_weight: lambda_onl of Eq. (13).
        offline_weight: lambda_off of Eq. (13).
        ctc_weight, rnnt_weight, att_weight, mlm_weight: Eq. (9) weights.
        distill_weight: lambda_dist of Eq. (13).
        stream_ctc_weight: weight of the auxiliary streaming CTC loss (not in the paper).
        ctc_warmup_iters: number of first training iterations (forward calls in training
            mode) that optimise only the CTC losses (not in the paper; 0: off). The count
            is a buffer of the model (``train_iters``), so a resumed run continues it; it
            stops at the warm-up's end unless the streaming encoder has dynamic blocks,
            whose draw it indexes.
        encoder_distill: "sp" (sp-ED), "mse" (mse-ED) or None.
        encoder_distill_layers: (teacher layer, student layer) pairs, indices into the
            full-context and streaming encoder layers (negative from the end); the set
            zeta of Eq. (12).
        decoder_distill: "sp" (sp-DD: attention decoder states -> streaming RNN-T
            prediction-net states) or None.
        detach_teacher: no gradient flows into the teacher through L_dist.
        shared_rnnt: one RNN-T decoder for both encoders (cascaded-encoders baseline);
            the offline RNN-T loss then uses ``stream_decoder``/``stream_joint``.
        lsm_weight: label smoothing for the attention and MLM decoders.
        rnnt_backend: "auto", "torchaudio" or "warp_rnnt" (see losses.transducer).
        rnnt_loss_type: "full" (the whole (B, T', U+1, V) joint) or "pruned" (pruned
            RNN-T: a trivial-joiner loss picks ``pruned_s_range`` label positions per
            frame and the joint runs only there; for large vocabularies).
        pruned_s_range, simple_loss_scale: settings of the pruned loss.
        fastemit_lambda: FastEmit weight (Yu et al. 2021) on both RNN-T losses, L_onl and
            L_rnnt, with either loss type; it changes their gradients only (see
            losses.transducer). 0 (default) is the plain RNN-T loss.
    """

    def __init__(
        self,
        vocab_size: int,
        token_list: Sequence[str],
        frontend: Optional[AbsFrontend],
        specaug: Optional[AbsSpecAug],
        normalize: Optional[AbsNormalize],
        stream_encoder: Optional[ContextualBlockConformerEncoder],
        full_encoder: Optional[FullContextConformerEncoder],
        stream_decoder: Optional[TransducerDecoder],
        stream_joint: Optional[JointNetwork],
        rnnt_decoder: Optional[TransducerDecoder],
        rnnt_joint: Optional[JointNetwork],
        ctc: Optional[CTC],
        att_decoder: Optional[AbsDecoder],
        mlm_decoder: Optional[AbsDecoder],
        stream_ctc: Optional[CTC] = None,
        online_weight: float = 1.0,
        offline_weight: float = 1.0,
        ctc_weight: float = 0.15,
        rnnt_weight: float = 0.10,
        att_weight: float = 0.30,
        mlm_weight: float = 0.45,
        distill_weight: float = 3000.0,
        stream_ctc_weight: float = 0.0,
        ctc_warmup_iters: int = 0,
        encoder_distill: Optional[str] = None,
        encoder_distill_layers: Sequence[Sequence[int]] = ((-1, -1),),
        decoder_distill: Optional[str] = None,
        detach_teacher: bool = True,
        shared_rnnt: bool = False,
        lsm_weight: float = 0.1,
        rnnt_backend: str = "auto",
        rnnt_loss_type: str = "full",
        pruned_s_range: int = 5,
        simple_loss_scale: float = 0.5,
        fastemit_lambda: float = 0.0,
        ignore_id: int = -1,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.token_list = list(token_list)
        self.blank_id = 0
        self.sos = self.eos = vocab_size - 1
        self.mask_token = vocab_size  # the MLM decoder's extra output
        self.ignore_id = ignore_id
        self.frontend, self.specaug, self.normalize = frontend, specaug, normalize
        self.stream_encoder, self.full_encoder = stream_encoder, full_encoder
        self.stream_decoder, self.stream_joint = stream_decoder, stream_joint
        self.rnnt_decoder, self.rnnt_joint = rnnt_decoder, rnnt_joint
        self.ctc, self.att_decoder, self.mlm_decoder = ctc, att_decoder, mlm_decoder
        self.online_weight, self.offline_weight = online_weight, offline_weight
        self.offline_weights = {"ctc": ctc_weight, "rnnt": rnnt_weight,
                                "att": att_weight, "mlm": mlm_weight}
        self.distill_weight = distill_weight
        self.stream_ctc, self.stream_ctc_weight = stream_ctc, stream_ctc_weight
        self.ctc_warmup_iters = ctc_warmup_iters
        self.dynamic_blocks = bool(getattr(stream_encoder, "dynamic_geometries", ()))
        if ctc_warmup_iters > 0 or self.dynamic_blocks:  # only then: other checkpoints keep their keys
            self.register_buffer("train_iters", torch.zeros((), dtype=torch.long))
        self.encoder_distill = encoder_distill
        self.encoder_distill_layers = [tuple(p) for p in encoder_distill_layers]
        self.decoder_distill = decoder_distill
        self.detach_teacher = detach_teacher
        self.shared_rnnt = shared_rnnt
        self.rnnt_backend = rnnt_backend
        self.rnnt_loss_type = rnnt_loss_type
        self.pruned_s_range = pruned_s_range
        self.simple_loss_scale = simple_loss_scale
        check_fastemit_lambda(fastemit_lambda)
        self.fastemit_lambda = fastemit_lambda
        self.criterion_att = LabelSmoothingLoss(vocab_size, ignore_id, lsm_weight)
        self.criterion_mlm = LabelSmoothingLoss(vocab_size + 1, ignore_id, lsm_weight)
        self._check_configuration()

    # ----- configuration -------------------------------------------------------------
    @property
    def offline_rnnt(self) -> Tuple[Optional[TransducerDecoder], Optional[JointNetwork]]:
        """(prediction net, joint network) of the offline RNN-T: the streaming pair with
        ``shared_rnnt``, else the offline pair (None where absent)."""
        if self.shared_rnnt:
            return self.stream_decoder, self.stream_joint
        return self.rnnt_decoder, self.rnnt_joint

    def _check_configuration(self) -> None:
        """Every weighted loss needs its modules and every module needs a weight."""
        errors = []
        if self.stream_encoder is None and self.full_encoder is None:
            errors.append("neither stream_encoder nor full_encoder is configured")
        if self.online_weight > 0 and (self.stream_encoder is None or self.stream_decoder is None):
            errors.append("online_weight > 0 needs stream_encoder and the streaming RNN-T")
        offline_heads = {"ctc": self.ctc, "att": self.att_decoder, "mlm": self.mlm_decoder,
                         "rnnt": self.offline_rnnt[0]}
        for name, head in offline_heads.items():
            weight = self.offline_weights[name] * self.offline_weight
            if weight > 0 and (head is None or self.full_encoder is None):
                errors.append(f"{name}_weight > 0 needs full_encoder and the {name} head")
            if weight == 0 and head is not None and not (name == "rnnt" and self.shared_rnnt):
                errors.append(f"the {name} head is configured but its weight is 0")
        if (self.stream_ctc_weight > 0) != (self.stream_ctc is not None):
            errors.append("stream_ctc_weight > 0 and the stream_ctc head go together")
        if self.stream_ctc is not None and self.stream_encoder is None:
            errors.append("stream_ctc needs stream_encoder")
        if self.ctc_warmup_iters < 0:
            errors.append(f"ctc_warmup_iters must be >= 0, not {self.ctc_warmup_iters}")
        if self.ctc_warmup_iters > 0 and self.ctc is None and self.stream_ctc is None:
            errors.append("ctc_warmup_iters > 0 needs the ctc or the stream_ctc head")
        if self.shared_rnnt and self.rnnt_decoder is not None:
            errors.append("shared_rnnt uses the streaming RNN-T for both paths; "
                          "do not configure rnnt_decoder")
        if self.encoder_distill not in (None, "sp", "mse"):
            errors.append(f"encoder_distill must be sp, mse or null, not {self.encoder_distill!r}")
        if self.rnnt_loss_type not in ("full", "pruned"):
            errors.append(f"rnnt_loss_type must be full or pruned, not {self.rnnt_loss_type!r}")
        if self.decoder_distill not in (None, "sp"):
            errors.append(f"decoder_distill must be sp or null, not {self.decoder_distill!r}")
        if self.encoder_distill and (self.stream_encoder is None or self.full_encoder is None):
            errors.append("encoder distillation needs both encoders")
        if self.decoder_distill and (self.att_decoder is None or self.stream_decoder is None):
            errors.append("decoder distillation needs att_decoder and the streaming RNN-T")
        if (self.encoder_distill or self.decoder_distill) and self.distill_weight <= 0:
            errors.append("distillation is enabled but distill_weight <= 0")
        if errors:
            raise ValueError("invalid DualModeASRModel configuration: " + "; ".join(errors))

    # ----- features and encoders -----------------------------------------------------
    def collect_feats(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor, **kwargs
    ) -> Dict[str, torch.Tensor]:
        """ESPnet's statistics hook: the frontend's features, before SpecAugment and
        normalisation (speech as-is without a frontend)."""
        speech = speech[:, : speech_lengths.max()]
        if self.frontend is not None:
            speech, speech_lengths = self.frontend(speech, speech_lengths)
        return {"feats": speech, "feats_lengths": speech_lengths}

    def features(self, speech: torch.Tensor, speech_lengths: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The encoders' input X (B, T, F): frontend, SpecAugment (training only), normalisation."""
        raw = self.collect_feats(speech, speech_lengths)
        feats, lengths = raw["feats"], raw["feats_lengths"]
        if self.specaug is not None and self.training:
            feats, lengths = self.specaug(feats, lengths)
        if self.normalize is not None:
            feats, lengths = self.normalize(feats, lengths)
        return feats, lengths

    def encode_features(self, feats: torch.Tensor, lengths: torch.Tensor) -> EncoderOutputs:
        """Eq. (2)-(3): H_st = STConEncoder(X), H_te = NSTConEncoder(H_st), with all layers."""
        stream, stream_layers = None, []
        if self.stream_encoder is not None:
            stream, lengths, stream_layers = self.stream_encoder.forward_layers(feats, lengths)
            feats = stream
        full, full_layers = None, []
        if self.full_encoder is not None:
            full, lengths, full_layers = self.full_encoder.forward_layers(feats, lengths)
        return EncoderOutputs(stream, stream_layers, full, full_layers, lengths)

    def encode(self, speech: torch.Tensor, speech_lengths: torch.Tensor
               ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], torch.Tensor]:
        """ESPnet's encode: (streaming_out H_st, full_context_out H_te, out_lengths)."""
        out = self.encode_features(*self.features(speech, speech_lengths))
        return out.stream, out.full, out.lengths

    # ----- training ------------------------------------------------------------------
    def forward(
        self,
        speech: Optional[torch.Tensor] = None,
        speech_lengths: Optional[torch.Tensor] = None,
        text: Optional[torch.Tensor] = None,
        text_lengths: Optional[torch.Tensor] = None,
        utt_id: Optional[Sequence[str]] = None,
        batch_error: Optional[str] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Eq. (13). Returns (loss, stats, batch size) as ESPnet's Trainer expects.

        ``utt_id`` (passed by ESPnet's Trainer) names the batch in errors. ``batch_error``
        is the error of a batch the collate function could not build: under DDP it travels
        with the batch and is raised here, so that every rank stops at the same step. Under
        DDP any failure on any rank raises
        :class:`espnet2_dualmode.train.collective_errors.RankError` on every rank.
        """
        with raise_on_every_rank(self, next(self.parameters()).device, utt_id):
            if batch_error is not None:
                raise ValueError(batch_error)
            return self._objective(speech, speech_lengths, text, text_lengths)

    def _objective(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor, text: torch.Tensor,
        text_lengths: torch.Tensor,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Eq. (13) on one batch: (loss, stats, batch size).

        L = lambda_onl L_onl + lambda_off L_off + lambda_dist L_dist, plus the auxiliary
        streaming CTC term when configured; during the CTC warm-up only the CTC losses.
        """
        batch_size = speech.size(0)
        text = text[:, : text_lengths.max()]
        self._check_tokens(text, text_lengths)
        feats, feat_lengths = self.features(speech, speech_lengths)
        step = self._count_train_iter()
        with self._stream_geometry(step) as geometry_stats:
            enc = self.encode_features(feats, feat_lengths)
        if step is not None and step < self.ctc_warmup_iters:
            loss, stats = self._ctc_warmup_loss(enc, text, text_lengths)
            stats.update(geometry_stats)
            loss, stats, weight = force_gatherable((loss, stats, batch_size), loss.device)
            return loss, stats, weight
        stats: Dict[str, Optional[torch.Tensor]] = {}
        loss = speech.new_zeros(())

        # Eq. (4): streaming RNN-T.
        pred_stream = None
        if self.online_weight > 0:
            pred_stream = self._prediction_states(self.stream_decoder, text, text_lengths)
            loss_onl = self._rnnt_loss(self.stream_joint, enc.stream, enc.lengths, pred_stream,
                                       text, text_lengths)
            loss = loss + self.online_weight * loss_onl
            stats["loss_onl"] = loss_onl.detach()
        if self.stream_ctc is not None:
            loss_stream_ctc = self.stream_ctc(enc.stream, enc.lengths, text, text_lengths)
            loss = loss + self.stream_ctc_weight * loss_stream_ctc
            stats["loss_stream_ctc"] = loss_stream_ctc.detach()

        att_hidden = None
        if enc.full is not None and self.offline_weight > 0:
            loss_off, off_stats, att_hidden = self._offline_loss(enc, text, text_lengths)
            loss = loss + self.offline_weight * loss_off
            stats.update(off_stats)

        if self.encoder_distill or self.decoder_distill:
            loss_dist, dist_stats = self._distill_loss(enc, text, text_lengths, att_hidden,
                                                       pred_stream)
            loss = loss + self.distill_weight * loss_dist
            stats.update(dist_stats)

        if not self.training:
            stats.update(self._error_rates(enc, text, text_lengths))
            stats.update(self._geometry_error_rates(feats, feat_lengths, text, text_lengths))
        stats.update(geometry_stats)
        stats["loss"] = loss.detach()
        loss, stats, weight = force_gatherable((loss, stats, batch_size), loss.device)
        return loss, stats, weight

    def _offline_loss(self, enc: EncoderOutputs, text: torch.Tensor, text_lengths: torch.Tensor
                      ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Optional[torch.Tensor]]:
        """Eq. (9): L_off = sum_i w_i L_i over the offline heads on H_te (Eq. 5-8).

        Returns (L_off, its reported terms, the attention decoder's hidden states (B, U+1, D)
        for sp-DD or None without that decoder).
        """
        stats: Dict[str, torch.Tensor] = {}
        loss_off = enc.lengths.new_zeros((), dtype=torch.float)
        att_hidden = None
        if self.ctc is not None:
            loss_ctc = self.ctc(enc.full, enc.lengths, text, text_lengths)
            loss_off = loss_off + self.offline_weights["ctc"] * loss_ctc
            stats["loss_ctc"] = loss_ctc.detach()
        if self.offline_weights["rnnt"] > 0:
            decoder, joint = self.offline_rnnt
            pred = self._prediction_states(decoder, text, text_lengths)
            loss_rnnt = self._rnnt_loss(joint, enc.full, enc.lengths, pred, text, text_lengths)
            loss_off = loss_off + self.offline_weights["rnnt"] * loss_rnnt
            stats["loss_rnnt"] = loss_rnnt.detach()
        if self.att_decoder is not None:
            loss_att, acc_att, att_hidden = self._att_loss(enc.full, enc.lengths, text, text_lengths)
            loss_off = loss_off + self.offline_weights["att"] * loss_att
            stats["loss_att"], stats["acc_att"] = loss_att.detach(), acc_att
        if self.mlm_decoder is not None:
            loss_mlm, acc_mlm = self._mlm_loss(enc.full, enc.lengths, text, text_lengths)
            loss_off = loss_off + self.offline_weights["mlm"] * loss_mlm
            stats["loss_mlm"], stats["acc_mlm"] = loss_mlm.detach(), acc_mlm
        stats["loss_off"] = loss_off.detach()
        return loss_off, stats, att_hidden

    def _distill_loss(self, enc: EncoderOutputs, text: torch.Tensor, text_lengths: torch.Tensor,
                      att_hidden: Optional[torch.Tensor], pred_stream: Optional[torch.Tensor]
                      ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """L_dist of Eq. (13): teacher = full-context side, student = streaming side.

        ``att_hidden`` (sp-DD's teacher) comes from :meth:`_offline_loss`; ``pred_stream``,
        the streaming prediction-net states of Eq. (4), is computed here when L_onl is off.
        Returns (L_dist, its reported terms).
        """
        stats: Dict[str, torch.Tensor] = {}
        loss_dist = enc.lengths.new_zeros((), dtype=torch.float)
        if self.encoder_distill:
            loss_ed = self._encoder_distill_loss(enc)
            loss_dist = loss_dist + loss_ed
            stats[f"loss_{self.encoder_distill}_ed"] = loss_ed.detach()
        if self.decoder_distill:
            if pred_stream is None:
                pred_stream = self._prediction_states(self.stream_decoder, text, text_lengths)
            loss_dd = self._decoder_distill_loss(att_hidden, pred_stream, text_lengths)
            loss_dist = loss_dist + loss_dd
            stats["loss_sp_dd"] = loss_dd.detach()
        stats["loss_dist"] = loss_dist.detach()
        return loss_dist, stats

    def _count_train_iter(self) -> Optional[int]:
        """Index of this training iteration, counted in ``train_iters``; None in evaluation
        mode or without the counter (no warm-up, no dynamic blocks)."""
        if not self.training or "train_iters" not in self._buffers:
            return None
        step = int(self.train_iters)  # host: read by int()
        if self.dynamic_blocks or step < self.ctc_warmup_iters:
            self.train_iters += 1
        return step

    @contextlib.contextmanager
    def _stream_geometry(self, step: Optional[int]) -> Iterator[Dict[str, torch.Tensor]]:
        """Run the streaming encoder at training iteration ``step``'s geometry (None:
        evaluation, the default geometry); yields the stats that report it (dynamic only)."""
        if not self.dynamic_blocks:
            yield {}
            return
        enc = self.stream_encoder
        geometry = enc.default_geometry if step is None else enc.training_geometry(step)
        with enc.geometry(geometry):
            yield {"block_size": torch.tensor(float(geometry.block_size),
                                              device=self.train_iters.device)}

    @property
    def warmup_stream_ctc(self) -> Optional[CTC]:
        """The CTC head of H_st in the warm-up: the auxiliary streaming CTC, if any."""
        return self.stream_ctc

    def _ctc_warmup_loss(self, enc: EncoderOutputs, text: torch.Tensor, text_lengths: torch.Tensor
                         ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Warm-up objective: the sum of the CTC losses on H_st (auxiliary) and H_te."""
        loss, stats = enc.lengths.new_zeros((), dtype=torch.float), {}
        if self.warmup_stream_ctc is not None:
            stats["loss_stream_ctc"] = self.warmup_stream_ctc(enc.stream, enc.lengths, text,
                                                              text_lengths)
            loss = loss + stats["loss_stream_ctc"]
        if self.ctc is not None and enc.full is not None:
            stats["loss_ctc"] = self.ctc(enc.full, enc.lengths, text, text_lengths)
            loss = loss + stats["loss_ctc"]
        stats = {k: v.detach() for k, v in stats.items()}
        stats["loss"] = loss.detach()
        return loss, stats

    def _check_tokens(self, text: torch.Tensor, text_lengths: torch.Tensor) -> None:
        valid = torch.arange(text.size(1), device=text.device) < text_lengths.unsqueeze(1)
        bad = valid & ((text < 0) | (text >= self.vocab_size))
        if bad.any():
            rows = sorted(set(bad.nonzero()[:, 0].tolist()))
            raise ValueError(f"token ids outside the vocabulary [0, {self.vocab_size}) at batch "
                             f"index {rows}: {[text[r][bad[r]].tolist() for r in rows]}")

    def _blank_padded(self, text: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        """RNN-T targets (B, U): the labels, with padding replaced by blank."""
        valid = torch.arange(text.size(1), device=text.device) < text_lengths.unsqueeze(1)
        return text.masked_fill(~valid, self.blank_id)

    def _prediction_states(self, decoder: TransducerDecoder, text: torch.Tensor,
                           text_lengths: torch.Tensor) -> torch.Tensor:
        """Prediction-net outputs (B, U+1, H) for [blank] + y: the decoder side of Eq. (4)/(6)
        and sp-DD's student."""
        decoder.set_device(text.device)
        dec_in = torch.nn.functional.pad(self._blank_padded(text, text_lengths), (1, 0),
                                         value=self.blank_id)
        return decoder(dec_in)

    def _rnnt_loss(
        self,
        joint: JointNetwork,
        enc_out: torch.Tensor,
        enc_lens: torch.Tensor,
        pred_states: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Eq. (4)/(6): RNN-T NLL averaged over the batch, from the encoder output and the
        prediction-net states (:meth:`_prediction_states`)."""
        targets = self._blank_padded(text, text_lengths)
        if self.rnnt_loss_type == "pruned":
            value, _ = pruned_rnnt_loss(joint, enc_out, pred_states, targets, enc_lens, text_lengths,
                                        blank=self.blank_id, s_range=self.pruned_s_range,
                                        simple_loss_scale=self.simple_loss_scale,
                                        fastemit_lambda=self.fastemit_lambda)
            return value
        logits = joint(enc_out.unsqueeze(2), pred_states.unsqueeze(1))  # (B, T', U+1, V)
        return rnnt_loss(logits, targets.int(), enc_lens.int(), text_lengths.int(),
                         blank=self.blank_id, reduction="mean", backend=self.rnnt_backend,
                         fastemit_lambda=self.fastemit_lambda)

    def _att_loss(
        self, enc_out: torch.Tensor, enc_lens: torch.Tensor, text: torch.Tensor,
        text_lengths: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. (7): attention decoder NLL; also its final hidden states (B, U+1, D)."""
        ys_in, ys_out = add_sos_eos(text, self.sos, self.eos, self.ignore_id)
        (logits, hidden), _ = self.att_decoder(enc_out, enc_lens, ys_in, text_lengths + 1,
                                               return_hs=True)
        value = self.criterion_att(logits, ys_out)
        acc = th_accuracy(logits.view(-1, self.vocab_size), ys_out, ignore_label=self.ignore_id)
        return value, torch.tensor(acc, device=value.device), hidden

    def _mlm_loss(
        self, enc_out: torch.Tensor, enc_lens: torch.Tensor, text: torch.Tensor,
        text_lengths: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Eq. (8): predict uniformly sampled masked tokens from the others (Mask-CTC).

        An empty transcript (silence or noise only) has nothing to mask: its row is all
        padding and adds nothing to the loss (ESPnet's ``mask_uniform`` cannot sample from it).
        """
        keep = text_lengths > 0
        if not bool(keep.any()):  # host: one flag per batch
            # nothing to predict; the decoder still runs (on one mask token per row) so that
            # every parameter takes part in the step, as DDP expects
            ys_in = text.new_full((text.size(0), 1), self.mask_token)
            logits, _ = self.mlm_decoder(enc_out, enc_lens, ys_in, torch.ones_like(text_lengths))
            return logits.sum() * 0.0, torch.tensor(float("nan"), device=logits.device)
        if bool(keep.all()):  # host: one flag per batch
            ys_in, ys_out = mask_uniform(text, self.mask_token, self.eos, self.ignore_id)
        else:
            ys_in = text.new_full(text.shape, self.eos)
            ys_out = text.new_full(text.shape, self.ignore_id)
            if bool(keep.any()):  # host: one flag per batch
                sub_in, sub_out = mask_uniform(text[keep], self.mask_token, self.eos, self.ignore_id)
                rows = keep.nonzero().squeeze(1)
                ys_in[rows, :sub_in.size(1)] = sub_in
                ys_out[rows, :sub_out.size(1)] = sub_out
        logits, _ = self.mlm_decoder(enc_out, enc_lens, ys_in, text_lengths)
        value = self.criterion_mlm(logits, ys_out)
        acc = th_accuracy(logits.view(-1, self.vocab_size + 1), ys_out, ignore_label=self.ignore_id)
        return value, torch.tensor(acc, device=value.device)

    def _teacher(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach() if self.detach_teacher else x

    def _encoder_distill_loss(self, enc: EncoderOutputs) -> torch.Tensor:
        """Eq. (12) summed over the configured (teacher, student) layer pairs (sp-ED/mse-ED)."""
        mask = torch.arange(enc.full.size(1), device=enc.full.device) < enc.lengths.unsqueeze(1)
        fn = sp_kd_loss if self.encoder_distill == "sp" else mse_distill_loss
        total = enc.full.new_zeros(())
        for teacher_layer, student_layer in self.encoder_distill_layers:
            total = total + fn(self._teacher(enc.full_layers[teacher_layer]),
                               enc.stream_layers[student_layer], mask)
        return total

    def _decoder_distill_loss(self, att_hidden: torch.Tensor, pred_states: torch.Tensor,
                              text_lengths: torch.Tensor) -> torch.Tensor:
        """sp-DD: attention decoder states (teacher) -> streaming prediction net (student)."""
        mask = torch.arange(pred_states.size(1), device=pred_states.device) < (text_lengths + 1).unsqueeze(1)
        return sp_kd_loss(self._teacher(att_hidden), pred_states, mask)

    # ----- validation error rates ----------------------------------------------------
    @torch.no_grad()
    def _error_rates(self, enc: EncoderOutputs, text: torch.Tensor,
                     text_lengths: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Token error rates of each head's greedy output (validation only)."""
        refs = [t[:n].tolist() for t, n in zip(text, text_lengths)]
        hyps: Dict[str, List[List[int]]] = {}
        if self.online_weight > 0:
            hyps["onl"] = [h.tokens for h in greedy_search(
                self.stream_decoder, self.stream_joint, enc.stream, enc.lengths)]
        if enc.full is not None and self.offline_weight > 0:
            if self.offline_weights["rnnt"] > 0:
                hyps["rnnt"] = [h.tokens for h in greedy_search(*self.offline_rnnt, enc.full,
                                                                enc.lengths)]
            if self.ctc is not None:
                hyps["ctc"] = [h.tokens for h in ctc_greedy(
                    self.ctc.log_softmax(enc.full), enc.lengths, self.blank_id)]
            if self.att_decoder is not None and self.offline_weights["att"] > 0:
                hyps["att"] = [h.tokens for h in attention_greedy(
                    self.att_decoder, enc.full, enc.lengths, self.sos, self.eos)]
        if self.stream_ctc is not None:
            hyps["stream_ctc"] = [h.tokens for h in ctc_greedy(
                self.stream_ctc.log_softmax(enc.stream), enc.lengths, self.blank_id)]
        return {f"cer_{name}": _token_error_rate(hs, refs, text.device) for name, hs in hyps.items()}

    @torch.no_grad()
    def _geometry_error_rates(self, feats: torch.Tensor, feat_lengths: torch.Tensor,
                              text: torch.Tensor, text_lengths: torch.Tensor
                              ) -> Dict[str, torch.Tensor]:
        """Greedy streaming error rate at every dynamic geometry, ``cer_onl_b<block>``
        (validation with dynamic blocks only; the same keys in every batch)."""
        if not self.dynamic_blocks or self.online_weight <= 0:
            return {}
        refs = [t[:n].tolist() for t, n in zip(text, text_lengths)]
        enc, rates = self.stream_encoder, {}
        for geometry in enc.dynamic_geometries:
            with enc.geometry(geometry):
                stream, lengths, _ = enc.forward_layers(feats, feat_lengths)
            hyps = [h.tokens for h in greedy_search(self.stream_decoder, self.stream_joint,
                                                    stream, lengths)]
            rates[f"cer_onl_b{geometry.block_size}"] = _token_error_rate(hyps, refs, text.device)
        return rates


def _token_error_rate(hyps: Sequence[Sequence[int]], refs: Sequence[Sequence[int]],
                      device: torch.device) -> torch.Tensor:
    """Edit distance of all hypotheses over the reference tokens (at least 1)."""
    n_ref = max(1, sum(len(r) for r in refs))
    errors = sum(editdistance.eval(h, r) for h, r in zip(hyps, refs))
    return torch.tensor(errors / n_ref, device=device)
