"""Scoring a set of hypotheses against references: counts, rates, backends, reports.

``score`` reproduces ESPnet's stage-13 numbers (``score_cer``/``score_wer``): the same
tokenisation (:mod:`.text`), the same ``.trn`` files and either the real sclite with
ESPnet's options or the pure-Python alignment of :mod:`.align`, whose counts are
sclite's. Percentages are rounded as sclite prints them (``pct = num / den * 100``
in double precision, then half away from zero to one decimal).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from dualmode_recipe.scoring.align import AlignCounts, align, sclite_words, tally
from dualmode_recipe.scoring.sclite import find_sclite, run_sclite, sclite_id, write_report
from dualmode_recipe.kaldi_dir import read_kaldi_map
from dualmode_recipe.scoring.text import read_text, tokenize, trn_label, write_trn

BACKENDS = ("auto", "sclite", "python")
TITLE = {"char": "CER", "word": "WER"}
SCORE_DIR = {"char": "score_cer", "word": "score_wer"}
MARKDOWN_HEADER = ("|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|\n"
                   "|---|---|---|---|---|---|---|---|---|")

logger = logging.getLogger(__name__)


def sclite_percent(num: int, den: int) -> float:
    """``num / den`` in percent, rounded to one decimal as sclite's reports do (0 if den=0)."""
    if den == 0:
        return 0.0
    value = num / den * 100.0
    return math.trunc(value * 10.0 + (0.5 if value > 0.0 else -0.5)) / 10.0


@dataclass
class Counts:
    """Totals of one scored set, in sclite's terms.

    ``n_ref`` is sclite's ``# Wrd`` (= Corr + Sub + Del), ``n_utt`` its ``# Snt`` and
    ``n_utt_err`` the number of utterances with at least one error (``S.Err``).
    ``missing_hyp`` lists reference utterances that had no hypothesis (scored as empty).
    """

    unit: str
    backend: str
    n_utt: int
    n_ref: int
    corr: int
    sub: int
    dele: int
    ins: int
    n_utt_err: int
    missing_hyp: List[str] = field(default_factory=list)
    per_utt: Dict[str, AlignCounts] = field(default_factory=dict, repr=False)

    @property
    def errors(self) -> int:
        """S + D + I."""
        return self.sub + self.dele + self.ins

    @property
    def err_rate(self) -> float:
        """Unrounded (S + D + I) / N in percent; NaN when the references are empty."""
        return self.errors / self.n_ref * 100.0 if self.n_ref else math.nan

    def percentages(self) -> Dict[str, float]:
        """Corr/Sub/Del/Ins/Err/S.Err as sclite prints them in its ``Sum/Avg`` row."""
        return {
            "Corr": sclite_percent(self.corr, self.n_ref),
            "Sub": sclite_percent(self.sub, self.n_ref),
            "Del": sclite_percent(self.dele, self.n_ref),
            "Ins": sclite_percent(self.ins, self.n_ref),
            "Err": sclite_percent(self.errors, self.n_ref),
            "S.Err": sclite_percent(self.n_utt_err, self.n_utt),
        }

    def markdown_row(self, dataset: str) -> str:
        """``|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|`` as ESPnet's RESULTS.md."""
        pct = self.percentages()
        cells = [dataset, str(self.n_utt), str(self.n_ref)] + [f"{v:.1f}" for v in pct.values()]
        return "|" + "|".join(cells) + "|"

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready summary (counts, sclite-rounded percentages, unrounded error rate)."""
        return {
            "unit": self.unit, "backend": self.backend, "snt": self.n_utt, "wrd": self.n_ref,
            "corr": self.corr, "sub": self.sub, "del": self.dele, "ins": self.ins,
            "err": self.errors, "snt_err": self.n_utt_err,
            "err_rate": None if self.n_ref == 0 else self.err_rate,
            "percent": self.percentages(), "missing_hyp": list(self.missing_hyp),
        }


def _resolve_backend(backend: str) -> Tuple[str, Optional[str]]:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "python":
        return "python", None
    sclite = find_sclite()
    if sclite is None:
        if backend == "sclite":
            raise FileNotFoundError("backend 'sclite' requested but sclite was not found "
                                    "($SCLITE, PATH, /usr/lib/sctk/bin/sclite)")
        logger.info("sclite not found; using the Python scorer")
        return "python", None
    return "sclite", sclite


def _check_ids(ref: Mapping[str, str], hyp: Mapping[str, str]) -> List[str]:
    """Raise on hypotheses without reference; return (and log) references without hypothesis."""
    extra = sorted(set(hyp) - set(ref))
    if extra:
        shown = ", ".join(repr(u) for u in extra[:5])
        raise ValueError(f"{len(extra)} hypothesis utterance(s) have no reference: {shown}"
                         + (" ..." if len(extra) > 5 else ""))
    missing = sorted(set(ref) - set(hyp))
    if missing:
        shown = ", ".join(repr(u) for u in missing[:5])
        logger.warning("%d of %d reference utterance(s) have no hypothesis and are scored "
                       "as empty hypotheses: %s%s", len(missing), len(ref), shown,
                       " ..." if len(missing) > 5 else "")
    return missing


def _python_report(counts: Counts, words: Mapping[str, Tuple[List[str], List[str]]],
                   alignments: Mapping[str, list], trn_ids: Mapping[str, str]) -> str:
    """A result.txt for the Python backend: sclite-like summary rows and alignments.

    The ``Sum/Avg`` row has sclite's layout, so ``grep -e Avg -e SPKR`` (ESPnet's
    show_asr_result.sh) finds it; words are shown as compared (case-folded).
    """
    pct = counts.percentages()
    head = "| SPKR   | # Snt # Wrd | Corr    Sub    Del    Ins    Err  S.Err |"
    avg = (f"| Sum/Avg| {counts.n_utt:4d} {counts.n_ref:6d} | "
           + " ".join(f"{v:5.1f} " for v in pct.values()) + "|")
    tot = (f"| Sum    | {counts.n_utt:4d} {counts.n_ref:6d} | "
           + " ".join(f"{v:5d} " for v in (counts.corr, counts.sub, counts.dele, counts.ins,
                                            counts.errors, counts.n_utt_err)) + "|")
    lines = [f"espnet2_dualmode Python scorer (sclite-compatible counts), "
             f"unit={counts.unit}",
             head, avg, tot, ""]
    for utt_id in sorted(alignments):
        ref_w, hyp_w = words[utt_id]
        ops = alignments[utt_id]
        c = counts.per_utt[utt_id]
        r_col, h_col, e_col = [], [], []
        for op, i, j in ops:
            r = ref_w[i] if i >= 0 else "*"
            h = hyp_w[j] if j >= 0 else "*"
            width = max(len(r), len(h), 1)
            r_col.append(r.ljust(width))
            h_col.append(h.ljust(width))
            e_col.append(("" if op == "C" else op).ljust(width))
        lines += [f"id: ({trn_ids[utt_id]})",
                  f"Scores: (#C #S #D #I) {c.corr} {c.sub} {c.dele} {c.ins}",
                  "REF:  " + " ".join(r_col), "HYP:  " + " ".join(h_col),
                  "Eval: " + " ".join(e_col), ""]
    return "\n".join(lines)


def score(
    ref: Mapping[str, str],
    hyp: Mapping[str, str],
    unit: str,
    backend: str = "auto",
    non_linguistic_symbols: Iterable[str] = (),
    utt2spk: Optional[Mapping[str, str]] = None,
    output_dir: Optional[str | os.PathLike] = None,
) -> Counts:
    """Score hypotheses against references with ESPnet's tokenisation and sclite's counts.

    Args:
        ref: utterance id -> reference text.
        hyp: utterance id -> hypothesis text; a reference id missing here is scored as
            an empty hypothesis (logged and listed in ``Counts.missing_hyp``).
        unit: ``"char"`` (CER) or ``"word"`` (WER); see :func:`.text.tokenize`.
        backend: ``"sclite"``, ``"python"`` or ``"auto"`` (sclite when it is found).
        non_linguistic_symbols: symbols removed from both sides (ESPnet's nlsyms).
        utt2spk: speaker of each utterance, used only in the ``(spk-uttid)`` labels.
        output_dir: when given, ``ref.trn``, ``hyp.trn`` and ``result.txt`` are
            written there (``result.txt`` is sclite's report with the sclite backend).

    Raises:
        ValueError: a hypothesis id that is not in ``ref``, a bad id or speaker, or a
            token sclite would read as an alternation (``{...}``).
    """
    if not ref:
        raise ValueError("no reference utterances to score")
    missing = _check_ids(ref, hyp)
    nlsyms = tuple(non_linguistic_symbols)
    ref_tok = {u: tokenize(t, unit, nlsyms) for u, t in ref.items()}
    hyp_tok = {u: tokenize(hyp.get(u, ""), unit, nlsyms) for u in ref}
    # Both backends refuse lines sclite would misread, so they agree or both fail.
    words: Dict[str, Tuple[List[str], List[str]]] = {}
    for utt_id in sorted(ref):
        try:
            words[utt_id] = (sclite_words(ref_tok[utt_id]), sclite_words(hyp_tok[utt_id]))
        except ValueError as e:
            raise ValueError(f"utterance {utt_id!r}: {e}") from None
    which, sclite = _resolve_backend(backend)

    with tempfile.TemporaryDirectory(prefix="score_") as tmp:
        out = Path(output_dir if output_dir is not None else tmp)
        out.mkdir(parents=True, exist_ok=True)
        ref_trn = write_trn(out / "ref.trn", ref_tok, utt2spk)
        hyp_trn = write_trn(out / "hyp.trn", hyp_tok, utt2spk)
        trn_ids = {u: trn_label(u, utt2spk) for u in ref}
        report: Optional[str] = None
        alignments: Dict[str, list] = {}
        if which == "sclite":
            per_utt, report = _score_sclite(sclite, ref_trn, hyp_trn, trn_ids)
        else:
            alignments = {u: align(*words[u]) for u in ref}
            per_utt = {u: tally(ops) for u, ops in alignments.items()}
        counts = Counts(
            unit=unit, backend=which, n_utt=len(per_utt),
            n_ref=sum(c.corr + c.sub + c.dele for c in per_utt.values()),
            corr=sum(c.corr for c in per_utt.values()),
            sub=sum(c.sub for c in per_utt.values()),
            dele=sum(c.dele for c in per_utt.values()),
            ins=sum(c.ins for c in per_utt.values()),
            n_utt_err=sum(1 for c in per_utt.values() if c.errors > 0),
            missing_hyp=missing, per_utt=per_utt,
        )
        if output_dir is not None:
            if report is None:
                report = _python_report(counts, words, alignments, trn_ids)
            write_report(out / "result.txt", report)
    if counts.n_ref == 0:
        logger.warning("the references contain no %s tokens: error rates are undefined "
                       "(reported as 0.0, as sclite does)", unit)
    return counts


def _score_sclite(sclite: str, ref_trn: Path, hyp_trn: Path,
                  trn_ids: Mapping[str, str]) -> Tuple[Dict[str, AlignCounts], str]:
    """Run sclite and key its per-utterance counts by our utterance ids."""
    by_sclite_id: Dict[str, str] = {}
    for utt_id, trn_id in trn_ids.items():
        key = sclite_id(trn_id)
        if key in by_sclite_id:
            raise ValueError(f"utterances {by_sclite_id[key]!r} and {utt_id!r} differ only "
                             "in letter case, which sclite ignores in ids")
        by_sclite_id[key] = utt_id
    report, raw = run_sclite(sclite, ref_trn, hyp_trn)
    if set(raw) != set(by_sclite_id):
        lost = sorted(by_sclite_id[k] for k in set(by_sclite_id) - set(raw))
        raise RuntimeError(f"sclite did not report {len(lost)} utterance(s), e.g. {lost[:5]}"
                           f"; unexpected ids: {sorted(set(raw) - set(by_sclite_id))[:5]}")
    return {by_sclite_id[k]: c for k, c in raw.items()}, report


def score_sets(sets: Sequence[Tuple[str, str, str]], units: Sequence[str],
               output_dir: str | os.PathLike, backend: str = "auto",
               non_linguistic_symbols: Iterable[str] = ()
               ) -> List[Tuple[str, Path, Counts]]:
    """Score each ``(name, ref text, hyp text)`` set in each unit, as ESPnet's stage 13.

    One set is scored into ``output_dir/score_{cer,wer}``, several into
    ``output_dir/<name>/score_{cer,wer}``. A ``utt2spk`` next to a reference text gives
    the speaker labels of the .trn files. Returns ``(name, score dir, counts)`` in set,
    then unit, order.

    Raises:
        ValueError: as :func:`score`, with the two files named.
    """
    nlsyms = tuple(non_linguistic_symbols)
    out = Path(output_dir)
    results: List[Tuple[str, Path, Counts]] = []
    for name, ref_path, hyp_path in sets:
        ref, hyp = read_text(ref_path), read_text(hyp_path)
        spk_file = Path(ref_path).parent / "utt2spk"
        utt2spk = read_kaldi_map(spk_file) if spk_file.is_file() else None
        set_dir = out if len(sets) == 1 else out / name
        for unit in units:
            score_dir = set_dir / SCORE_DIR[unit]
            try:
                counts = score(ref, hyp, unit, backend=backend, non_linguistic_symbols=nlsyms,
                               utt2spk=utt2spk, output_dir=score_dir)
            except ValueError as err:
                raise ValueError(f"{hyp_path} against {ref_path}: {err}") from None
            logger.info("%s %s (%s): %s", name, TITLE[unit], counts.backend,
                        counts.markdown_row(name))
            results.append((name, score_dir, counts))
    return results
