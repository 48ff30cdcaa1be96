"""Collect scores and latency into ``RESULTS.md`` (stage 13).

Stage 13 leaves ``<decode_dir>/<head>/<test set>/scores.json`` (the JSON lines of
``python -m dualmode_recipe score --json``, one per unit) and stage 12 may leave
``<decode_dir>/latency/latency.json`` (``espnet2_dualmode.bin.measure_latency``). The
report has one table per unit: a row per decoding head or mode, a column per test set,
the error rate in percent as sclite rounds it; utterances whose decoding failed are
scored as empty hypotheses and their number is shown in the cell.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from dualmode_recipe.scoring.scorer import TITLE

LATENCY_KEYS = ("rtf", "algorithmic_latency_ms", "emission_delay_p50_ms",
                "emission_delay_p90_ms")
# With a speech-segments reference (measure_latency --speech_segments), optional.
SEGMENT_LATENCY_KEYS = ("latency_at50_ms", "latency_at90_ms", "first_token_delay_p50_ms",
                        "first_token_delay_p90_ms")


def read_scores(path: str | os.PathLike) -> Dict[str, dict]:
    """``{unit: score record}`` from a ``scores.json`` file.

    Raises:
        FileNotFoundError: no such file (the set was not scored).
        ValueError: a line that is not a score record, or a unit given twice.
    """
    result: Dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                unit = record["unit"]
                record["percent"]["Err"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{lineno}: not a score record of "
                                 "python -m dualmode_recipe score --json") from None
            if unit in result:
                raise ValueError(f"{path}:{lineno}: unit {unit!r} appears twice")
            result[unit] = record
    return result


def read_error_rate(path: str | os.PathLike, unit: str) -> Tuple[float, int]:
    """The unrounded error rate (percent) of ``unit`` in a ``scores.json`` file and the
    number of utterances without a hypothesis.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no ``unit`` score in it, or no error rate (references without tokens).
    """
    record = read_scores(path).get(unit)
    if record is None:
        raise ValueError(f"{path} has no {unit} score (--score_units)")
    if not isinstance(record.get("err_rate"), (int, float)):
        raise ValueError(f"{path}: no error rate (the references have no tokens)")
    return float(record["err_rate"]), len(record.get("missing_hyp", []))


def read_latency(path: str | os.PathLike) -> Dict[str, float]:
    """The four latency figures of a ``latency.json`` file.

    Raises:
        ValueError: a key of :data:`LATENCY_KEYS` is missing or not a number.
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    missing = [k for k in LATENCY_KEYS if not isinstance(data.get(k), (int, float))]
    if missing:
        raise ValueError(f"{path}: missing or non-numeric {missing}")
    result = {k: float(data[k]) for k in LATENCY_KEYS}
    result.update({k: float(data[k]) for k in SEGMENT_LATENCY_KEYS
                   if isinstance(data.get(k), (int, float))})
    return result


def _cell(record: dict) -> str:
    cell = f"{record['percent']['Err']:.1f}"
    failed = len(record.get("missing_hyp", []))
    return cell + (f" ({failed} failed)" if failed else "")


def results_markdown(decode_dir: str | os.PathLike, heads: Sequence[str],
                     test_sets: Sequence[str], units: Sequence[str], title: str,
                     latency_set: str = "") -> str:
    """The RESULTS.md text for the given heads, test sets and units (see module doc).

    Raises:
        FileNotFoundError / ValueError: a missing or broken ``scores.json`` or unit.
    """
    root = Path(decode_dir)
    scores = {(h, s): read_scores(root / h / s / "scores.json") for h in heads
              for s in test_sets}
    lines: List[str] = [f"# RESULTS\n\n## {title}\n"]
    for unit in units:
        if unit not in TITLE:
            raise ValueError(f"unknown unit {unit!r}; expected one of {sorted(TITLE)}")
        lines.append(f"### {TITLE[unit]} (%)\n")
        lines.append("|head / mode|" + "|".join(test_sets) + "|")
        lines.append("|---|" + "---|" * len(test_sets))
        for h in heads:
            cells = []
            for s in test_sets:
                if unit not in scores[h, s]:
                    raise ValueError(f"{root / h / s / 'scores.json'}: no {unit} score")
                cells.append(_cell(scores[h, s][unit]))
            lines.append(f"|{h}|" + "|".join(cells) + "|")
        sizes = ", ".join(f"{s} {scores[heads[0], s][unit]['snt']} / "
                          f"{scores[heads[0], s][unit]['wrd']}" for s in test_sets)
        backend = scores[heads[0], test_sets[0]][unit]["backend"]
        lines.append(f"\nSentences / {unit}s: {sizes} (scored with {backend})\n")
    latency_file = root / "latency" / "latency.json"
    if latency_file.is_file():
        lat = read_latency(latency_file)
        where = f" on {latency_set}" if latency_set else ""
        delay = ("emission delay not measured (no full-context CTC head to align tokens with)"
                 if math.isnan(lat["emission_delay_p50_ms"]) else
                 f"emission delay P50 {lat['emission_delay_p50_ms']:.0f} ms / P90 "
                 f"{lat['emission_delay_p90_ms']:.0f} ms (per token, against the model's own "
                 f"CTC alignment)")
        lines.append(f"Latency (streaming{where}): RTF {lat['rtf']:.3f}, algorithmic "
                     f"latency {lat['algorithmic_latency_ms']:.0f} ms, {delay}\n")
        if all(k in lat for k in SEGMENT_LATENCY_KEYS):
            lines.append(f"Against the synthesis timing: Latency@50 {lat['latency_at50_ms']:.0f} ms / "
                         f"@90 {lat['latency_at90_ms']:.0f} ms (last token after the end of "
                         f"speech), first-token delay P50 {lat['first_token_delay_p50_ms']:.0f} ms "
                         f"/ P90 {lat['first_token_delay_p90_ms']:.0f} ms\n")
    return "\n".join(lines)
