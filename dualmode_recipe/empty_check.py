"""Check that non-speech test sets (silence, noise) decode to empty text in every head.

A recognizer that never saw silence or noise in training hallucinates on it (a template
sentence from 60 s of digital silence). The demo's ``non_speech`` test set (digital
silence and low-level white noise, empty transcripts) is decoded by stage 12 like any
test set; stage 13 then runs this check on ``<decode_dir>/<head>/<set>/text``: the report
lists every head's non-empty outputs, and any such output fails the stage.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from dualmode_recipe.kaldi_dir import read_kaldi_map


def non_empty_outputs(decode_dir: str | os.PathLike, heads: Sequence[str],
                      test_set: str) -> Tuple[List[str], Dict[str, Dict[str, str]]]:
    """The utterances of ``test_set`` and, per head, those decoded to non-empty text.

    Raises:
        FileNotFoundError: a head's decoding output is missing (names the file).
        ValueError: the heads decoded different utterance lists.
    """
    found: Dict[str, Dict[str, str]] = {}
    utts: List[str] = []
    for head in heads:
        path = Path(decode_dir) / head / test_set / "text"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no decoding output of head {head} on {test_set} "
                                    "(run stage 12)")
        text = read_kaldi_map(path)
        if utts and sorted(text) != utts:
            raise ValueError(f"{path}: utterances {sorted(text)} differ from the other heads' "
                             f"{utts}")
        utts = sorted(text)
        found[head] = {u: t for u, t in text.items() if t.strip()}
    return utts, found


def empty_check_markdown(decode_dir: str | os.PathLike, heads: Sequence[str],
                         test_set: str) -> Tuple[str, bool]:
    """A Markdown table (head x utterance: "empty" or the text) and whether all are empty."""
    utts, found = non_empty_outputs(decode_dir, heads, test_set)
    lines = [f"Non-speech test set {test_set} (expected: empty text everywhere)", "",
             "|head|" + "|".join(utts) + "|", "|---|" + "---|" * len(utts)]
    for head in heads:
        cells = [found[head].get(u, "empty") for u in utts]
        lines.append(f"|{head}|" + "|".join(cells) + "|")
    return "\n".join(lines) + "\n", not any(found.values())
