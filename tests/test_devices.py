"""Device-correct by construction: no tensor of the model plugin is created without a device
unless it is meant for the host, and tools/gpu_check.sh refuses a machine without CUDA."""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch

from espnet2_dualmode.inference.cli import device_of

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "espnet2_dualmode"
# The recipe toolkit (data preparation, scoring) never meets model tensors; it leaves the
# plugin for dualmode_recipe/, and is skipped here while it is still there.
RECIPE_DIRS = {"recipe", "datasets", "scoring"}
FACTORIES = {"tensor", "full", "zeros", "ones", "arange", "empty", "as_tensor", "from_numpy",
             "randn", "rand", "hann_window", "hamming_window", "blackman_window",
             "bartlett_window", "kaiser_window"}
# A tensor given to these becomes module state, which .to(device) moves with the module.
MODULE_STATE = {"register_buffer", "Parameter"}
HOST_MARK = "# host:"


def _is_torch_factory(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in FACTORIES and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch")


def _callee(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def deviceless_constructions(source: str, name: str) -> List[str]:
    """``name:line: code`` of each ``torch.<factory>(...)`` without ``device=``, without
    ``# host: <why>`` on its line, and not handed to register_buffer / nn.Parameter."""
    lines, tree = source.splitlines(), ast.parse(source, name)
    module_state = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) in MODULE_STATE:
            module_state |= {id(n) for arg in node.args for n in ast.walk(arg)}
    found = []
    for node in ast.walk(tree):
        if not _is_torch_factory(node) or id(node) in module_state:
            continue
        line = lines[node.lineno - 1]
        if any(k.arg == "device" for k in node.keywords) or HOST_MARK in line:
            continue
        found.append(f"{name}:{node.lineno}: {line.strip()}")
    return found


def plugin_sources() -> List[Path]:
    return sorted(p for p in PLUGIN.rglob("*.py")
                  if not RECIPE_DIRS & set(p.relative_to(PLUGIN).parts[:-1]))


def test_the_scan_finds_deviceless_tensors_and_accepts_justified_ones():
    source = '''
import torch
a = torch.zeros(3)
b = torch.tensor([1, 2],
                 dtype=torch.long)
c = torch.full((2,), 0, device=x.device)
d = torch.arange(4)  # host: read back with .tolist()
e = torch.zeros_like(x)
f = x.new_zeros(3)
self.register_buffer("g", torch.ones(2))
h = torch.nn.Parameter(torch.randn(2, 2))
w = torch.hann_window(400)
'''
    assert deviceless_constructions(source, "m.py") == [
        "m.py:3: a = torch.zeros(3)",
        "m.py:4: b = torch.tensor([1, 2],",
        "m.py:12: w = torch.hann_window(400)",
    ]


def test_plugin_creates_no_tensor_without_a_device_or_a_host_reason():
    sources = plugin_sources()
    assert {"model.py", "offline.py", "streaming.py", "mask_ctc.py"} <= {p.name for p in sources}
    found = [hit for p in sources
             for hit in deviceless_constructions(p.read_text(encoding="utf-8"),
                                                 str(p.relative_to(ROOT)))]
    assert not found, ("tensors created without device= (pass the device of the inputs, or "
                       "mark a host-side tensor with '# host: <why>'):\n" + "\n".join(found))


def test_gpu_check_says_it_needs_cuda_and_fails_without_it(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)
    r = subprocess.run([str(ROOT / "tools" / "gpu_check.sh")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "needs a CUDA GPU" in r.stderr


@pytest.mark.parametrize("module", ["dualmode_asr_inference", "dualmode_asr_inference_streaming",
                                    "measure_latency"])
def test_every_decoding_cli_takes_ngpu_like_espnet(module):
    cli = importlib.import_module(f"espnet2_dualmode.bin.{module}")
    args = cli.get_parser().parse_args([
        "--asr_train_config", "c.yaml", "--asr_model_file", "m.pth", "--output_dir", "out",
        "--data_path_and_name_and_type", "wav.scp,speech,sound", "--ngpu", "1"])
    assert args.ngpu == 1


def test_ngpu_asks_only_for_what_is_there(monkeypatch):
    assert device_of(argparse.Namespace(ngpu=0)) == "cpu"
    with pytest.raises(ValueError, match="--ngpu 0 or 1"):
        device_of(argparse.Namespace(ngpu=2))
    with pytest.raises(ValueError, match="--ngpu must be 0 or 1"):
        device_of(argparse.Namespace(ngpu=-1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device is visible"):
        device_of(argparse.Namespace(ngpu=1))
