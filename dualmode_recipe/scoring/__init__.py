"""CER/WER scoring as ESPnet's stage 13 does it, with sclite or a sclite-exact Python scorer."""

from dualmode_recipe.scoring.align import AlignCounts, align, count_errors, sclite_words
from dualmode_recipe.scoring.scorer import BACKENDS, Counts, score, sclite_percent
from dualmode_recipe.scoring.sclite import find_sclite
from dualmode_recipe.scoring.text import UNITS, read_text, tokenize, write_trn

__all__ = [
    "AlignCounts", "BACKENDS", "Counts", "UNITS", "align", "count_errors", "find_sclite",
    "read_text", "sclite_percent", "sclite_words", "score", "tokenize", "write_trn",
]
