"""Full-context recognition with any head of the dual-mode model (and the streaming
RNN-T head run on a whole utterance).

Heads: ``rnnt`` (offline RNN-T, time-synchronous beam search), ``ctc`` (greedy at beam 1,
prefix beam search otherwise), ``attention`` (joint CTC/attention beam search),
``maskctc`` (Mask-CTC iterative decoding), ``joint`` (4D-style: the n-best lists of one
or more heads, pooled, rescored with the weighted log-likelihoods of every head; the
weights are tuned on a development set by ``dualmode_asr_tune_joint``) and
``streaming_rnnt`` (the
streaming encoder + streaming RNN-T on the whole utterance, identical to
:class:`espnet2_dualmode.inference.streaming.Speech2TextStreaming`'s final result).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from espnet2_dualmode.decoding import (
    AttentionBeamSearch,
    Hypothesis,
    MaskCTCSearch,
    TransducerSearch,
    attention_sequence_scores,
    ctc_greedy,
    ctc_prefix_beam_search,
    ctc_sequence_scores,
    mlm_sequence_scores,
    rescore,
    transducer_sequence_scores,
)
from espnet2_dualmode.inference.model_io import Result, TokenText, load_model, sample_rate

HEADS = ("rnnt", "ctc", "attention", "maskctc", "joint", "streaming_rnnt")
DEFAULT_JOINT_WEIGHTS = {"rnnt": 1.0, "ctc": 0.3, "attention": 0.3, "mlm": 0.0}


class Speech2Text:
    """Decode waveforms with one head of a trained dual-mode model.

    Args:
        asr_train_config, asr_model_file: the training run's config.yaml and weights.
        decode_head: one of :data:`HEADS`.
        beam_size: beam of every search (1 = greedy).
        nbest: hypotheses returned per utterance.
        max_sym_per_frame: RNN-T symbols per encoder frame.
        ctc_weight: CTC prefix-score weight of the attention search.
        maskctc_n_iterations, maskctc_threshold_probability: Mask-CTC decoding.
        joint_nbest_head: head(s) whose n-best lists ``joint`` pools and rescores: rnnt,
            ctc or attention, several joined by ``+`` (e.g. ``rnnt+attention``).
        joint_weights: per head (rnnt, ctc, attention, mlm) weight of its log-likelihood.
        device: torch device.
        block_size, hop_size, look_ahead: the streaming encoder's geometry (none: the
            training geometry; block_size alone: hop and look-ahead from a dynamic model's
            ratios); every head on the cascade follows it.
    """

    def __init__(
        self,
        asr_train_config: str | Path,
        asr_model_file: Optional[str | Path],
        decode_head: str = "rnnt",
        beam_size: int = 10,
        nbest: int = 1,
        max_sym_per_frame: int = 10,
        ctc_weight: float = 0.3,
        maskctc_n_iterations: int = 10,
        maskctc_threshold_probability: float = 0.99,
        joint_nbest_head: str = "rnnt",
        joint_weights: Optional[Mapping[str, float]] = None,
        device: str = "cpu",
        block_size: Optional[int] = None,
        hop_size: Optional[int] = None,
        look_ahead: Optional[int] = None,
    ):
        if decode_head not in HEADS:
            raise ValueError(f"decode_head must be one of {HEADS}, not {decode_head!r}")
        self.model, self.train_args = load_model(asr_train_config, asr_model_file, device,
                                                 block_size, hop_size, look_ahead)
        self.device = torch.device(device)
        self.decode_head = decode_head
        self.beam_size, self.nbest = beam_size, nbest
        self.text = TokenText(self.train_args)
        self.sample_rate = sample_rate(self.train_args)
        m = self.model
        needs = {"rnnt": [m.offline_rnnt[0], m.full_encoder], "ctc": [m.ctc],
                 "attention": [m.att_decoder], "maskctc": [m.ctc, m.mlm_decoder],
                 "streaming_rnnt": [m.stream_encoder, m.stream_decoder], "joint": [m.full_encoder]}
        if any(part is None for part in needs[decode_head]):
            raise ValueError(f"{asr_train_config}: this model has no {decode_head} head")
        self.joint_weights = dict(DEFAULT_JOINT_WEIGHTS if joint_weights is None else joint_weights)
        self.joint_nbest_heads = joint_nbest_head.split("+")
        self.max_sym_per_frame, self.ctc_weight = max_sym_per_frame, ctc_weight
        if decode_head == "joint":
            self._check_joint()
            self.searches = {h: self._search(h, beam_size) for h in self.joint_nbest_heads
                             if h != "ctc"}
        else:
            self.search = self._search(decode_head, nbest, maskctc_n_iterations,
                                       maskctc_threshold_probability)

    def _search(self, head: str, nbest: int, maskctc_n_iterations: int = 10,
                maskctc_threshold_probability: float = 0.99):
        """The beam search of ``head`` (None for CTC, whose search needs no state)."""
        m = self.model
        if head in ("rnnt", "streaming_rnnt"):
            dec, joint = ((m.stream_decoder, m.stream_joint) if head == "streaming_rnnt"
                          else m.offline_rnnt)
            return TransducerSearch(dec, joint, self.beam_size, self.max_sym_per_frame,
                                    nbest=nbest)
        if head == "attention":
            return AttentionBeamSearch(
                m.att_decoder, m.ctc if self.ctc_weight > 0 else None, m.vocab_size, m.sos,
                m.eos, beam_size=self.beam_size, ctc_weight=self.ctc_weight, nbest=nbest)
        if head == "maskctc":
            return MaskCTCSearch(m.ctc, m.mlm_decoder, maskctc_n_iterations,
                                 maskctc_threshold_probability)
        return None

    def _check_joint(self) -> None:
        """Every weighted head of ``joint`` decoding, and its n-best head, exist."""
        m = self.model
        available = {"rnnt": m.offline_rnnt[0], "ctc": m.ctc, "attention": m.att_decoder,
                     "mlm": m.mlm_decoder}
        unknown = set(self.joint_weights) - set(available)
        if unknown:
            raise ValueError(f"joint_weights has unknown heads {sorted(unknown)}; use {sorted(available)}")
        unknown = [h for h in self.joint_nbest_heads if h not in ("rnnt", "ctc", "attention")]
        if unknown:
            raise ValueError(f"joint_nbest_head: unknown n-best heads {unknown}; use rnnt, ctc "
                             "or attention, joined by +")
        missing = [h for h, w in self.joint_weights.items() if w and available[h] is None]
        missing += [h for h in self.joint_nbest_heads if available[h] is None]
        if missing:
            raise ValueError(f"joint decoding needs the heads {missing}, "
                             "which this model does not have")

    # ----- features --------------------------------------------------------------------
    def features(self, speech: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features of each waveform on the model's device, one utterance at a time.

        ESPnet's batched STFT reflects the end of a short utterance into the zero padding
        of the batch, so its last frames would depend on its batch-mates.
        """
        m, device = self.model, self.device
        feats, lens = [], []
        for wav in speech:
            wav = torch.as_tensor(wav, dtype=torch.float32, device=device).unsqueeze(0)
            n = torch.tensor([wav.size(1)], device=device)
            raw = m.collect_feats(wav, n)
            feats.append(raw["feats"][0, : raw["feats_lengths"][0]])
            lens.append(int(raw["feats_lengths"][0]))
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        lengths = torch.tensor(lens, device=device)
        if m.normalize is not None:
            padded, lengths = m.normalize(padded, lengths)
        return padded, lengths

    # ----- decoding ----------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, speech: Sequence[np.ndarray | torch.Tensor]) -> List[List[Result]]:
        """Decode a batch of waveforms; returns the n-best results of each."""
        enc = self.model.encode_features(*self.features(speech))
        hyps = self._decode(enc)
        return [self.text.results(nb) for nb in hyps]

    def _decode(self, enc) -> List[List[Hypothesis]]:
        head, m = self.decode_head, self.model
        if head == "streaming_rnnt":
            return self.search(enc.stream, enc.lengths)
        if head == "rnnt":
            return self.search(enc.full, enc.lengths)
        if head == "ctc":
            log_probs = m.ctc.log_softmax(enc.full)
            if self.beam_size == 1:
                return [[h] for h in ctc_greedy(log_probs, enc.lengths, m.blank_id)]
            return [ctc_prefix_beam_search(lp[:n], self.beam_size, m.blank_id, self.nbest)
                    for lp, n in zip(log_probs, enc.lengths.tolist())]
        if head == "attention":
            return self.search(enc.full, enc.lengths)
        if head == "maskctc":
            return [[h] for h in self.search(enc.full, enc.lengths)]
        return self._joint(enc)

    def _joint(self, enc) -> List[List[Hypothesis]]:
        """4D-style joint decoding: rescore the pooled n-best lists with every weighted head."""
        heads = [h for h, w in self.joint_weights.items() if w]
        return [rescore(cands, scores, self.joint_weights)[: self.nbest]
                for cands, scores in self.joint_candidates(enc, heads)]

    def joint_candidates(self, enc, heads: Sequence[str]
                         ) -> List[Tuple[List[List[int]], Dict[str, torch.Tensor]]]:
        """Per utterance: the pooled, de-duplicated n-best candidates of the n-best heads
        (in their order, each head's best first), and their log-likelihoods (N,) under
        each of ``heads`` (rnnt, ctc, attention, mlm)."""
        m = self.model
        nbests: List[List[List[int]]] = [[] for _ in range(enc.full.size(0))]
        for head in self.joint_nbest_heads:
            if head == "ctc":
                log_probs = m.ctc.log_softmax(enc.full)
                found = [ctc_prefix_beam_search(lp[:n], self.beam_size, m.blank_id, self.beam_size)
                         for lp, n in zip(log_probs, enc.lengths.tolist())]
            else:
                found = self.searches[head](enc.full, enc.lengths)
            for pool, hyps in zip(nbests, found):
                pool.extend(hyp.tokens for hyp in hyps if hyp.tokens not in pool)
        scorers = {
            "rnnt": lambda h, c: transducer_sequence_scores(*m.offline_rnnt, h, c),
            "ctc": lambda h, c: ctc_sequence_scores(m.ctc, h, c, m.blank_id),
            "attention": lambda h, c: attention_sequence_scores(m.att_decoder, h, c, m.sos, m.eos),
            "mlm": lambda h, c: mlm_sequence_scores(m.mlm_decoder, h, c, m.mask_token),
        }
        out = []
        for i, cands in enumerate(nbests):
            h = enc.full[i, : enc.lengths[i]]
            out.append((cands, {head: scorers[head](h, cands) for head in heads}))
        return out


def shared_offline_head(model: torch.nn.Module, asr_train_config: str | Path, head: str,
                        **options) -> Speech2Text:
    """A :class:`Speech2Text` of ``head`` whose weights are the tensors of ``model`` (the
    model another recognizer loaded): no second copy, no second read of the weights file."""
    offline = Speech2Text(asr_train_config, None, decode_head=head, **options)
    offline.model.load_state_dict(model.state_dict(), assign=True)
    return offline
