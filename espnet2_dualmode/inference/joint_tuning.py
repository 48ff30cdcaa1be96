"""Joint-rescoring weights chosen on a development set (never on a test set).

Joint decoding ranks candidate transcripts by ``sum_k w_k log P_k(y | x)`` over the heads
k (:func:`espnet2_dualmode.decoding.rescoring.rescore`). The candidates of every dev
utterance, with every head's score, are computed once; each weight vector of a small grid
then only re-ranks them, so the whole grid costs one decoding of the dev set. The
weights with the fewest token errors on dev win; a tie goes to fewer non-zero weights, so
a single head is kept unless the combination really helps.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import editdistance
import numpy as np

GRID = (0.0, 0.3, 1.0)


@dataclass
class DevCandidates:
    """One dev utterance: its reference tokens, candidates and every head's scores (N,)."""

    ref: List[int]
    candidates: List[List[int]]
    scores: Mapping[str, np.ndarray]


def candidate_errors(utt: DevCandidates) -> np.ndarray:
    """Token errors (edit distance to the reference) of each candidate of ``utt``."""
    return np.array([editdistance.eval(c, utt.ref) for c in utt.candidates], dtype=np.int64)


def weight_grid(heads: Sequence[str], grid: Sequence[float] = GRID) -> List[Dict[str, float]]:
    """Every weight vector over ``heads`` from ``grid``, not all zero, without vectors that
    are a multiple of an earlier one (they rank identically)."""
    seen, out = set(), []
    for values in itertools.product(grid, repeat=len(heads)):
        if not any(values):
            continue
        top = max(values)
        key = tuple(round(v / top, 6) for v in values)
        if key not in seen:
            seen.add(key)
            out.append(dict(zip(heads, values)))
    return out


def dev_error_rate(utts: Sequence[DevCandidates], weights: Mapping[str, float]) -> float:
    """Token error rate on ``utts`` when each is decoded to its best candidate under
    ``weights`` (ties: the earlier candidate, as ``rescore``'s stable sort)."""
    errors = refs = 0
    for utt in utts:
        total = np.zeros(len(utt.candidates))
        for head, w in weights.items():
            if w:
                total += w * np.asarray(utt.scores[head], dtype=np.float64)
        errors += int(candidate_errors(utt)[int(np.argmax(total))])
        refs += len(utt.ref)
    return errors / max(1, refs)


def tune_weights(utts: Sequence[DevCandidates], heads: Sequence[str],
                 grid: Sequence[float] = GRID) -> Tuple[Dict[str, float], List[Tuple[Dict[str, float], float]]]:
    """The best weights over :func:`weight_grid` and every (weights, dev error rate) tried."""
    if not utts:
        raise ValueError("no development utterances to tune the joint weights on")
    tried = [(w, dev_error_rate(utts, w)) for w in weight_grid(heads, grid)]
    best = min(tried, key=lambda wt: (wt[1], sum(v > 0 for v in wt[0].values())))
    return dict(best[0]), tried
