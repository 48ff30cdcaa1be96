"""Text side of scoring: ESPnet stage-13 tokenisation, Kaldi text files, ``.trn`` files.

Tokenisation follows ``asr.sh`` stage 13, which pipes each ``text`` line through
``python -m espnet2.bin.tokenize_text -f 2- --token_type {char,word}
--remove_non_linguistic_symbols true``: the line is split on whitespace (Python
``str.split()``), the fields after the utterance id are re-joined with single
spaces, and ESPnet's own ``CharTokenizer`` / ``WordTokenizer`` produce the tokens.

Convention for ``unit="char"`` (CER): every character is a token and each space
between words becomes the token ``<space>``, exactly as ESPnet's CER. Japanese
text without spaces (CSJ after ``csj_rm_tag_sp_space.sh``) therefore gets one token
per character and no ``<space>`` token at all, which is the published CSJ CER. For
spaced text (LibriSpeech) ESPnet's CER also counts ``<space>`` tokens, and so does
this module, so that CER stays comparable with ESPnet's RESULTS.md everywhere.

``.trn`` lines are written as ESPnet's ``paste`` does: ``tok tok tok<TAB>(spk-uttid)``
with ``spk`` from ``utt2spk`` (the utterance id itself when there is none).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence

from espnet2.text.abs_tokenizer import AbsTokenizer
from espnet2.text.char_tokenizer import CharTokenizer
from espnet2.text.word_tokenizer import WordTokenizer

from dualmode_recipe.kaldi_dir import read_kaldi_map

UNITS = ("char", "word")
SPACE_SYMBOL = "<space>"


@lru_cache(maxsize=None)
def _tokenizer(unit: str, nlsyms: FrozenSet[str]) -> AbsTokenizer:
    if unit == "char":
        return CharTokenizer(non_linguistic_symbols=nlsyms, space_symbol=SPACE_SYMBOL,
                             remove_non_linguistic_symbols=True)
    if unit == "word":
        return WordTokenizer(non_linguistic_symbols=nlsyms,
                             remove_non_linguistic_symbols=True)
    raise ValueError(f"unknown scoring unit {unit!r}; expected one of {UNITS}")


def tokenize(text: str, unit: str, non_linguistic_symbols: Iterable[str] = ()) -> List[str]:
    """Split ``text`` (without utterance id) into scoring tokens as ESPnet's stage 13.

    Args:
        text: the transcription.
        unit: ``"char"`` (spaces become ``<space>``) or ``"word"`` (whitespace split).
        non_linguistic_symbols: symbols such as ``<noise>`` removed from the tokens
            (ESPnet's ``nlsyms.txt``).
    """
    normalized = " ".join(text.split())
    return _tokenizer(unit, frozenset(non_linguistic_symbols)).text2tokens(normalized)


def read_text(path: str | os.PathLike) -> Dict[str, str]:
    """Read a Kaldi ``text`` file (``uttid words...``; the words may be empty).

    Raises:
        ValueError: duplicate ids (from :func:`read_kaldi_map`), or an id that contains
            whitespace or parentheses (a tab after the id, or an id sclite cannot carry).
    """
    texts = read_kaldi_map(path)
    for utt_id in texts:
        if any(c.isspace() or c in "()" for c in utt_id):
            raise ValueError(f"{path}: utterance id {utt_id!r} contains whitespace or "
                             "parentheses (ids are separated from the text by one space)")
    return texts


def read_nlsyms(path: str | os.PathLike) -> List[str]:
    """Read a non-linguistic symbol list (one symbol per line, as ESPnet's nlsyms.txt)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip() for line in f if line.strip()]


def trn_label(utt_id: str, utt2spk: Optional[Mapping[str, str]] = None) -> str:
    """``spk-uttid``, the id of a ``.trn`` line (speaker = the id itself without utt2spk).

    Raises:
        ValueError: the id or speaker is empty or contains whitespace or parentheses,
            or ``utt2spk`` has no entry for the utterance.
    """
    spk = utt_id if utt2spk is None else utt2spk.get(utt_id)
    if spk is None:
        raise ValueError(f"utterance {utt_id!r} has no speaker in utt2spk")
    for name, value in (("utterance id", utt_id), ("speaker", spk)):
        if not value or any(c.isspace() or c in "()" for c in value):
            raise ValueError(f"{name} {value!r} is empty or contains whitespace or "
                             "parentheses")
    return f"{spk}-{utt_id}"


def write_trn(
    path: str | os.PathLike,
    tokens: Mapping[str, Sequence[str]],
    utt2spk: Optional[Mapping[str, str]] = None,
) -> Path:
    """Write ``tokens`` (uttid -> tokens) as an ESPnet/sclite ``.trn`` file, sorted by id.

    Raises:
        ValueError: see :func:`trn_label`.
    """
    out = Path(path)
    try:
        lines = [" ".join(tokens[u]) + f"\t({trn_label(u, utt2spk)})\n" for u in sorted(tokens)]
    except ValueError as e:
        raise ValueError(f"{out}: {e}") from None
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return out
