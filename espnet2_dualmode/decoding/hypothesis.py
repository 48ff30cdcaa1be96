"""The result type shared by every search of :mod:`espnet2_dualmode.decoding`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional


@dataclass
class Hypothesis:
    """One recognition hypothesis.

    Attributes:
        tokens: token ids without blank, ``<sos/eos>`` or ``<mask>``.
        score: the search's log-score of ``tokens`` (raw, never length-normalised).
        timestamps: for searches that know them (RNN-T, CTC greedy), the encoder frame
            index at which each token was emitted; same length as ``tokens``.
    """

    tokens: List[int]
    score: float
    timestamps: Optional[List[int]] = None
