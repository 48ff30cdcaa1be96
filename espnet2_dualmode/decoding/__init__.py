"""Searches for every head of the dual-mode model (offline and streaming inference).

* :class:`TransducerSearch` / :func:`greedy_search`: batched, time-synchronous RNN-T
  search that can be advanced encoder block by encoder block (streaming and offline).
* :func:`ctc_greedy`, :func:`ctc_prefix_beam_search`: CTC decoding.
* :class:`AttentionBeamSearch`: joint CTC/attention beam search (ESPnet's);
  :func:`attention_greedy`: batched greedy attention decoding (validation).
* :class:`MaskCTCSearch`: Mask-CTC iterative decoding with the MLM decoder.
* ``*_sequence_scores`` and :func:`rescore`: n-best rescoring with every head.
"""

from espnet2_dualmode.decoding.attention_search import AttentionBeamSearch, attention_greedy
from espnet2_dualmode.decoding.ctc_search import ctc_greedy, ctc_prefix_beam_search
from espnet2_dualmode.decoding.hypothesis import Hypothesis
from espnet2_dualmode.decoding.mask_ctc import MaskCTCSearch
from espnet2_dualmode.decoding.rescoring import (
    attention_sequence_scores,
    ctc_sequence_scores,
    mlm_sequence_scores,
    rescore,
    transducer_sequence_scores,
)
from espnet2_dualmode.decoding.transducer_search import (
    TransducerSearch,
    TransducerSearchState,
    greedy_search,
)

__all__ = [
    "AttentionBeamSearch",
    "Hypothesis",
    "MaskCTCSearch",
    "TransducerSearch",
    "TransducerSearchState",
    "attention_greedy",
    "attention_sequence_scores",
    "ctc_greedy",
    "ctc_prefix_beam_search",
    "ctc_sequence_scores",
    "greedy_search",
    "mlm_sequence_scores",
    "rescore",
    "transducer_sequence_scores",
]
