"""The one-model block-size sweep (stage 14): its geometries and its report.

The sweep folders are built as stage 14 leaves them (tests/test_compare.py: scores from
the stage-13 scoring command over hand-made hypotheses with known error counts,
``latency.json`` as measure_latency writes it); the expected numbers are computed here
from those counts. The stage itself runs on the tiny demo corpus in
tests/test_recipe_e2e.py.
"""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dualmode_recipe.__main__ import main as recipe_main
from dualmode_recipe.config import load_mapping
from dualmode_recipe.sweep import geometry_name, read_sweep, sweep_geometry
from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask
from recipe_sandbox import make_recipe, run_recipe
from test_compare import (  # noqa: F401  (token_list: a fixture)
    PAPER_GEOMETRY,
    SWEEP_ERRORS,
    latency_record,
    make_sweep,
    parse_args,
    rate,
    sweep_report_main,
    sweep_row,
    token_list,
)

ROOT = Path(__file__).resolve().parents[1]
DYNAMIC = ROOT / "conf" / "paper" / "dynamic" / "dynamic_blocks.yaml"
DYNAMIC_KEYS = ("dynamic_block_sizes", "dynamic_hop_ratio", "dynamic_look_ahead_ratio")


def test_default_geometry_is_the_paper_grid():
    """At the default ratios, every block of conf/paper/blocks/ gets that file's geometry."""
    for path in sorted((ROOT / "conf" / "paper" / "blocks").glob("block*.yaml")):
        conf = load_mapping(path)["stream_encoder_conf"]
        assert tuple(sweep_geometry(conf["block_size"])) == (
            conf["block_size"], conf["hop_size"], conf["look_ahead"]), path.name


@pytest.mark.parametrize("block, hop_ratio, look_ahead_ratio, expected", [
    (3, 0.4, 0.4, (3, 1, 1)),      # 1.2 rounds down
    (5, 0.5, 0.0, (5, 3, 0)),      # 2.5 rounds half up (Python's round() would give 2)
    (8, 0.4, 0.25, (8, 3, 2)),     # 3.2 -> 3, 2.0 -> 2
    (7, 0.3, 0.5, (7, 2, 4)),      # 2.1 -> 2, 3.5 -> 4
])
def test_geometry_rounds_half_up(block, hop_ratio, look_ahead_ratio, expected):
    assert tuple(sweep_geometry(block, hop_ratio, look_ahead_ratio)) == expected


@pytest.mark.parametrize("block, hop_ratio, look_ahead_ratio, message", [
    (1, 0.4, 0.4, "got block_size=1, hop_size=0, look_ahead=0"),  # hop rounds to 0
    (5, 0.5, 0.5, "got block_size=5, hop_size=3, look_ahead=3"),  # 3 + 3 > 5
    (10, 1.5, 0.4, "hop ratio must be in"),
    (10, 0.4, -0.1, "look-ahead ratio must be in"),
])
def test_geometry_rejects_what_the_encoder_cannot_run(block, hop_ratio, look_ahead_ratio,
                                                      message):
    with pytest.raises(ValueError, match=message):
        sweep_geometry(block, hop_ratio, look_ahead_ratio)


def test_geometry_command_writes_a_line_per_block(tmp_path, capsys):
    out = tmp_path / "sweep" / "geometries"
    recipe_main(["sweep_geometry", "--block_sizes", "10", "20", "--output", str(out)])
    assert out.read_text().splitlines() == [
        "block10_hop4_lookahead4 --block_size 10 --hop_size 4 --look_ahead 4",
        "block20_hop8_lookahead8 --block_size 20 --hop_size 8 --look_ahead 8"]
    with pytest.raises(SystemExit) as err:
        recipe_main(["sweep_geometry", "--block_sizes", "5", "--hop_ratio", "0.5",
                     "--look_ahead_ratio", "0.5"])
    assert "block 5 with hop ratio 0.5" in str(err.value.code)


def test_report_table_json_and_figure(tmp_path, capsys):
    """sweep_report over three geometries: the Markdown rows hold the scored error rates
    (one utterance lost counts as deletions) and the latency figures, ordered by block;
    sweep.json holds the same numbers; the PNG is written."""
    import matplotlib.image

    errors = SWEEP_ERRORS["sp_dyn"]
    # u2 of "test" (10 characters) was not decoded by the streaming path at block 10.
    sweep = make_sweep(tmp_path, "x", errors, drop={(10, "streaming", "test"): ("u2",)})
    sweep_report_main(sweep, [40, 10, 20])
    text = (sweep / "sweep.md").read_text(encoding="utf-8")
    assert text in capsys.readouterr().out
    assert "algorithmic latency = (block + look-ahead) x encoder frame shift" in text
    assert ("|block|hop|look-ahead|algorithmic latency (ms)|streaming dev|streaming test|"
            "rnnt dev|rnnt test|RTF|emission delay P50 (ms)|P90 (ms)|") in text
    # Block 10 streaming on test: 6 substitutions, 5 of them in u1 (5 characters) and 1 in
    # the lost u2, which counts as 10 deletions instead: 5 + 10 errors in 15.
    lost = {**errors[10], "streaming": {**errors[10]["streaming"], "test": 15}}
    assert [ln for ln in text.splitlines() if re.match(r"\|\d+\|", ln)] == [
        sweep_row("", 10, lost, failed={("streaming", "test"): 1}),
        sweep_row("", 20, errors[20]), sweep_row("", 40, errors[40])]
    assert "|10|4|4|560|33.33|100.00 (1 failed)|13.33|20.00|0.010|100|200|" in text

    points = read_sweep(sweep / "sweep.json")
    assert [(p.block_size, p.hop_size, p.look_ahead) for p in points] == [
        (b, *PAPER_GEOMETRY[b]) for b in (10, 20, 40)]
    for p in points:
        record = latency_record(p.block_size)
        assert p.algorithmic_latency_ms == record["algorithmic_latency_ms"]
        assert (p.rtf, p.emission_delay_p50_ms, p.emission_delay_p90_ms) == (
            record["rtf"], record["emission_delay_p50_ms"], record["emission_delay_p90_ms"])
        for head in ("streaming", "rnnt"):
            for dset in ("dev", "test"):
                scored = json.loads((sweep / geometry_name(sweep_geometry(p.block_size))
                                     / head / dset / "scores.json").read_text())
                assert p.scores["char"][head][dset]["err_rate"] == scored["err_rate"]
    assert points[0].scores["char"]["streaming"]["test"] == {"err_rate": rate(15), "failed": 1}
    image = matplotlib.image.imread(sweep / "sweep.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 400  # two panels


def test_report_errors_name_the_file(tmp_path):
    sweep = make_sweep(tmp_path, "x", SWEEP_ERRORS["sp_dyn"])

    def fails(*blocks: int) -> str:
        with pytest.raises(SystemExit) as err:
            sweep_report_main(sweep, blocks)
        return str(err.value.code)

    # A latency measured at another geometry than its folder's.
    latency = sweep / "block20_hop8_lookahead8" / "latency" / "latency.json"
    shutil.copy(sweep / "block10_hop4_lookahead4" / "latency" / "latency.json", latency)
    message = fails(10, 20)
    assert str(latency) in message and "measured at block/hop/look-ahead (10, 4, 4)" in message
    # A block size that was not swept.
    message = fails(10, 30)
    assert str(sweep / "block30_hop12_lookahead12" / "latency" / "latency.json") in message
    # A head that was not decoded at some geometry.
    missing = sweep / "block10_hop4_lookahead4" / "rnnt" / "dev" / "scores.json"
    missing.unlink()
    assert str(missing) in fails(10)
    assert "block sizes must be unique" in fails(10, 10)


@pytest.mark.parametrize("method", ["sp_ed", "mse_ed"])
def test_dynamic_block_config_trains_on_the_paper_grid(method, token_list, tmp_path):
    """The dynamic-block override merged onto a paper config (as --asr_config_overrides
    does) builds a paper-size model whose dynamic geometries are exactly the fixed-block
    grid of conf/paper/blocks/ and the sweep's geometries, and changes nothing else."""
    merged = tmp_path / f"joint_{method}_dynamic_blocks.yaml"
    paper_file = ROOT / "conf" / "paper" / f"joint_{method}.yaml"
    recipe_main(["merge_config", "--config", str(paper_file), "--output", str(merged),
                 str(DYNAMIC)])
    stats = tmp_path / "feats_stats.npz"
    np.savez(stats, count=np.array(100.0), sum=np.zeros(80), sum_square=np.full(80, 100.0))
    args = parse_args(merged, token_list, "--normalize_conf", f"stats_file={stats}")
    with torch.device("meta"):  # paper size: the modules without allocated weights
        model = DualModeASRTask.build_model(args)
    grid = []
    for path in sorted((ROOT / "conf" / "paper" / "blocks").glob("block*.yaml")):
        conf = load_mapping(path)["stream_encoder_conf"]
        grid.append((conf["block_size"], conf["hop_size"], conf["look_ahead"]))
    grid.sort()
    assert sorted(tuple(g) for g in model.stream_encoder.dynamic_geometries) == grid
    assert [tuple(sweep_geometry(b)) for b, _, _ in grid] == grid
    assert model.encoder_distill == method.split("_")[0]
    dynamic, paper = yaml.safe_load(merged.read_text()), yaml.safe_load(paper_file.read_text())
    for key in DYNAMIC_KEYS:
        del dynamic["stream_encoder_conf"][key]
    assert dynamic == paper


def test_recipes_link_the_dynamic_block_override():
    for corpus in ("csj", "librispeech_100"):
        link = ROOT / "egs2" / corpus / "asr1" / "conf" / "dynamic_blocks.yaml"
        assert link.is_symlink() and link.resolve() == DYNAMIC.resolve(), corpus
        assert not Path(os.readlink(link)).is_absolute(), corpus
        assert "--sweep_block_sizes" in (link.parents[1] / "run.sh").read_text(), corpus


@pytest.mark.parametrize("option, value, message", [
    ("--sweep_block_sizes", "10 x", "--sweep_block_sizes takes positive integers, got 'x'"),
    ("--sweep_block_sizes", "0", "--sweep_block_sizes takes positive integers, got '0'"),
    ("--sweep_hop_ratio", "1.5", "--sweep_hop_ratio must be a number in [0, 1], got '1.5'"),
])
def test_stage_script_rejects_bad_sweep_options(option, value, message, tmp_path):
    """Checked before any stage runs: exit status 2 and the option named."""
    recipe = make_recipe("demo_ja", tmp_path)
    result = run_recipe(recipe, ["--corpus_size", "tiny", option, value])
    assert result.returncode == 2, result.stdout[-2000:]
    assert message in result.stdout
    assert not (recipe / "data").exists()
