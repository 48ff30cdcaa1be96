"""CTC decoding: greedy best path (batched) and prefix beam search (one utterance)."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch

from espnet2_dualmode.decoding.hypothesis import Hypothesis

NEG_INF = float("-inf")


def _logaddexp(*xs: float) -> float:
    """log(sum(exp(x))) of Python floats, exact for -inf entries."""
    top = max(xs)
    if top == NEG_INF:
        return NEG_INF
    return top + math.log(sum(math.exp(x - top) for x in xs))


def ctc_greedy(
    log_probs: torch.Tensor, lens: Optional[torch.Tensor] = None, blank: int = 0
) -> List[Hypothesis]:
    """Best-path CTC decoding: per-frame arg-max, repeats collapsed, blanks removed.

    Args:
        log_probs: CTC log-posteriors (B, T, V), e.g. ``CTC.log_softmax(enc_out)``.
        lens: valid frames per utterance (B,); None means all T.
        blank: blank id.

    Returns:
        One hypothesis per utterance; ``score`` is the log-probability of the best path
        (not of the label sequence) and ``timestamps`` the first frame of each token.
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must have shape (B, T, V), got {tuple(log_probs.shape)}")
    batch, frames, _ = log_probs.shape
    if lens is None:
        lens_list = [frames] * batch
    elif tuple(lens.shape) != (batch,):
        raise ValueError(f"lens must have shape ({batch},), got {tuple(lens.shape)}")
    else:
        lens_list = [int(n) for n in lens.tolist()]
        for b, n in enumerate(lens_list):
            if not 0 <= n <= frames:
                raise ValueError(f"utterance {b}: length {n} is outside [0, {frames}]")
    best_lp, best = log_probs.detach().max(dim=-1)
    hyps = []
    for b, n in enumerate(lens_list):
        path = best[b, :n].tolist()
        tokens, times = [], []
        for t, k in enumerate(path):
            if k != blank and (t == 0 or path[t - 1] != k):
                tokens.append(k)
                times.append(t)
        hyps.append(Hypothesis(tokens, float(best_lp[b, :n].double().sum()), times))
    return hyps


def ctc_prefix_beam_search(
    log_probs: torch.Tensor, beam_size: int, blank: int = 0, nbest: int = 1
) -> List[Hypothesis]:
    """CTC prefix beam search over one utterance.

    Each prefix carries the log-probabilities of all its alignments so far that end in
    blank (``pb``) and in its last token (``pnb``). At every frame only the
    ``beam_size`` most probable tokens of that frame are tried, and the ``beam_size``
    most probable prefixes are kept. Without pruning (``beam_size >= V``, short inputs)
    each score is the exact log P(prefix | x) summed over all alignments. With
    ``beam_size=1`` only the arg-max token of each frame is tried, so exactly one path
    survives: the result is :func:`ctc_greedy`'s, score included.

    Args:
        log_probs: CTC log-posteriors of one utterance (T, V).
        beam_size: prefixes kept per frame (and tokens tried per frame).
        blank: blank id.
        nbest: hypotheses returned.

    Returns:
        Up to ``nbest`` hypotheses of non-zero probability, most probable first;
        ``score`` is log P(tokens | x) over the alignments that survived pruning.
    """
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must have shape (T, V), got {tuple(log_probs.shape)}")
    if beam_size < 1 or nbest < 1:
        raise ValueError(f"beam_size and nbest must be >= 1, got {beam_size}, {nbest}")
    top_lp, top_id = log_probs.topk(min(beam_size, log_probs.size(1)), dim=-1)
    # prefix -> (log p ending in blank, log p ending in its last token)
    beams: Dict[Tuple[int, ...], Tuple[float, float]] = {(): (0.0, NEG_INF)}
    for frame_lp, frame_id in zip(top_lp.double().tolist(), top_id.tolist()):
        nxt: Dict[Tuple[int, ...], List[float]] = {}
        for prefix, (pb, pnb) in beams.items():
            last = prefix[-1] if prefix else None
            for lp, k in zip(frame_lp, frame_id):
                if k == blank:
                    entry = nxt.setdefault(prefix, [NEG_INF, NEG_INF])
                    entry[0] = _logaddexp(entry[0], pb + lp, pnb + lp)
                elif k == last:
                    stay = nxt.setdefault(prefix, [NEG_INF, NEG_INF])  # repeat collapses
                    stay[1] = _logaddexp(stay[1], pnb + lp)
                    if pb > NEG_INF:  # a repeated token needs a blank in between
                        grown = nxt.setdefault(prefix + (k,), [NEG_INF, NEG_INF])
                        grown[1] = _logaddexp(grown[1], pb + lp)
                else:
                    grown = nxt.setdefault(prefix + (k,), [NEG_INF, NEG_INF])
                    grown[1] = _logaddexp(grown[1], pb + lp, pnb + lp)
        ranked = sorted(nxt.items(), key=lambda item: -_logaddexp(*item[1]))[:beam_size]
        beams = {prefix: (pb, pnb) for prefix, (pb, pnb) in ranked}
    final = [(list(p), _logaddexp(pb, pnb)) for p, (pb, pnb) in beams.items()]
    final = sorted((h for h in final if h[1] > NEG_INF), key=lambda h: -h[1])
    return [Hypothesis(tokens, score) for tokens, score in final[:nbest]]
