"""The learning curve of a trained model: validation error rate against training minutes.

ESPnet's trainer keeps every epoch's statistics in its reporter, which it saves in
``<exp dir>/checkpoint.pth`` (``states["reporter"]``: ``stats[epoch]["train"|"valid"]``,
with the wall time of each part as ``"time"``). Unlike the training log, that survives a
resumed run whole, so the curve is read from there. The x axis is the cumulative time of
the training and validation loops; start-up, checkpoint writing and any time lost before a
resume are not in it. The y values are the greedy error rates the model computes on the
validation set (``cer_onl``: streaming RNN-T, ``cer_rnnt``, ``cer_ctc``, ``cer_att``, ...;
the Mask-CTC decoder reports accuracy only, so it has no error rate here). ``compare``
reads its epoch times from the same reporter (:func:`epoch_seconds`).
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

logger = logging.getLogger(__name__)

CURVE_MD = "learning_curve.md"
CURVE_PNG = "learning_curve.png"
# Validation error rates, in the order of the table; anything else named cer_* follows.
LABELS = {
    "cer_onl": "streaming RNN-T",
    "cer_stream_ctc": "streaming CTC",
    "cer_rnnt": "full-context RNN-T",
    "cer_ctc": "full-context CTC",
    "cer_att": "full-context attention",
}


@dataclass
class EpochPoint:
    """One epoch: cumulative minutes at its end and its validation error rates (fractions)."""

    epoch: int
    minutes: float
    error_rates: Dict[str, float]


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    raise ValueError(f"{where}: 'time' is {value!r}, not a timedelta (not ESPnet's reporter)")


def curve_from_reporter(state: Mapping[str, Any], source: str = "reporter") -> List[EpochPoint]:
    """The learning curve of a reporter state (``Reporter.state_dict()``), epoch by epoch.

    Raises:
        ValueError: no epoch with a validation part, or a part without its ``time``; the
            message names ``source``.
    """
    train, valid_time = epoch_seconds(state, "train", source), epoch_seconds(state, "valid", source)
    points, elapsed = [], 0.0
    for epoch, parts in sorted(state["stats"].items()):
        elapsed += train.get(int(epoch), 0.0) + valid_time.get(int(epoch), 0.0)
        valid = parts.get("valid")
        if valid is None:
            continue
        rates = {k: float(v) for k, v in valid.items() if k.startswith("cer_")}
        points.append(EpochPoint(int(epoch), elapsed / 60.0, rates))
    if not points:
        raise ValueError(f"{source}: no epoch with validation statistics")
    return points


def read_reporter(checkpoint: str | os.PathLike) -> Mapping[str, Any]:
    """The reporter state (``Reporter.state_dict()``) saved in an ESPnet ``checkpoint.pth``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file torch cannot load (e.g. cut short), or no reporter state in it.
    """
    import torch

    # The reporter holds datetime.timedelta values, which weights_only loading refuses;
    # the file is the recipe's own training output. mmap: the model and optimizer tensors
    # (about 1 GB at paper size) are mapped, not read; only the small reporter is needed.
    try:
        states = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"{checkpoint}: torch cannot load it ({err})") from None
    if not isinstance(states, Mapping) or "reporter" not in states:
        raise ValueError(f"{checkpoint}: not an ESPnet training checkpoint (no 'reporter')")
    return states["reporter"]


def read_curve(checkpoint: str | os.PathLike) -> List[EpochPoint]:
    """The learning curve saved in an ESPnet ``checkpoint.pth`` (errors: :func:`read_reporter`)."""
    return curve_from_reporter(read_reporter(checkpoint), str(checkpoint))


def epoch_seconds(state: Mapping[str, Any], part: str, source: str = "reporter") -> Dict[int, float]:
    """Wall seconds of ``part`` (``train`` or ``valid``) in each epoch of a reporter state
    that has it.

    Raises:
        ValueError: no reporter statistics, or a part without its ``time``; the message
            names ``source``.
    """
    stats = state.get("stats") if isinstance(state, Mapping) else None
    if not isinstance(stats, Mapping):
        raise ValueError(f"{source}: no reporter statistics")
    return {int(epoch): _seconds(parts[part].get("time"), f"{source}: epoch {epoch} {part}")
            for epoch, parts in sorted(stats.items()) if part in parts}


def curve_keys(points: Sequence[EpochPoint]) -> List[str]:
    """The error-rate keys of ``points``: those of :data:`LABELS` first, the rest sorted."""
    seen = {k for p in points for k in p.error_rates}
    return [k for k in LABELS if k in seen] + sorted(seen - set(LABELS))


def curve_markdown(points: Sequence[EpochPoint], title: str) -> str:
    """A row per epoch: cumulative minutes and each validation error rate in percent."""
    keys = curve_keys(points)
    lines = [f"### {title}", "",
             "Validation greedy CER (%) after each epoch, against the cumulative minutes of "
             "the training and validation loops.", "",
             "|epoch|minutes|" + "|".join(LABELS.get(k, k) for k in keys) + "|",
             "|---" * (len(keys) + 2) + "|"]
    for p in points:
        cells = [f"{100 * p.error_rates[k]:.1f}" if k in p.error_rates else "-" for k in keys]
        lines.append(f"|{p.epoch}|{p.minutes:.1f}|" + "|".join(cells) + "|")
    return "\n".join(lines) + "\n"


def plot_curve(points: Sequence[EpochPoint], title: str, path: str | os.PathLike) -> None:
    """Error rate (%) against minutes, a line per key (streaming solid, the rest dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for key in curve_keys(points):
        xy = [(p.minutes, 100 * p.error_rates[key]) for p in points if key in p.error_rates]
        streaming = key.startswith(("cer_onl", "cer_stream"))
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o",
                linestyle="-" if streaming else "--", label=LABELS.get(key, key))
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("training minutes (train + validation loops)")
    ax.set_ylabel("validation CER (%), greedy")
    # An untrained decoder (e.g. the RNN-T during a CTC-only warm-up) can emit far more
    # tokens than the reference holds: its CER of thousands of % would flatten the rest.
    if any(v > 1 for p in points for v in p.error_rates.values()):
        ax.set_ylim(0, 105)
        ax.set_ylabel("validation CER (%), greedy; axis cut at 105")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    logger.info("wrote %s", path)


def write_learning_curve(checkpoint: str | os.PathLike, output_dir: str | os.PathLike,
                         title: str) -> str:
    """Write ``learning_curve.md`` and ``learning_curve.png`` of ``checkpoint`` into
    ``output_dir``; return the Markdown."""
    points = read_curve(checkpoint)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = curve_markdown(points, title)
    (out / CURVE_MD).write_text(text, encoding="utf-8")
    plot_curve(points, title, out / CURVE_PNG)
    return text
