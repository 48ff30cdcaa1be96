"""Compare scored experiments in the layouts of the paper's Tables 1-2 and Figure 2.

Each experiment is a recipe experiment folder ``exp/asr_<tag>`` after stages 12-13: its
``config.yaml`` (written by training) and ``<decode dir>/<head>/<test set>/scores.json``
(read with :func:`dualmode_recipe.results.read_error_rate`). An experiment gives a
streaming row (head ``streaming``) when its model has a streaming encoder and a
full-context row (an offline head, ``rnnt`` by default) when it has a full-context one;
the paper numbers them ST1, ST2, ... and NST1, NST2, ... in order.

- Table 1 layout: one row per experiment and mode; per test set the error rate (abs.)
  and the relative reduction against the baseline row of the same mode,
  ``rel = (base - x) / base * 100`` (rel.(%) in the paper).
- Table 2 layout: the same table over the experiments with a distillation method at one
  block size, labelled by method (mse-ED, sp-DD, sp-ED).
- Figure 2 layout: error rate against a config value (the block size) per method and
  mode, one panel per test set.
- Figure 2 from one model per experiment (``--sweep``): the block-size sweeps of stage 14
  (:mod:`dualmode_recipe.sweep`) side by side, error rate against algorithmic latency,
  e.g. a dynamic-block sp-ED model against a dynamic-block mse-ED one.

Error rates are the unrounded ``err_rate`` of the score records, shown with 2 decimals as
in the paper (RESULTS.md shows sclite's 1-decimal rounding of the same counts). Every row
also gives the model's parameters (counted on the model that ``config.yaml`` builds) and,
for streaming rows, the latency that stage 13 measured (``<decode dir>/latency/latency.json``):
Latency@50/@90 (last token after the end of speech, Dual-mode ASR's metric; only where the
corpus knows where its speech ends) and the per-token emission delay P50/P90; and the median
training time per epoch, from the reporter of ESPnet's trainer in ``checkpoint.pth`` (what
its ``Nepoch results: [train] ... time=...`` log lines print), as measured wherever and under
whatever load the training ran.

The shared-weights Dual-mode model (``model: shared``) has both modes in one encoder: its
streaming row is head ``streaming`` and its full-context row ``--offline_head``, as for the
cascade; its distillation is ``in-place KD`` (``model_conf.inplace_kd_weight`` > 0).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from dualmode_recipe.config import config_value
from dualmode_recipe.learning_curve import epoch_seconds, read_reporter
from dualmode_recipe.results import SEGMENT_LATENCY_KEYS, TITLE, read_error_rate, read_latency
from dualmode_recipe.sweep import (
    LATENCY_DEFINITION,
    SWEEP_JSON,
    SweepPoint,
    head_curve,
    plot_curves,
    read_sweep,
    sweep_table,
)

logger = logging.getLogger(__name__)

STREAMING = "streaming"
OFFLINE = "offline"
ROW_PREFIX = {STREAMING: "ST", OFFLINE: "NST"}
MODE_NAME = {STREAMING: "streaming", OFFLINE: "full context"}
NO_DISTILLATION = "none"
INPLACE_KD = "in-place KD"
NOT_MEASURED = "–"


@dataclass(frozen=True)
class Score:
    """Error rate (percent, unrounded) of one test set and the number of failed utterances."""

    rate: float
    failed: int


@dataclass(frozen=True)
class Experiment:
    """A scored experiment: its name, folder, training config, scores per mode and set,
    parameters and the streaming mode's latency figures (``latency.json``; empty when stage 13
    did not measure it)."""

    name: str
    exp_dir: Path
    config: Mapping[str, Any]
    scores: Mapping[Tuple[str, str], Score]
    params: int = 0
    latency: Mapping[str, float] = field(default_factory=dict)
    epoch_minutes: float = math.nan

    def modes(self) -> List[str]:
        """The modes scored for this experiment, streaming first."""
        return [m for m in (STREAMING, OFFLINE) if any(k[0] == m for k in self.scores)]


@dataclass(frozen=True)
class Row:
    """One table row: mode, label, the error rate of each test set, and the experiment it
    comes from (parameters and latency)."""

    mode: str
    label: str
    scores: Mapping[str, Score]
    experiment: Optional[Experiment] = None


def distillation_method(config: Mapping[str, Any]) -> str:
    """The paper's name of a config's distillation: ``sp-ED``, ``mse-ED``, ``sp-DD``,
    both joined by ``+``, or :data:`NO_DISTILLATION`."""
    model_conf = config.get("model_conf") or {}
    if is_shared_weights(config):
        return INPLACE_KD if float(model_conf.get("inplace_kd_weight", 0)) > 0 else NO_DISTILLATION
    parts = []
    if model_conf.get("encoder_distill"):
        parts.append(f"{model_conf['encoder_distill']}-ED")
    if model_conf.get("decoder_distill"):
        parts.append(f"{model_conf['decoder_distill']}-DD")
    return " + ".join(parts) or NO_DISTILLATION


def is_shared_weights(config: Mapping[str, Any]) -> bool:
    """A Dual-mode model with shared weights: one encoder that runs both modes."""
    return config.get("model") == "shared"


def count_parameters(config: Mapping[str, Any]) -> int:
    """Parameters of the model ``config`` (a training ``config.yaml``) builds, counted on the
    meta device (no weights allocated, no checkpoint needed). The normalisation layer holds
    no parameters and its statistics file is a recipe-relative path, so it is left out."""
    import argparse

    import torch

    from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask

    args = argparse.Namespace(**{**config, "normalize": None, "normalize_conf": {}})
    with torch.device("meta"):
        model = DualModeASRTask.build_model(args)
    return sum(p.numel() for p in model.parameters())


def training_minutes_per_epoch(exp_dir: Path) -> float:
    """The median training time of an epoch in minutes, from the reporter of ESPnet's trainer
    in ``checkpoint.pth`` (the ``[train]`` part's wall time; it survives a resumed run, unlike
    the training logs); NaN without that file or an epoch in it."""
    checkpoint = exp_dir / "checkpoint.pth"
    if not checkpoint.is_file():
        return math.nan
    seconds = epoch_seconds(read_reporter(checkpoint), "train", str(checkpoint))
    return statistics.median(seconds.values()) / 60 if seconds else math.nan


def find_decode_dir(exp_dir: Path, heads: Sequence[str]) -> Path:
    """The one folder of ``exp_dir`` holding decodings of any of ``heads`` (stage 12's
    ``<inference_tag>``).

    Raises:
        FileNotFoundError: no such folder.
        ValueError: several (the caller must name one).
    """
    found = sorted(d for d in exp_dir.iterdir()
                   if d.is_dir() and any((d / h).is_dir() for h in heads))
    if not found:
        raise FileNotFoundError(f"{exp_dir}: no decoding folder with {' or '.join(heads)}/ "
                                "in it (run stages 12-13 of the recipe)")
    if len(found) > 1:
        listed = ", ".join(d.name for d in found)
        raise ValueError(f"{exp_dir}: several decoding folders ({listed}); choose one with "
                         "--inference_tag")
    return found[0]


def load_experiment(exp_dir: str | os.PathLike, name: str, test_sets: Sequence[str], unit: str,
                    offline_head: str = "rnnt", inference_tag: Optional[str] = None
                    ) -> Experiment:
    """Read an experiment's ``config.yaml`` and the scores of every mode its model has.

    Args:
        exp_dir: ``exp/asr_<tag>``.
        name: the experiment's name in the tables.
        test_sets: test sets that must be scored in every mode.
        unit: ``char`` (CER) or ``word`` (WER).
        offline_head: decoding head of the full-context row.
        inference_tag: decoding folder under ``exp_dir`` (default: the only one there).

    Raises:
        FileNotFoundError / ValueError: a missing config, decoding or ``scores.json``, or
            a score without ``unit``; the message names the experiment and the file.
    """
    root = Path(exp_dir)
    config_file = root / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"experiment {name}: {config_file} does not exist (train first)")
    with open(config_file, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"experiment {name}: {config_file} is not a mapping")
    heads = {}
    if config.get("stream_encoder"):
        heads[STREAMING] = "streaming"
    if config.get("full_encoder") or is_shared_weights(config):
        heads[OFFLINE] = offline_head
    if not heads:
        raise ValueError(f"experiment {name}: {config_file} has neither a stream_encoder "
                         "nor a full_encoder")
    try:
        decode_dir = (root / inference_tag if inference_tag
                      else find_decode_dir(root, list(heads.values())))
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"experiment {name}: {err}") from None
    scores = {}
    for mode, head in heads.items():
        for test_set in test_sets:
            path = decode_dir / head / test_set / "scores.json"
            if not path.is_file():
                raise FileNotFoundError(f"experiment {name}: {path} does not exist (decode and "
                                        f"score {test_set} with head {head}: stages 12-13)")
            try:
                scores[mode, test_set] = Score(*read_error_rate(path, unit))
            except ValueError as err:
                raise ValueError(f"experiment {name}: {err}") from None
    latency_file = decode_dir / "latency" / "latency.json"
    try:
        latency = read_latency(latency_file) if latency_file.is_file() else {}
        minutes_per_epoch = training_minutes_per_epoch(root)
    except ValueError as err:
        raise ValueError(f"experiment {name}: {err}") from None
    logger.info("experiment %s: %s, %s", name, decode_dir,
                " and ".join(f"{MODE_NAME[m]} ({h})" for m, h in heads.items()))
    return Experiment(name, root, config, scores, count_parameters(config), latency,
                      minutes_per_epoch)


def experiment_rows(experiments: Sequence[Experiment], test_sets: Sequence[str],
                    labels: Optional[Sequence[str]] = None) -> List[Row]:
    """The rows of ``experiments`` (labelled by name, or by ``labels``), streaming first."""
    labels = labels or [e.name for e in experiments]
    return [Row(mode, label, {s: e.scores[mode, s] for s in test_sets}, e)
            for mode in (STREAMING, OFFLINE)
            for e, label in zip(experiments, labels) if mode in e.modes()]


def _rel(base: float, value: float) -> str:
    return "n/a" if base == 0 else f"{(base - value) / base * 100:.2f}"


def model_cells(row: Row) -> List[str]:
    """The row's parameters (M), training minutes per epoch, Latency@50/@90 and token delay
    P50/P90 (ms) cells; latency only for streaming rows that stage 13 measured
    (:data:`NOT_MEASURED` else), the token delay only where the model had a CTC head to align
    tokens with (not NaN), the epoch time only where checkpoint.pth gives it."""
    e = row.experiment
    if e is None:
        return [NOT_MEASURED] * 4
    lat = e.latency if row.mode == STREAMING else {}
    at = (f"{lat['latency_at50_ms']:.0f} / {lat['latency_at90_ms']:.0f}"
          if all(k in lat for k in SEGMENT_LATENCY_KEYS) else NOT_MEASURED)
    delay = (f"{lat['emission_delay_p50_ms']:.0f} / {lat['emission_delay_p90_ms']:.0f}"
             if lat and not math.isnan(lat["emission_delay_p50_ms"]) else NOT_MEASURED)
    epoch = NOT_MEASURED if math.isnan(e.epoch_minutes) else f"{e.epoch_minutes:.1f}"
    return [f"{e.params / 1e6:.2f}", epoch, at, delay]


def comparison_table(rows: Sequence[Row], test_sets: Sequence[str], unit: str,
                     baselines: Sequence[str] = ()) -> str:
    """A Markdown table in the paper's layout: abs. and rel.(%) per test set.

    Rows keep their order within each mode and are numbered ST1.. / NST1... The baseline
    of a mode is its first row labelled with the first of ``baselines`` that has a row of
    that mode; without ``baselines``, the first row of the mode.

    Raises:
        ValueError: ``baselines`` given but none has a row of some mode.
    """
    ordered = [r for m in (STREAMING, OFFLINE) for r in rows if r.mode == m]
    ids: List[str] = []
    number = {STREAMING: 0, OFFLINE: 0}
    for r in ordered:
        number[r.mode] += 1
        ids.append(f"{ROW_PREFIX[r.mode]}{number[r.mode]}")
    base: Dict[str, int] = {}  # mode -> index in ordered
    for mode in (STREAMING, OFFLINE):
        of_mode = [i for i, r in enumerate(ordered) if r.mode == mode]
        wanted = [i for b in baselines for i in of_mode if ordered[i].label == b]
        if of_mode and baselines and not wanted:
            raise ValueError(f"no baseline for the {MODE_NAME[mode]} rows: none of "
                             f"{list(baselines)} has one (rows: "
                             f"{[ordered[i].label for i in of_mode]})")
        if of_mode:
            base[mode] = (wanted or of_mode)[0]
    caption = "; ".join(f"{MODE_NAME[m]} rows against {ids[i]} ({ordered[i].label})"
                        for m, i in base.items())
    lines = [f"{TITLE[unit]} (%): abs. and rel.(%) = (baseline - abs.) / baseline x 100; "
             f"{caption}. Params: the whole model. Min/epoch: median training time of an epoch "
             f"(from the trainer's checkpoint.pth). Latency@50/@90: the last token's emission "
             f"after the end of speech; token delay: each token's emission after the end of "
             f"its speech (streaming rows, from stage 13's latency.json).", "",
             "|row|experiment|" + "".join(f"{s} abs.|{s} rel.(%)|" for s in test_sets)
             + "params (M)|min/epoch|Latency@50 / @90 (ms)|token delay P50 / P90 (ms)|",
             "|---|---|" + "---|---|" * len(test_sets) + "---|---|---|---|"]
    for i, r in enumerate(ordered):
        baseline = ordered[base[r.mode]]
        cells = []
        for s in test_sets:
            score = r.scores[s]
            failed = f" ({score.failed} failed)" if score.failed else ""
            rel = "" if i == base[r.mode] else _rel(baseline.scores[s].rate, score.rate)
            cells += [f"{score.rate:.2f}{failed}", rel]
        label = r.label.replace("|", "\\|")  # a name must not split the Markdown row
        lines.append(f"|{ids[i]}|{label}|" + "|".join(cells + model_cells(r)) + "|")
    return "\n".join(lines) + "\n"


def block_size(experiment: Experiment) -> Optional[int]:
    """The streaming encoder's block size in ``config.yaml`` (None: no block encoder).

    Raises:
        ValueError: a streaming encoder whose config does not set ``block_size``.
    """
    if not experiment.config.get("stream_encoder") or is_shared_weights(experiment.config):
        return None  # no blocks: the shared-weights encoder streams frame by frame
    try:
        return int(config_value(experiment.config, "stream_encoder_conf.block_size"))
    except KeyError:
        raise ValueError(f"experiment {experiment.name}: {experiment.exp_dir / 'config.yaml'} "
                         "has no stream_encoder_conf.block_size") from None


def comparison_markdown(experiments: Sequence[Experiment], test_sets: Sequence[str], unit: str,
                        baselines: Sequence[str] = (), table2_block_size: int = 40,
                        table2_baseline: str = "mse-ED") -> str:
    """The comparison report: Table 1 layout, then Table 2 layout (see module doc).

    Args:
        experiments: the loaded experiments, in row order.
        test_sets: the table columns.
        unit: ``char`` or ``word``.
        baselines: experiment names for the Table 1 baselines (:func:`comparison_table`).
        table2_block_size: block size of the experiments in Table 2 (paper: 40).
        table2_baseline: method whose rows are the Table 2 baselines when present (paper:
            mse-ED); otherwise the first row of each mode.
    """
    names = ", ".join(f"{e.name} = {e.exp_dir}" for e in experiments)
    parts = [f"# Comparison of experiments\n\nExperiments: {names}.\n",
             "## Table 1 layout: experiments\n",
             comparison_table(experiment_rows(experiments, test_sets), test_sets, unit, baselines),
             f"## Table 2 layout: distillation methods at block size {table2_block_size}\n"]
    # A shared-weights model has no blocks: its in-place KD joins the cascade's methods.
    chosen = [e for e in experiments if distillation_method(e.config) != NO_DISTILLATION
              and (block_size(e) == table2_block_size or is_shared_weights(e.config))]
    if not chosen:
        parts.append(f"No experiment with distillation has block size {table2_block_size}.\n")
        return "\n".join(parts)
    labels = [distillation_method(e.config) for e in chosen]
    labels = [f"{m} ({e.name})" if labels.count(m) > 1 else m for m, e in zip(labels, chosen)]
    parts.append(comparison_table(experiment_rows(chosen, test_sets, labels), test_sets, unit,
                                  [table2_baseline] if table2_baseline in labels else ()))
    return "\n".join(parts)


def figure_points(experiments: Sequence[Experiment], x_key: str
                  ) -> Dict[Tuple[str, str], List[Tuple[float, Experiment]]]:
    """``{(method, mode): [(x, experiment), ...]}`` sorted by x, for :func:`plot_figure`.

    Experiments whose config lacks ``x_key`` are left out (logged).

    Raises:
        ValueError: two experiments with the same method and x, or a non-numeric x.
    """
    lines: Dict[Tuple[str, str], List[Tuple[float, Experiment]]] = {}
    for e in experiments:
        try:
            x = config_value(e.config, x_key)
        except KeyError:
            logger.info("experiment %s: no %s in its config.yaml; not in the figure", e.name, x_key)
            continue
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ValueError(f"experiment {e.name}: {x_key} = {x!r} is not a number")
        for mode in e.modes():
            points = lines.setdefault((distillation_method(e.config), mode), [])
            twin = [p for p in points if p[0] == x]
            if twin:
                raise ValueError(f"experiments {twin[0][1].name} and {e.name} both have "
                                 f"{distillation_method(e.config)} with {x_key} = {x}")
            points.append((x, e))
    for points in lines.values():
        points.sort(key=lambda p: p[0])
    return lines


def plot_figure(experiments: Sequence[Experiment], test_sets: Sequence[str], unit: str,
                x_key: str, path: str | os.PathLike) -> None:
    """Figure 2 layout as a PNG: error rate against ``x_key`` (a dotted config key), one
    line per distillation method and mode (colour: method, dashes: full context), one
    panel per test set.

    Raises:
        ValueError: no experiment has ``x_key`` (see also :func:`figure_points`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = figure_points(experiments, x_key)
    if not lines:
        raise ValueError(f"no experiment has {x_key} in its config.yaml: nothing to plot")
    methods = sorted({m for m, _ in lines})
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(test_sets), figsize=(4.5 * len(test_sets), 3.8),
                             squeeze=False)
    for ax, test_set in zip(axes[0], test_sets):
        for (method, mode), points in sorted(lines.items(),
                                             key=lambda kv: (kv[0][0], kv[0][1] != STREAMING)):
            ax.plot([x for x, _ in points], [e.scores[mode, test_set].rate for _, e in points],
                    color=colors[method], linestyle="-" if mode == STREAMING else "--",
                    marker="o" if mode == STREAMING else "s",
                    label=f"{method}, {MODE_NAME[mode]}")
        ax.set_title(test_set)
        ax.set_xlabel(x_key.rsplit(".", 1)[-1].replace("_", " "))
        ax.set_ylabel(f"{TITLE[unit]} (%)")
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    logger.info("wrote %s (%d lines)", path, len(lines))


def write_comparison(exp_dirs: Sequence[str], names: Sequence[str], test_sets: Sequence[str],
                     unit: str, output_dir: str | os.PathLike, offline_head: str = "rnnt",
                     inference_tag: Optional[str] = None, baselines: Sequence[str] = (),
                     table2_block_size: int = 40, table2_baseline: str = "mse-ED",
                     figure_x: Optional[str] = None) -> str:
    """Load the experiments, write ``output_dir/comparison.md`` (and, with ``figure_x``,
    the Figure 2 PNG against that config value: a dotted key, or a key of
    ``stream_encoder_conf``) and return the report's text."""
    experiments = [load_experiment(d, n, test_sets, unit, offline_head, inference_tag)
                   for d, n in zip(exp_dirs, names)]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = comparison_markdown(experiments, test_sets, unit, baselines, table2_block_size,
                               table2_baseline)
    if figure_x:
        key = figure_x if "." in figure_x else f"stream_encoder_conf.{figure_x}"
        figure = out / f"figure_{key.rsplit('.', 1)[-1]}.png"
        plot_figure(experiments, test_sets, unit, key, figure)
        text += f"\nFigure: {figure.name}\n"
    (out / "comparison.md").write_text(text, encoding="utf-8")
    return text


# ---------------------------------------------------------------------------------------
# One-model block-size sweeps (stage 14) side by side
# ---------------------------------------------------------------------------------------
def load_sweep(exp_dir: str | os.PathLike, name: str, heads: Sequence[str],
               test_sets: Sequence[str], unit: str, inference_tag: Optional[str] = None
               ) -> List[SweepPoint]:
    """The stage-14 sweep of an experiment (``<decode dir>/sweep/sweep.json``), checked to
    hold ``unit`` scores of every head and test set.

    Raises:
        FileNotFoundError / ValueError: no sweep, or a head, set or unit it lacks; the
            message names the experiment and the file.
    """
    root = Path(exp_dir)
    try:
        decode_dir = root / inference_tag if inference_tag else find_decode_dir(root, ["sweep"])
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"experiment {name}: {err} (stage 14, --sweep_block_sizes)") from None
    path = decode_dir / "sweep" / SWEEP_JSON
    if not path.is_file():
        raise FileNotFoundError(f"experiment {name}: {path} does not exist (run stage 14 with "
                                "--sweep_block_sizes)")
    points = read_sweep(path)
    for p in points:
        for head in heads:
            for test_set in test_sets:
                if test_set not in p.scores.get(unit, {}).get(head, {}):
                    raise ValueError(f"experiment {name}: {path} has no {unit} score of head "
                                     f"{head} on {test_set} at block {p.block_size} (stage 14 "
                                     "--sweep_heads, --test_sets, --score_units)")
    logger.info("experiment %s: sweep %s (%d geometries)", name, path, len(points))
    return points


def sweep_comparison_markdown(sweeps: Mapping[str, Sequence[SweepPoint]], heads: Sequence[str],
                              test_sets: Sequence[str], unit: str) -> str:
    """Several experiments' sweeps in one table: a row per experiment and geometry."""
    rows = [((name,), p) for name, points in sweeps.items()
            for p in sorted(points, key=lambda q: q.block_size)]
    lines = ["# Block-size sweeps side by side\n",
             f"{TITLE[unit]} (%) per decoding head and test set; {LATENCY_DEFINITION}.\n",
             *sweep_table(rows, ("experiment",), heads, test_sets, unit)]
    return "\n".join(lines) + "\n"


def write_sweep_comparison(exp_dirs: Sequence[str], names: Sequence[str],
                           test_sets: Sequence[str], unit: str, output_dir: str | os.PathLike,
                           offline_head: str = "rnnt", inference_tag: Optional[str] = None
                           ) -> str:
    """Figure 2 from one model per experiment: write ``output_dir/sweeps.md`` and
    ``figure_sweeps.png`` (error rate against algorithmic latency, a colour per experiment,
    solid streaming and dashed ``offline_head`` lines, a panel per test set); return the
    Markdown."""
    heads = [STREAMING, offline_head]
    sweeps = {n: load_sweep(d, n, heads, test_sets, unit, inference_tag)
              for d, n in zip(exp_dirs, names)}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = sweep_comparison_markdown(sweeps, heads, test_sets, unit)
    labels = {STREAMING: MODE_NAME[STREAMING], offline_head: f"full context ({offline_head})"}
    plot_curves({s: [head_curve(points, h, s, unit, f"{name}, {labels[h]}", f"C{i}")
                     for i, (name, points) in enumerate(sweeps.items()) for h in heads]
                 for s in test_sets}, f"{TITLE[unit]} (%)", out / "figure_sweeps.png")
    text += "\nFigure: figure_sweeps.png\n"
    (out / "sweeps.md").write_text(text, encoding="utf-8")
    return text
