"""Helpers shared by the benchmarks: paper-size models built with our task, peak memory."""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path

import numpy as np
import torch
from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

from espnet2_dualmode.inference.streaming import Speech2TextStreaming
from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask

ROOT = Path(__file__).resolve().parents[1]
CSJ_VOCAB = 3262  # CSJ character units, as in the reference cost


def token_list(vocab: int, directory: Path) -> Path:
    path = directory / f"tokens_{vocab}.txt"
    tokens = ["<blank>", "<unk>"] + [f"c{i}" for i in range(vocab - 3)] + ["<sos/eos>"]
    path.write_text("\n".join(tokens) + "\n")
    return path


def build_paper_model(name: str, vocab: int = CSJ_VOCAB, **model_conf):
    """conf/paper/<name>.yaml (or the training config file ``name`` ending in .yaml) with a
    dummy token list and unit global-MVN statistics; ``model_conf`` overrides the config's
    model_conf entries."""
    tmp = Path(tempfile.mkdtemp())
    stats = tmp / "feats_stats.npz"
    np.savez(stats, count=np.array(1.0), sum=np.zeros(80), sum_square=np.ones(80))
    config = Path(name) if name.endswith(".yaml") else ROOT / "conf" / "paper" / f"{name}.yaml"
    args = DualModeASRTask.get_parser().parse_args(
        ["--config", str(config),
         "--token_list", str(token_list(vocab, tmp)), "--normalize_conf", f"stats_file={stats}"])
    args.model_conf.update(model_conf)
    return DualModeASRTask.build_model(args), args


def paper_streaming(beam: int, directory: Path, joint_scale: float = 1.0,
                    blank_bias: float = 0.0) -> Speech2TextStreaming:
    """Speech2TextStreaming on the random-weight paper-size joint+sp-ED model (its config
    written into ``directory``), its streaming joint network's output layer scaled by
    ``joint_scale`` and ``blank_bias`` added to the blank logit: random weights give nearly
    flat outputs, a confident output layer emits a few tokens per second as a trained one."""
    torch.manual_seed(0)
    _, args = build_paper_model("joint_sp_ed")
    args.token_type = "char"  # the dummy token list is of characters
    config = directory / "config.yaml"
    with open(config, "w", encoding="utf-8") as f:
        yaml_no_alias_safe_dump(vars(args), f, indent=4, sort_keys=False)
    torch.manual_seed(0)
    s2t = Speech2TextStreaming(config, None, beam_size=beam)
    with torch.no_grad():
        s2t.model.stream_joint.lin_out.weight.mul_(joint_scale)
        s2t.model.stream_joint.lin_out.bias[s2t.model.blank_id] += blank_bias
    return s2t


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
