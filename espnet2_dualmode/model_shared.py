"""Dual-mode ASR with shared weights (Yu et al., ICLR 2021), next to the cascade of model.py.

One :class:`~espnet2_dualmode.encoders.dualmode_conformer.DualModeConformerEncoder` runs
both modes on the same features, and one RNN-T (prediction net + joint network) is shared by
both modes. Per batch (the paper's Algorithm 1, joint training with equal weights):

    L = lambda_onl L_rnnt(streaming) + lambda_off (L_rnnt(full) + sum_i w_i L_i) + lambda_kd L_kd

with the optional offline CTC/attention/Mask-CTC heads L_i on the full-context mode, and the
in-place distillation L_kd (:func:`inplace_kd_loss`) from the full-context mode (teacher,
detached) to the streaming mode. With a CTC head and ``ctc_warmup_iters`` (not in the paper;
the demo's short run needs it, as the cascade's does), the first iterations optimise only
that one CTC head on both modes, ``L_ctc(streaming) + L_ctc(full)``.

The model keeps the cascade's surface, so the training task and the inference code use it
unchanged: ``stream_encoder`` and ``full_encoder`` are the encoder's two mode views,
``stream_decoder``/``stream_joint`` the shared RNN-T (``offline_rnnt`` returns it too), and
``encode_features`` returns both modes' outputs as :class:`EncoderOutputs`.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from espnet2.asr.ctc import CTC
from espnet2.asr.decoder.abs_decoder import AbsDecoder
from espnet2.asr.decoder.transducer_decoder import TransducerDecoder
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from espnet2.asr.specaug.abs_specaug import AbsSpecAug
from espnet2.asr_transducer.joint_network import JointNetwork
from espnet2.layers.abs_normalize import AbsNormalize
from espnet2.torch_utils.device_funcs import force_gatherable

from espnet2_dualmode.encoders.dualmode_conformer import DualModeConformerEncoder
from espnet2_dualmode.losses.precision import float32_outside_autocast
from espnet2_dualmode.model import DualModeASRModel, EncoderOutputs


def _three_way_log_probs(logits: torch.Tensor, targets: torch.Tensor, u_lens: torch.Tensor,
                         blank: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log P(y_{u+1} | t, u), log P(blank | t, u) and log(1 - both) on a lattice.

    Args:
        logits: (B, T, U+1, V) joint outputs; targets: (B, U) labels; u_lens: (B,).

    Returns:
        Three (B, T, U+1) tensors. Where u = U_b (no next label) the label term is 0 (to be
        masked by the caller) and the rest excludes blank only.
    """
    log_probs = logits.log_softmax(-1)
    n_u = logits.size(2)
    has_label = torch.arange(n_u, device=logits.device) < u_lens.unsqueeze(1)  # (B, U+1)
    label = torch.nn.functional.pad(targets, (0, n_u - targets.size(1)), value=blank)
    label = label.masked_fill(~has_label, blank).long()
    index = label[:, None, :, None].expand(-1, logits.size(1), -1, 1)
    log_label = log_probs.gather(-1, index).squeeze(-1)
    log_blank = log_probs[..., blank]
    excluded = log_probs.scatter(-1, index, float("-inf"))
    excluded[..., blank] = float("-inf")
    log_rest = excluded.logsumexp(-1)
    return log_label.masked_fill(~has_label.unsqueeze(1), 0.0), log_blank, log_rest


@float32_outside_autocast
def inplace_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    targets: torch.Tensor, t_lens: torch.Tensor, u_lens: torch.Tensor,
                    shift: int = 0, blank: int = 0) -> torch.Tensor:
    """In-place knowledge distillation on RNN-T lattices (Dual-mode ASR; Panchapagesan et al.).

    At each lattice node (t, u) the KL divergence KL(teacher || student) between the
    three-way distributions (P(y_{u+1} | t, u), P(blank | t, u), 1 - both) is summed over
    the nodes t < T_b, u <= U_b (at u = U_b there is no next label: blank vs rest), then
    averaged over the batch. The student's node (t, u) is compared with the teacher's node
    (t - ``shift``, u): ``shift`` > 0 asks the student to emit ``shift`` frames after the
    teacher, < 0 before it; nodes whose teacher frame falls outside [0, T_b) do not count.

    Args:
        student_logits, teacher_logits: (B, T, U+1, V) joint outputs (the teacher's are
            detached here).
        targets: (B, U) labels (padding: any id); t_lens, u_lens: (B,) lattice sizes.
        shift: teacher frame shift.
        blank: blank id.
    """
    student = _three_way_log_probs(student_logits, targets, u_lens, blank)
    teacher = _three_way_log_probs(teacher_logits.detach(), targets, u_lens, blank)
    n_t, n_u = student_logits.shape[1:3]
    device = student_logits.device
    t = torch.arange(n_t, device=device)
    src = t - shift
    in_range = (src >= 0).unsqueeze(0) & (src.unsqueeze(0) < t_lens.unsqueeze(1))
    in_range &= t.unsqueeze(0) < t_lens.unsqueeze(1)  # (B, T)
    src = src.clamp(0, n_t - 1)
    has_label = torch.arange(n_u, device=device) < u_lens.unsqueeze(1)  # (B, U+1)
    nodes = in_range.unsqueeze(2) & (torch.arange(n_u, device=device) <= u_lens.unsqueeze(1)
                                     ).unsqueeze(1)  # (B, T, U+1)
    kl = student_logits.new_zeros(nodes.shape)
    for part, (log_s, log_t) in enumerate(zip(student, teacher)):
        log_t = log_t[:, src]
        term = log_t.exp() * (log_t - log_s)
        if part == 0:  # label: only where there is a next label
            term = term * has_label.unsqueeze(1)
        kl = kl + term
    return (kl * nodes).sum() / student_logits.size(0)


class DualModeSharedASRModel(DualModeASRModel):
    """Shared-weights dual-mode model: one Conformer in two modes, one RNN-T, in-place KD.

    Built by the same task as the cascade (``model: shared``) with ``stream_encoder:
    dualmode_conformer`` and ``full_encoder: null``: the arguments are those of
    :class:`DualModeASRModel`, with ``stream_encoder`` the shared encoder.

    Args:
        stream_encoder: the :class:`DualModeConformerEncoder` (both modes).
        full_encoder, rnnt_decoder, rnnt_joint: must be None (one encoder, one RNN-T).
        stream_decoder, stream_joint: the RNN-T shared by both modes.
        ctc, att_decoder, mlm_decoder: optional heads on the full-context mode; the CTC head
            also serves both modes in the CTC-only warm-up (``ctc_warmup_iters`` in kwargs).
        inplace_kd_weight: lambda_kd (0: no distillation).
        kd_shift: teacher frame shift of :func:`inplace_kd_loss` (paper sweep: -2 to 2).
        online_weight, offline_weight: streaming / full-context weights (equal: 1.0 each).
        rnnt_weight, ctc_weight, att_weight, mlm_weight: the full-context mode's terms
            (defaults here: RNN-T only, 1.0).
        **kwargs: the other options of :class:`DualModeASRModel` (RNN-T loss type and
            backend, label smoothing).
    """

    def __init__(
        self,
        vocab_size: int,
        token_list: Sequence[str],
        frontend: Optional[AbsFrontend],
        specaug: Optional[AbsSpecAug],
        normalize: Optional[AbsNormalize],
        stream_encoder: DualModeConformerEncoder,
        full_encoder: None,
        stream_decoder: TransducerDecoder,
        stream_joint: JointNetwork,
        rnnt_decoder: None,
        rnnt_joint: None,
        ctc: Optional[CTC],
        att_decoder: Optional[AbsDecoder],
        mlm_decoder: Optional[AbsDecoder],
        stream_ctc: Optional[CTC] = None,
        inplace_kd_weight: float = 1.0,
        kd_shift: int = 0,
        rnnt_weight: float = 1.0,
        ctc_weight: float = 0.0,
        att_weight: float = 0.0,
        mlm_weight: float = 0.0,
        shared_rnnt: bool = True,
        **kwargs,
    ):
        errors = []
        if not isinstance(stream_encoder, DualModeConformerEncoder):
            errors.append("stream_encoder must be dualmode_conformer")
        if full_encoder is not None or rnnt_decoder is not None or rnnt_joint is not None:
            errors.append("full_encoder and rnnt_decoder must be null (one shared encoder "
                          "and one shared RNN-T)")
        if not shared_rnnt:
            errors.append("shared_rnnt must be true")
        if stream_ctc is not None:
            errors.append("stream_ctc is not supported")
        unsupported = [k for k in ("encoder_distill", "decoder_distill", "stream_ctc_weight")
                       if kwargs.get(k)]
        if unsupported:
            errors.append(f"{unsupported} are not supported (use inplace_kd_weight)")
        if inplace_kd_weight < 0:
            errors.append(f"inplace_kd_weight must be >= 0, not {inplace_kd_weight}")
        if errors:
            raise ValueError("invalid DualModeSharedASRModel configuration: " + "; ".join(errors))
        kwargs["distill_weight"] = 0.0
        super().__init__(
            vocab_size, token_list, frontend, specaug, normalize,
            stream_encoder=stream_encoder.streaming_view, full_encoder=stream_encoder.full_view,
            stream_decoder=stream_decoder, stream_joint=stream_joint, rnnt_decoder=None,
            rnnt_joint=None, ctc=ctc, att_decoder=att_decoder, mlm_decoder=mlm_decoder,
            rnnt_weight=rnnt_weight, ctc_weight=ctc_weight, att_weight=att_weight,
            mlm_weight=mlm_weight, shared_rnnt=True, **kwargs)
        self.encoder = stream_encoder  # the weights of both mode views, registered once
        self.inplace_kd_weight = inplace_kd_weight
        self.kd_shift = kd_shift

    def encode_features(self, feats: torch.Tensor, lengths: torch.Tensor) -> EncoderOutputs:
        """Both modes of the shared encoder on the same features (not a cascade)."""
        (stream, stream_layers), (full, full_layers), lengths = self.encoder.forward_both(
            feats, lengths)
        return EncoderOutputs(stream, stream_layers, full, full_layers, lengths)

    def _objective(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor, text: torch.Tensor,
        text_lengths: torch.Tensor,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Both modes' RNN-T losses (+ full-context heads) and the in-place KD on one batch."""
        batch_size = speech.size(0)
        text = text[:, : text_lengths.max()]
        self._check_tokens(text, text_lengths)
        enc = self.encode_features(*self.features(speech, speech_lengths))
        step = self._count_train_iter()
        if step is not None and step < self.ctc_warmup_iters:
            loss, stats = self._ctc_warmup_loss(enc, text, text_lengths)
            return force_gatherable((loss, stats, batch_size), loss.device)
        pred = self._prediction_states(self.stream_decoder, text, text_lengths)
        loss_onl = self._rnnt_loss(self.stream_joint, enc.stream, enc.lengths, pred, text,
                                   text_lengths)
        loss_off, stats, _ = self._offline_loss(enc, text, text_lengths)
        loss = self.online_weight * loss_onl + self.offline_weight * loss_off
        stats["loss_onl"] = loss_onl.detach()
        if self.inplace_kd_weight > 0:
            loss_kd = self._inplace_kd(enc, pred, text, text_lengths)
            loss = loss + self.inplace_kd_weight * loss_kd
            stats["loss_inplace_kd"] = loss_kd.detach()
        if not self.training:
            stats.update(self._error_rates(enc, text, text_lengths))
        stats["loss"] = loss.detach()
        loss, stats, weight = force_gatherable((loss, stats, batch_size), loss.device)
        return loss, stats, weight

    @property
    def warmup_stream_ctc(self) -> Optional[CTC]:
        """The one CTC head serves the streaming mode in the warm-up too (shared weights)."""
        return self.ctc

    def _inplace_kd(self, enc: EncoderOutputs, pred: torch.Tensor, text: torch.Tensor,
                    text_lengths: torch.Tensor) -> torch.Tensor:
        """L_kd: :func:`inplace_kd_loss` between the shared joint's lattices of both modes.

        The lattices are recomputed here rather than taken from the RNN-T losses, which
        keep them internal (and the pruned loss never builds them): two more joint passes
        per batch, the teacher's without a graph (it is detached anyway).
        """
        with torch.no_grad():
            teacher = self.stream_joint(enc.full.unsqueeze(2), pred.unsqueeze(1))
        student = self.stream_joint(enc.stream.unsqueeze(2), pred.unsqueeze(1))
        return inplace_kd_loss(student, teacher, self._blank_padded(text, text_lengths),
                               enc.lengths, text_lengths, shift=self.kd_shift,
                               blank=self.blank_id)
