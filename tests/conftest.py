"""Shared fixtures: a toy corpus and a dual-mode model overfitted on it (trained once)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_corpus import make_tone_corpus, overfit_toy_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory):
    return make_tone_corpus(tmp_path_factory.mktemp("toy_corpus"), n_utts=6, seed=3)


@pytest.fixture(scope="session")
def toy_model(toy_corpus, tmp_path_factory):
    """joint + sp-ED debug model that recognises the toy corpus exactly with every head."""
    return overfit_toy_model(toy_corpus, ROOT / "conf" / "debug" / "joint_sp_ed.yaml",
                             tmp_path_factory.mktemp("toy_exp"))
