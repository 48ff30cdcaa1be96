"""Mask-CTC non-autoregressive decoding (Higuchi et al., 2020), batched.

The algorithm is ESPnet's ``MaskCTCInference`` (``espnet2/asr/maskctc_model.py``):

1. greedy CTC, repeats collapsed, blanks removed;
2. confidence of a token = the highest CTC posterior over the frames of its run;
3. tokens with confidence < ``threshold`` are replaced by ``<mask>``;
4. with M masks and K = ``n_iterations``, ``num_iter = K if M >= K else M`` MLM passes:
   each of the first ``num_iter - 1`` passes fills the ``M // num_iter`` masked positions
   whose MLM prediction is the most confident, the last pass fills all the rest.

Two deliberate differences from ESPnet: the MLM prediction at a position never is
``<mask>`` itself (ESPnet's arg-max over V + 1 outputs can "fill" a position with
``<mask>``), and predictions are ranked by their MLM probability (log-softmax over the
real tokens) rather than by the raw logit.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from espnet2_dualmode.decoding.hypothesis import Hypothesis


class MaskCTCSearch:
    """Mask-CTC decoding with an ESPnet ``CTC`` and an ``MLMDecoder``.

    The ``<mask>`` id is V, the CTC vocabulary size, as in ESPnet's ``MaskCTCModel``
    (the MLM decoder has V + 1 outputs).

    Args:
        ctc: ESPnet ``CTC`` module (V outputs).
        mlm_decoder: module called as ``mlm_decoder(hs_pad, hlens, ys_in_pad,
            ys_in_lens) -> (logits (B, L, V + 1), olens)``, e.g. ESPnet ``MLMDecoder``.
        n_iterations: K, the most MLM passes per utterance (0: one pass per masked
            token, as in ESPnet).
        threshold: CTC confidence below which a token is masked (0 = mask nothing,
            i.e. plain greedy CTC; > 1 = mask everything).
        blank: CTC blank id.
    """

    def __init__(
        self,
        ctc: torch.nn.Module,
        mlm_decoder: torch.nn.Module,
        n_iterations: int = 10,
        threshold: float = 0.99,
        blank: int = 0,
    ) -> None:
        if n_iterations < 0:
            raise ValueError(f"n_iterations must be >= 0, got {n_iterations}")
        self.ctc = ctc
        self.mlm = mlm_decoder
        self.n_iterations = n_iterations
        self.threshold = threshold
        self.blank = blank
        self.mask_token = ctc.ctc_lo.out_features
        out_layer = getattr(mlm_decoder, "output_layer", None)
        if out_layer is not None and out_layer.out_features != self.mask_token + 1:
            raise ValueError(
                f"the MLM decoder has {out_layer.out_features} outputs; with a CTC "
                f"vocabulary of {self.mask_token} it must have {self.mask_token + 1}"
            )

    @torch.no_grad()
    def __call__(
        self, enc_out: torch.Tensor, enc_lens: Optional[torch.Tensor] = None
    ) -> List[Hypothesis]:
        """Decode a batch.

        Args:
            enc_out: encoder output (B, T, D).
            enc_lens: valid frames per utterance (B,); None means all T.

        Returns:
            One hypothesis per utterance. ``timestamps`` are the first CTC frames of the
            tokens; ``score`` sums the log-confidence of each token (CTC confidence of
            kept tokens, MLM probability of filled ones): a heuristic, not a likelihood.
        """
        if enc_out.dim() != 3:
            raise ValueError(f"enc_out must have shape (B, T, D), got {tuple(enc_out.shape)}")
        batch, frames, _ = enc_out.shape
        if enc_lens is None:
            enc_lens = torch.full((batch,), frames, dtype=torch.long, device=enc_out.device)
        enc_lens = enc_lens.to(enc_out.device)
        lens = [int(n) for n in enc_lens.tolist()]
        if len(lens) != batch or any(not 0 <= n <= frames for n in lens):
            raise ValueError(f"enc_lens {lens} must hold {batch} lengths in [0, {frames}]")
        probs, ids = self.ctc.log_softmax(enc_out).exp().max(dim=-1)  # (B, T)
        tokens: List[List[int]] = []
        conf: List[List[float]] = []
        times: List[List[int]] = []
        for b, n in enumerate(lens):
            y, c, s = self._ctc_runs(ids[b, :n].tolist(), probs[b, :n].double().tolist())
            tokens.append(y)
            conf.append(c)
            times.append(s)

        logconf = [[math.log(p) for p in c] for c in conf]
        masked = [[i for i, p in enumerate(c) if p < self.threshold] for c in conf]
        for b, positions in enumerate(masked):
            for i in positions:
                tokens[b][i] = self.mask_token
        schedule = []  # per utterance: (passes, positions filled per early pass)
        for positions in masked:
            count = len(positions)
            passes = self.n_iterations if count >= self.n_iterations > 0 else count
            schedule.append((passes, count // passes if passes else 0))

        for step in range(max((p for p, _ in schedule), default=0)):
            todo = [b for b, (passes, _) in enumerate(schedule) if step < passes]
            logp = self._mlm_log_probs(enc_out, enc_lens, tokens, todo)
            for row, b in enumerate(todo):
                passes, per_pass = schedule[b]
                where = torch.tensor(masked[b], dtype=torch.long, device=logp.device)
                best_lp, best_id = logp[row, where].max(dim=-1)
                if step < passes - 1:
                    chosen = best_lp.topk(per_pass).indices.tolist()
                else:
                    chosen = list(range(len(masked[b])))
                for j in chosen:
                    tokens[b][masked[b][j]] = int(best_id[j])
                    logconf[b][masked[b][j]] = float(best_lp[j])
                filled = set(chosen)
                masked[b] = [i for k, i in enumerate(masked[b]) if k not in filled]
        return [Hypothesis(y, sum(lc), s) for y, lc, s in zip(tokens, logconf, times)]

    def _ctc_runs(
        self, ids: List[int], probs: List[float]
    ) -> Tuple[List[int], List[float], List[int]]:
        """Collapse a greedy CTC path into (tokens, run confidences, run start frames)."""
        tokens, conf, starts = [], [], []
        for t, (k, p) in enumerate(zip(ids, probs)):
            if t > 0 and ids[t - 1] == k:
                if k != self.blank:
                    conf[-1] = max(conf[-1], p)
                continue
            if k != self.blank:
                tokens.append(k)
                conf.append(p)
                starts.append(t)
        return tokens, conf, starts

    def _mlm_log_probs(
        self,
        enc_out: torch.Tensor,
        enc_lens: torch.Tensor,
        tokens: List[List[int]],
        todo: List[int],
    ) -> torch.Tensor:
        """MLM log-probabilities over the real tokens for utterances ``todo`` (N, L, V)."""
        longest = max(len(tokens[b]) for b in todo)
        device = enc_out.device
        ys = torch.tensor([tokens[b] + [self.mask_token] * (longest - len(tokens[b])) for b in todo],
                          dtype=torch.long, device=device)
        idx = torch.tensor(todo, dtype=torch.long, device=device)
        ys_lens = torch.tensor([len(tokens[b]) for b in todo], dtype=torch.long, device=device)
        # ESPnet's decoder masks max(lens) frames: cut the subset's padding to that length
        frames = int(enc_lens[idx].max())
        logits, _ = self.mlm(enc_out[idx, :frames], enc_lens[idx], ys, ys_lens)
        return torch.log_softmax(logits[..., : self.mask_token], dim=-1)
