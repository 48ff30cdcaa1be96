"""Helpers shared by the benchmarks: paper-size models built with our task, peak memory."""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path

import numpy as np

from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask

ROOT = Path(__file__).resolve().parents[1]
CSJ_VOCAB = 3262  # CSJ character units, as in the reference cost


def token_list(vocab: int, directory: Path) -> Path:
    path = directory / f"tokens_{vocab}.txt"
    tokens = ["<blank>", "<unk>"] + [f"c{i}" for i in range(vocab - 3)] + ["<sos/eos>"]
    path.write_text("\n".join(tokens) + "\n")
    return path


def build_paper_model(name: str, vocab: int = CSJ_VOCAB, **model_conf):
    """conf/paper/<name>.yaml with a dummy token list and unit global-MVN statistics;
    ``model_conf`` overrides the config's model_conf entries."""
    tmp = Path(tempfile.mkdtemp())
    stats = tmp / "feats_stats.npz"
    np.savez(stats, count=np.array(1.0), sum=np.zeros(80), sum_square=np.ones(80))
    args = DualModeASRTask.get_parser().parse_args(
        ["--config", str(ROOT / "conf" / "paper" / f"{name}.yaml"),
         "--token_list", str(token_list(vocab, tmp)), "--normalize_conf", f"stats_file={stats}"])
    args.model_conf.update(model_conf)
    return DualModeASRTask.build_model(args), args


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
