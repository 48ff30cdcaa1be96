"""Pure-Python alignment whose Corr/Sub/Del/Ins counts equal NIST sclite's.

sclite (SCTK ``net_dp.c`` / ``word.c``, default options as ESPnet calls it:
``sclite -r ref.trn trn -h hyp.trn trn -i rm``) aligns a reference and a hypothesis
token sequence by dynamic programming with these costs: correct 0, substitution 4,
insertion 3, deletion 3. Each cell keeps a single back pointer chosen with this order
of preference on equal cost: diagonal (correct/substitution) first, then insertion,
then deletion (deletion only when strictly cheaper than insertion). The back trace
starts at the last cell. Equal-cost alignments can differ in their counts (ref
``a b c`` / hyp ``c x y``: three substitutions, or two deletions, one match and two
insertions; sclite reports the former), so this order matters for exact agreement.
Because the cost minimised is 4S + 3(D+I), sclite's S+D+I can exceed the plain
Levenshtein distance (ref ``a b c d e`` / hyp ``d e x y z``: sclite counts 3 D + 3 I,
Levenshtein 5 S), and so does this module.

Before aligning, sclite turns each whitespace-separated token into a word value:
the part before the first unescaped ``;`` (the rest are tags), with all backslashes
removed, then one trailing ``*`` stripped when the value is longer than one byte. Word
values equal to ``@`` are NULL words and never counted. Comparison is case-insensitive
(sclite without ``-s``) for ASCII letters only: on UTF-8 text sclite's default 8-bit
mode never makes two different non-ASCII characters equal (``À``/``à``, ``Σ``/``σ``,
``Ａ``/``ａ`` stay substitutions).
A token that starts with ``{`` opens an sclite alternation, which this module does not
reproduce: :func:`sclite_words` raises instead of returning a different result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

SUB_COST = 4
INS_COST = 3
DEL_COST = 3
NULL_WORD = "@"

_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


@dataclass(frozen=True)
class AlignCounts:
    """Correct, substitution, deletion and insertion counts of one alignment."""

    corr: int
    sub: int
    dele: int
    ins: int

    @property
    def errors(self) -> int:
        """S + D + I."""
        return self.sub + self.dele + self.ins


def ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only (sclite's case folding, as seen on UTF-8 text)."""
    return text.translate(_ASCII_LOWER)


def sclite_word_value(token: str) -> str:
    """Return the word value sclite derives from ``token`` (tags, escapes, ``*``).

    Case is kept; :func:`sclite_words` folds it.
    """
    cut = len(token)
    for i, ch in enumerate(token):
        if ch == ";" and (i == 0 or token[i - 1] != "\\"):
            cut = i
            break
    value = token[:cut].replace("\\", "")
    if len(value.encode("utf-8")) > 1 and value.endswith("*"):
        value = value[:-1]
    return value


def sclite_words(tokens: Sequence[str]) -> List[str]:
    """Map one ``.trn`` line's tokens to the case-folded word values sclite compares.

    NULL words (``@``) are kept: :func:`align` needs them to reproduce sclite.

    Raises:
        ValueError: a token starts with ``{`` (sclite would parse an alternation), or
            the first token starts with ``;;`` or ``**`` (sclite would skip the line as
            a comment).
    """
    if tokens and tokens[0][:2] in (";;", "**"):
        raise ValueError(f"the first token {tokens[0]!r} starts with {tokens[0][:2]!r}, "
                         "which makes sclite skip the line as a comment")
    words = []
    for tok in tokens:
        if tok.startswith("{"):
            raise ValueError(
                f"token {tok!r} starts with '{{', which sclite reads as the start of an "
                "alternation; remove or replace it before scoring"
            )
        words.append(ascii_lower(sclite_word_value(tok)))
    return words


def align(ref: Sequence[str], hyp: Sequence[str]) -> List[Tuple[str, int, int]]:
    """Align two word sequences the way sclite does and return the counted operations.

    sclite's costs are C ``float``: 0 correct, 4 substitution, 3 insertion/deletion,
    0.001 insertion/deletion of a NULL word ``@`` and 1 for ``@`` against ``@``. Without
    NULL words every cost is a small integer, so exact integer arithmetic gives the
    same cells; with NULL words the cells are computed in float32 (numpy scalars) to
    reproduce sclite's rounding and hence its choices on near-ties. Operations on
    NULL words are dropped from the result, as sclite does.

    Args:
        ref: reference words (mapped with :func:`sclite_words`).
        hyp: hypothesis words (same mapping).

    Returns:
        The alignment from left to right as ``(op, i, j)`` with ``op`` one of
        ``"C"``, ``"S"``, ``"D"``, ``"I"``; ``i``/``j`` index ``ref``/``hyp``
        (-1 for the side that has no word).
    """
    n, m = len(ref), len(hyp)
    has_null = NULL_WORD in ref or NULL_WORD in hyp
    if has_null:
        zero, sub_cost, null_sub = np.float32(0), np.float32(SUB_COST), np.float32(1)
        ins_or_del = np.float32(INS_COST)
        null_ins_or_del = np.float32(0.001)
    else:
        zero, sub_cost, null_sub, ins_or_del, null_ins_or_del = 0, SUB_COST, 1, INS_COST, 0
    del_cost = [null_ins_or_del if w == NULL_WORD else ins_or_del for w in ref]
    ins_cost = [null_ins_or_del if w == NULL_WORD else ins_or_del for w in hyp]

    # back[i][j]: 0 diagonal, 1 deletion (from i-1), 2 insertion (from j-1);
    # row 0 holds only insertions and column 0 only deletions, as sclite's margins
    prev = [zero]
    for j in range(m):
        prev.append(prev[j] + ins_cost[j])
    back = [[2] * (m + 1)]
    for i in range(1, n + 1):
        r = ref[i - 1]
        dc = del_cost[i - 1]
        cur = [prev[0] + dc] + [zero] * m
        row = [1] + [0] * m
        for j in range(1, m + 1):
            h = hyp[j - 1]
            if r == NULL_WORD and h == NULL_WORD:
                sub = prev[j - 1] + null_sub
            else:
                sub = prev[j - 1] + (zero if r == h else sub_cost)
            dele = prev[j] + dc
            ins = cur[j - 1] + ins_cost[j - 1]
            if sub <= dele and sub <= ins:
                cur[j] = sub
            elif dele < ins:
                cur[j] = dele
                row[j] = 1
            else:
                cur[j] = ins
                row[j] = 2
        back.append(row)
        prev = cur

    ops: List[Tuple[str, int, int]] = []
    i, j = n, m
    while i > 0 or j > 0:
        step = back[i][j]
        if step == 0:
            r, h = ref[i - 1], hyp[j - 1]
            if not (r == NULL_WORD and h == NULL_WORD):
                ops.append(("C" if r == h else "S", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif step == 1:
            if ref[i - 1] != NULL_WORD:
                ops.append(("D", i - 1, -1))
            i -= 1
        else:
            if hyp[j - 1] != NULL_WORD:
                ops.append(("I", -1, j - 1))
            j -= 1
    ops.reverse()
    return ops


def tally(ops: Sequence[Tuple[str, int, int]]) -> AlignCounts:
    """Count the operations of an :func:`align` result."""
    n = {"C": 0, "S": 0, "D": 0, "I": 0}
    for op, _, _ in ops:
        n[op] += 1
    return AlignCounts(n["C"], n["S"], n["D"], n["I"])


def count_errors(ref_tokens: Sequence[str], hyp_tokens: Sequence[str]) -> AlignCounts:
    """Corr/Sub/Del/Ins of ``hyp_tokens`` against ``ref_tokens``, as sclite counts them."""
    return tally(align(sclite_words(ref_tokens), sclite_words(hyp_tokens)))
