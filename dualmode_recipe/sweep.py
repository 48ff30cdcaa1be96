"""Figure 2 from one model: the block-size sweep of stage 14 as a table and a plot.

Stage 14 of ``egs2/TEMPLATE/asr1/dualmode_asr.sh`` decodes the test sets of ONE trained
model at several streaming geometries (``--block_size/--hop_size/--look_ahead`` of the
decoding binaries), one folder per geometry under ``<decode dir>/sweep/``::

    block<B>_hop<H>_lookahead<L>/<head>/<test set>/scores.json   (stage-13 scoring)
    block<B>_hop<H>_lookahead<L>/latency/latency.json            (measure_latency)

The full-context heads are cascaded on the streaming encoder, so they change with the
geometry too. This module derives the geometry of a block size (:func:`sweep_geometry`)
and gathers the folders into ``sweep.md`` (error rate against latency), ``sweep.png``
(error rate against algorithmic latency) and ``sweep.json`` (the same numbers, read by
``python -m dualmode_recipe compare --sweep`` to put several models side by side).

Algorithmic latency is ``measure_latency``'s: (block + look-ahead) subsampled frames
times the encoder frame shift (4 feature frames), i.e. the audio that must have arrived
before the first frame of a block can be emitted, compute time excluded.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

from dualmode_recipe.results import read_error_rate, read_latency
from dualmode_recipe.scoring.scorer import TITLE
from espnet2_dualmode.encoders.contextual_block_conformer import BlockGeometry, ratio_geometry

logger = logging.getLogger(__name__)

LATENCY_DEFINITION = ("algorithmic latency = (block + look-ahead) x encoder frame shift "
                      "(4 feature frames), as measure_latency reports it")
SWEEP_JSON = "sweep.json"
STREAMING = "streaming"  # the decoding head of the streaming path


def geometry_name(geometry: BlockGeometry) -> str:
    """The geometry's folder name under ``<decode dir>/sweep/``."""
    return f"block{geometry.block_size}_hop{geometry.hop_size}_lookahead{geometry.look_ahead}"


def geometry_options(geometry: BlockGeometry) -> List[str]:
    """The decoding binaries' options selecting ``geometry``."""
    return ["--block_size", str(geometry.block_size), "--hop_size", str(geometry.hop_size),
            "--look_ahead", str(geometry.look_ahead)]


def sweep_geometry(block_size: int, hop_ratio: float = 0.4,
                   look_ahead_ratio: float = 0.4) -> BlockGeometry:
    """The geometry of ``block_size`` with hop and look-ahead as ratios of the block,
    rounded half up: the rule of dynamic-block training (so a sweep over the trained block
    sizes decodes at the trained geometries), 40/16/16 for block 40 at the defaults.

    Raises:
        ValueError: a ratio outside [0, 1], or a geometry the contextual-block encoder
            rejects (a hop that rounds to 0, block < hop + look-ahead).
    """
    for name, ratio in (("hop ratio", hop_ratio), ("look-ahead ratio", look_ahead_ratio)):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {ratio}")
    try:
        return ratio_geometry(block_size, hop_ratio, look_ahead_ratio)
    except ValueError as err:
        raise ValueError(f"block {block_size} with hop ratio {hop_ratio} and look-ahead ratio "
                         f"{look_ahead_ratio}: {err}") from None


@dataclass(frozen=True)
class SweepPoint:
    """One geometry of a sweep: latency figures and ``scores[unit][head][set]`` =
    ``{"err_rate": percent (unrounded), "failed": utterances not decoded}``."""

    block_size: int
    hop_size: int
    look_ahead: int
    algorithmic_latency_ms: float
    rtf: float
    emission_delay_p50_ms: float
    emission_delay_p90_ms: float
    scores: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]


def load_point(folder: Path, geometry: BlockGeometry, heads: Sequence[str],
               test_sets: Sequence[str], units: Sequence[str]) -> SweepPoint:
    """The scores and latency that stage 14 left in ``folder`` for ``geometry``.

    Raises:
        FileNotFoundError: a missing ``scores.json`` or ``latency.json``.
        ValueError: a score without a unit or an error rate, or a ``latency.json``
            measured at another geometry (the message names the file).
    """
    latency_file = folder / "latency" / "latency.json"
    if not latency_file.is_file():
        raise FileNotFoundError(f"{latency_file} does not exist (stage 14 measures it)")
    with open(latency_file, encoding="utf-8") as f:
        measured = json.load(f)
    got = tuple(measured.get(k) for k in ("block_size", "hop_size", "look_ahead"))
    if got != (geometry.block_size, geometry.hop_size, geometry.look_ahead):
        raise ValueError(f"{latency_file}: measured at block/hop/look-ahead {got}, expected "
                         f"{geometry.block_size}/{geometry.hop_size}/{geometry.look_ahead}")
    latency = read_latency(latency_file)
    scores: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {}
    for head in heads:
        for test_set in test_sets:
            path = folder / head / test_set / "scores.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist (stage 14 decodes and scores "
                                        f"{test_set} with head {head})")
            for unit in units:
                err_rate, failed = read_error_rate(path, unit)
                scores.setdefault(unit, {}).setdefault(head, {})[test_set] = {
                    "err_rate": err_rate, "failed": failed}
    return SweepPoint(geometry.block_size, geometry.hop_size, geometry.look_ahead,
                      latency["algorithmic_latency_ms"], latency["rtf"],
                      latency["emission_delay_p50_ms"], latency["emission_delay_p90_ms"], scores)


def score_cell(score: Mapping[str, float]) -> str:
    """A table cell: the error rate with 2 decimals, and the failed utterances if any."""
    failed = int(score["failed"])
    return f"{score['err_rate']:.2f}" + (f" ({failed} failed)" if failed else "")


def sweep_table(rows: Sequence[Tuple[Sequence[str], SweepPoint]], lead: Sequence[str],
                heads: Sequence[str], test_sets: Sequence[str], unit: str) -> List[str]:
    """Markdown table lines: the ``lead`` columns (given per row), block, hop, look-ahead,
    algorithmic latency, the error rate per head and test set, RTF, emission delay."""
    columns = [*lead, "block", "hop", "look-ahead", "algorithmic latency (ms)",
               *(f"{h} {s}" for h in heads for s in test_sets),
               "RTF", "emission delay P50 (ms)", "P90 (ms)"]
    lines = ["|" + "|".join(columns) + "|", "|" + "---|" * len(columns)]
    for values, p in rows:
        cells = [v.replace("|", "\\|") for v in values]  # a name must not split the row
        cells += [str(p.block_size), str(p.hop_size), str(p.look_ahead),
                  f"{p.algorithmic_latency_ms:.0f}"]
        cells += [score_cell(p.scores[unit][h][s]) for h in heads for s in test_sets]
        cells += [f"{p.rtf:.3f}", f"{p.emission_delay_p50_ms:.0f}",
                  f"{p.emission_delay_p90_ms:.0f}"]
        lines.append("|" + "|".join(cells) + "|")
    return lines


def sweep_markdown(points: Sequence[SweepPoint], heads: Sequence[str], test_sets: Sequence[str],
                   units: Sequence[str], title: str, latency_set: str) -> str:
    """The sweep report: a row per geometry (by block size), one table per unit."""
    lines = [f"# Block-size sweep of one model\n\n## {title}\n",
             f"Error rates in % (2 decimals of the unrounded rate); {LATENCY_DEFINITION}. "
             f"RTF and emission delay of the streaming path on {latency_set}.\n"]
    for unit in units:
        lines.append(f"### {TITLE[unit]} (%)\n")
        lines += sweep_table([((), p) for p in points], (), heads, test_sets, unit)
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class Curve:
    """A line of the plot: ``points`` = ``[(latency ms, error %, block size)]``."""

    label: str
    points: List[Tuple[float, float, int]]
    color: str
    dashed: bool = False


def plot_curves(panels: Mapping[str, Sequence[Curve]], ylabel: str,
                path: str | os.PathLike) -> None:
    """Error rate against algorithmic latency: one panel per key of ``panels`` (a test
    set), one line per curve, each point labelled B<block size>. Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False)
    for ax, (panel, curves) in zip(axes[0], panels.items()):
        for c in curves:
            ax.plot([p[0] for p in c.points], [p[1] for p in c.points], color=c.color,
                    linestyle="--" if c.dashed else "-", marker="s" if c.dashed else "o",
                    label=c.label)
            for x, y, block in c.points:
                ax.annotate(f"B{block}", (x, y), textcoords="offset points", xytext=(3, 3),
                            fontsize="x-small")
        ax.set_title(panel)
        ax.set_xlabel("algorithmic latency (ms)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    logger.info("wrote %s", path)


def head_curve(points: Sequence[SweepPoint], head: str, test_set: str, unit: str, label: str,
               color: str) -> Curve:
    """The curve of ``head`` over ``points``, ordered by algorithmic latency (dashed for a
    full-context head)."""
    ordered = sorted(points, key=lambda p: p.algorithmic_latency_ms)
    return Curve(label, [(p.algorithmic_latency_ms, p.scores[unit][head][test_set]["err_rate"],
                          p.block_size) for p in ordered], color, head != STREAMING)


def write_sweep_report(sweep_dir: str | os.PathLike, block_sizes: Sequence[int],
                       hop_ratio: float, look_ahead_ratio: float, heads: Sequence[str],
                       test_sets: Sequence[str], units: Sequence[str], title: str,
                       latency_set: str) -> str:
    """Write ``sweep.md``, ``sweep.png`` (first unit) and ``sweep.json`` into ``sweep_dir``
    from its geometry folders; return the Markdown.

    Raises:
        FileNotFoundError / ValueError: see :func:`load_point`; a repeated block size or an
            unknown unit.
    """
    if len(set(block_sizes)) != len(block_sizes):
        raise ValueError(f"block sizes must be unique: {list(block_sizes)}")
    for unit in units:
        if unit not in TITLE:
            raise ValueError(f"unknown unit {unit!r}; expected one of {sorted(TITLE)}")
    root = Path(sweep_dir)
    geometries = [sweep_geometry(b, hop_ratio, look_ahead_ratio) for b in block_sizes]
    points = sorted((load_point(root / geometry_name(g), g, heads, test_sets, units) for g in geometries),
                    key=lambda p: p.block_size)
    text = sweep_markdown(points, heads, test_sets, units, title, latency_set)
    plot_curves({s: [head_curve(points, h, s, units[0], h, f"C{i}") for i, h in enumerate(heads)]
                 for s in test_sets},
                f"{TITLE[units[0]]} (%)", root / "sweep.png")
    text += "\nFigure: sweep.png\n"
    (root / "sweep.md").write_text(text, encoding="utf-8")
    summary = {"title": title, "latency_set": latency_set, "heads": list(heads),
               "test_sets": list(test_sets), "units": list(units),
               "points": [asdict(p) for p in points]}
    (root / SWEEP_JSON).write_text(json.dumps(summary, indent=1, ensure_ascii=False),
                                   encoding="utf-8")
    return text


def read_sweep(path: str | os.PathLike) -> List[SweepPoint]:
    """The points of a ``sweep.json`` written by :func:`write_sweep_report`.

    Raises:
        ValueError: not such a file (the message names it).
    """
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
            return [SweepPoint(**p) for p in data["points"]]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}: not a sweep.json of python -m dualmode_recipe "
                             "sweep_report") from None
