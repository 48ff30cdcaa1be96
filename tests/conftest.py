"""Shared fixtures: a toy corpus and a dual-mode model overfitted on it (trained once).

The suite runs in two pytest-xdist workers (README's test command, ``-n 2 --dist loadfile``).
Session fixtures are then built once for the whole run, not once per worker: the first
worker to need one builds it under a file lock in the run's common temporary folder and
the other reuses it. Each worker and the processes it starts use one intra-op thread, so
the two workers share the machine's cores instead of oversubscribing them.
"""

import json
import os
import sys
from pathlib import Path
from typing import Callable, Dict

import pytest
from filelock import FileLock

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_corpus import make_tone_corpus, overfit_toy_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# The files that take minutes (recipe runs, a Slurm cluster, multi-process training, the
# toy model's training) are handed out first, so that the two workers end together instead
# of one starting a long file when the other is nearly done.
SLOW_FIRST = ("test_slurm.py", "test_recipe_e2e.py", "test_ddp.py", "test_preflight.py",
              "test_geometry.py", "test_serve.py", "test_serve_endpoint.py", "test_inference.py")


def pytest_collection_modifyitems(items) -> None:
    """Slow files first (a stable sort: the order inside a file is kept)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def built_once(tmp_path_factory, worker_id: str, name: str,
               build: Callable[[Path], Dict[str, Path]]) -> Dict[str, Path]:
    """``build(folder)`` run once per test run, its result (a dict of paths) shared by the
    xdist workers; without xdist, simply run."""
    if worker_id == "master":
        return build(tmp_path_factory.mktemp(name))
    common = tmp_path_factory.getbasetemp().parent
    record = common / name / "paths.json"
    with FileLock(str(common / f"{name}.lock")):
        if not record.is_file():
            paths = build(common / name)
            record.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return {k: Path(v) for k, v in json.loads(record.read_text()).items()}


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory, worker_id):
    return built_once(tmp_path_factory, worker_id, "toy_corpus",
                      lambda out: make_tone_corpus(out, n_utts=6, seed=3))


@pytest.fixture(scope="session")
def toy_model(toy_corpus, tmp_path_factory, worker_id):
    """joint + sp-ED debug model that recognises the toy corpus exactly with every head."""
    return built_once(tmp_path_factory, worker_id, "toy_exp",
                      lambda out: overfit_toy_model(
                          toy_corpus, ROOT / "conf" / "debug" / "joint_sp_ed.yaml", out))
