"""The repository's two halves: the model plugin (``espnet2_dualmode``) never imports the
recipe toolkit (``dualmode_recipe``), and the toolkit's one entry point lists and serves
every command the recipes call."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import kaldiio
import numpy as np
import pytest

from dualmode_recipe.__main__ import COMMANDS, get_parser
from espnet2_dualmode.inference.decode_list import DecodeList

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "espnet2_dualmode"
TOOLKIT = "dualmode_recipe"


def toolkit_imports(source: str) -> List[str]:
    """The modules of the toolkit that ``source`` imports (``import``, ``from ... import``,
    ``importlib.import_module`` / ``__import__`` with a literal name)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "__import__"))):
            names = [node.args[0].value]
        else:
            continue
        found += [n for n in names if n == TOOLKIT or n.startswith(TOOLKIT + ".")]
    return found


def test_the_import_scan_finds_every_form():
    source = ("import os\nimport dualmode_recipe.jobs as j\nfrom dualmode_recipe import config\n"
              "from .dualmode_recipe_like import x\nimport dualmode_recipes\n"
              "def f():\n    from dualmode_recipe.scoring import score\n"
              "    importlib.import_module('dualmode_recipe.compare')\n"
              "    __import__('dualmode_recipe')\n")
    assert toolkit_imports(source) == ["dualmode_recipe.jobs", "dualmode_recipe",
                                       "dualmode_recipe.scoring", "dualmode_recipe.compare",
                                       "dualmode_recipe"]


def test_the_plugin_never_imports_the_toolkit():
    files = sorted(PLUGIN.rglob("*.py"))
    assert len(files) > 20  # the scan sees the whole package
    offenders = {str(f.relative_to(REPO)): toolkit_imports(f.read_text(encoding="utf-8"))
                 for f in files}
    assert {f: m for f, m in offenders.items() if m} == {}


def test_the_toolkit_left_the_plugin():
    for folder in ("recipe", "datasets", "scoring"):
        assert not (PLUGIN / folder).exists(), folder
    names = {p.stem for p in (PLUGIN / "bin").glob("*.py")}
    moved = {n for n in names if n.startswith("recipe_") or n.endswith("_data_prep")
             or n in ("score", "compare_experiments", "make_demo_ja_corpus")}
    assert moved == set()


def test_the_entry_point_lists_its_commands():
    result = subprocess.run([sys.executable, "-m", TOOLKIT, "--help"], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^ {4}(\w+)", result.stdout, flags=re.M)
    assert listed == list(COMMANDS)
    for name in ("prep_csj", "prep_librispeech", "make_demo_ja", "speed_perturb", "format",
                 "filter", "bpe", "split", "merge", "score", "results", "compare",
                 "config_value", "merge_config", "rate"):
        assert name in COMMANDS


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as err:
        get_parser().parse_args([command, "--help"])
    assert err.value.code == 0
    assert f"python -m dualmode_recipe {command}" in capsys.readouterr().out


def test_the_recipes_call_only_existing_commands():
    scripts = sorted((REPO / "egs2").rglob("*.sh"))
    called = {m for s in scripts
              for m in re.findall(r"-m dualmode_recipe (\w+)", s.read_text(encoding="utf-8"))}
    assert {"prep_csj", "prep_librispeech", "make_demo_ja", "score", "merge_config"} <= called
    assert called <= set(COMMANDS)
    for script in scripts:
        assert "espnet2_dualmode.bin.recipe" not in script.read_text(encoding="utf-8")


def test_rate_command_prints_hertz():
    result = subprocess.run([sys.executable, "-m", TOOLKIT, "rate", "22.05k"],
                            capture_output=True, text=True, cwd=REPO)
    assert (result.returncode, result.stdout) == (0, "22050\n")
    bad = subprocess.run([sys.executable, "-m", TOOLKIT, "rate", "fast"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 1 and "dualmode_recipe rate: error: sample rate 'fast'" in bad.stderr


# The plugin's decode list reads with ESPnet's own reader (espnet2.fileio.read_text).
def test_decode_list_reads_keys_and_values(tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text("b /x/b.wav\na  /x/a b.wav\n")
    data = DecodeList(str(scp), "sound")
    assert data.keys == ["b", "a"] and data.entries == {"b": "/x/b.wav", "a": "/x/a b.wav"}
    keys = tmp_path / "keys"
    keys.write_text("a whatever\n")
    assert DecodeList.from_triple(f"{scp},speech,sound", str(keys)).keys == ["a"]
    keys.write_text("c\n")
    with pytest.raises(ValueError, match=r"keys \['c'\] of the key file are not in it"):
        DecodeList.from_triple(f"{scp},speech,sound", str(keys))


@pytest.mark.parametrize("text, message", [("a x\na y\n", "a is duplicated"),
                                           ("a x\n\nb y\n", "a blank line")])
def test_decode_list_errors_name_the_file(tmp_path, text, message):
    scp = tmp_path / "wav.scp"
    scp.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        DecodeList(str(scp), "sound")
    assert str(scp) in str(err.value)


def test_decode_list_rejects_too_short_features_alone(tmp_path):
    """A kaldi_ark entry shorter than the minimum fails on its own, not its whole batch."""
    ark, scp = tmp_path / "feats.ark", tmp_path / "feats.scp"
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as writer:
        writer("long", np.zeros((7, 4), np.float32))
        writer("short", np.zeros((6, 4), np.float32))
    data = DecodeList(str(scp), "kaldi_ark")
    assert data.load("long", 16000, 7).shape == (7, 4)
    with pytest.raises(ValueError, match="too short: 6 feature frames, at least 7"):
        data.load("short", 16000, 7)
