"""The Figure 2 config grid and the experiment comparison (Tables 1-2, Figure 2 layouts).

The grid's configs are merged by ``python -m dualmode_recipe merge_config``, as the stage
script's ``--asr_config_overrides`` does. The scored experiments are built as stages 11-13
leave them: ``config.yaml`` dumped from the task's parsed arguments as ESPnet's trainer
does, and ``<decode dir>/<head>/<set>/scores.json`` written by
``python -m dualmode_recipe score --json``
(the stage-13 command) from hand-made hypotheses with a known number of errors. Expected
numbers are computed here from those error counts.
"""

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

from dualmode_recipe.__main__ import main as recipe_main
from dualmode_recipe.config import load_mapping, merge_config
from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask
from test_learning_curve import reporter_state

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = ROOT / "conf" / "paper" / "blocks"
SIZES = (10, 20, 30, 40, 50, 60)
GRID = [(method, block) for method in ("sp_ed", "mse_ed") for block in SIZES]
TOKENS = ["<blank>", "<unk>"] + list("abcdefgh") + ["<sos/eos>"]
GEOMETRY = ("block_size", "hop_size", "look_ahead")

# Two test sets of 15 reference characters each (no spaces: one token per character).
REFS = {"dev": {"u1": "あいうえおかきくけこ", "u2": "さしすせそ"},
        "test": {"u1": "たちつてと", "u2": "なにぬねのはひふへほ"}}
N_REF = 15
INFERENCE_TAG = "decode_asr_asr_model_valid.loss.ave"


@pytest.fixture(scope="module")
def token_list(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokens.txt"
    path.write_text("\n".join(TOKENS) + "\n")
    return path


def parse_args(config: Path, token_list: Path, *extra: str):
    return DualModeASRTask.get_parser().parse_args(
        ["--config", str(config), "--token_list", str(token_list), *extra])


def compare_main(argv: list) -> None:
    recipe_main(["compare", *argv])


def score_main(argv: list) -> None:
    recipe_main(["score", *argv])


def merged_grid_config(method: str, block: int, out_dir: Path) -> Path:
    """The paper config of ``method`` with the block override merged on, as the stage
    script's ``--asr_config_overrides conf/blocks/block<N>.yaml`` writes it."""
    out = out_dir / f"joint_{method}_block{block}.yaml"
    recipe_main(["merge_config", "--config", str(ROOT / "conf" / "paper" / f"joint_{method}.yaml"),
                 "--output", str(out), str(BLOCKS / f"block{block}.yaml")])
    return out


# ---------------------------------------------------------------------------------------
# The Figure 2 grid
# ---------------------------------------------------------------------------------------
def test_grid_is_complete_and_linked_from_the_librispeech_recipe():
    """One override per block size, holding only the geometry (hop = look-ahead = 0.4 x
    block); the LibriSpeech recipe links the folder with a relative link."""
    assert {p.name for p in BLOCKS.glob("*.yaml")} == {f"block{n}.yaml" for n in SIZES}
    for block in SIZES:
        hop = round(0.4 * block)
        assert load_mapping(BLOCKS / f"block{block}.yaml") == {
            "stream_encoder_conf": {"block_size": block, "hop_size": hop, "look_ahead": hop}}
    link = ROOT / "egs2" / "librispeech_100" / "asr1" / "conf" / "blocks"
    assert link.is_symlink() and link.resolve() == BLOCKS.resolve()
    assert not os.path.isabs(os.readlink(link))


@pytest.mark.parametrize("key", GRID, ids=lambda k: f"{k[0]}_block{k[1]}")
def test_grid_config_builds_with_its_geometry(key, token_list, tmp_path):
    method, block = key
    path = merged_grid_config(method, block, tmp_path)
    stats = tmp_path / "feats_stats.npz"
    np.savez(stats, count=np.array(100.0), sum=np.zeros(80), sum_square=np.full(80, 100.0))
    args = parse_args(path, token_list, "--normalize_conf", f"stats_file={stats}")
    # Paper size (60 M parameters): the meta device builds the same modules without
    # allocating or initialising their weights.
    with torch.device("meta"):
        model = DualModeASRTask.build_model(args)
    enc = model.stream_encoder
    hop = round(0.4 * block)
    assert (enc.block_size, enc.hop_size, enc.look_ahead) == (block, hop, hop)
    assert (len(enc.encoders), len(model.full_encoder.encoders)) == (12, 12)
    assert model.encoder_distill == method.split("_")[0]


@pytest.mark.parametrize("key", GRID, ids=lambda k: f"{k[0]}_block{k[1]}")
def test_grid_config_differs_from_the_paper_config_only_in_geometry(key, tmp_path):
    method, block = key
    grid = yaml.safe_load(merged_grid_config(method, block, tmp_path).read_text())
    paper = yaml.safe_load((ROOT / "conf" / "paper" / f"joint_{method}.yaml").read_text())
    assert {k: grid["stream_encoder_conf"][k] for k in GEOMETRY} == {
        "block_size": block, "hop_size": round(0.4 * block), "look_ahead": round(0.4 * block)}
    if block == 40:  # the paper's own geometry: the very same config
        assert grid == paper
    for conf in (grid, paper):
        for k in GEOMETRY:
            del conf["stream_encoder_conf"][k]
    assert grid == paper


def test_merge_config_merges_nested_keys_one_by_one(tmp_path):
    base = {"a": 1, "conf": {"x": 1, "y": [1, 2], "deep": {"p": 1, "q": 2}}, "gone": {"k": 1}}
    override = {"conf": {"y": [3], "deep": {"q": 5}, "new": "n"}, "b": 2, "gone": None}
    assert merge_config(base, override) == {
        "a": 1, "conf": {"x": 1, "y": [3], "deep": {"p": 1, "q": 5}, "new": "n"},
        "gone": None, "b": 2}
    assert base["conf"]["deep"] == {"p": 1, "q": 2}  # the base is not modified
    with pytest.raises(ValueError, match=r"over.yaml: conf: x is a dict here but a int"):
        merge_config(base, {"conf": {"x": {"z": 1}}}, "over.yaml")
    # The command: overrides in order, a clash names the file, a header names the sources.
    paths = []
    for i, data in enumerate((base, {"conf": {"x": 2}}, {"conf": {"x": 3}, "a": 0})):
        paths.append(tmp_path / f"c{i}.yaml")
        paths[-1].write_text(yaml.safe_dump(data))
    out = tmp_path / "exp" / "merged.yaml"
    recipe_main(["merge_config", "--config", str(paths[0]), "--output", str(out),
                 *map(str, paths[1:])])
    assert yaml.safe_load(out.read_text())["conf"]["x"] == 3
    assert yaml.safe_load(out.read_text())["a"] == 0
    assert out.read_text().startswith(f"# Merged by `python -m dualmode_recipe merge_config`: "
                                      f"{paths[0]} + {paths[1]} + {paths[2]}\n")
    paths[1].write_text("conf: 5\n")
    with pytest.raises(SystemExit) as err:
        recipe_main(["merge_config", "--config", str(paths[0]), "--output", str(out),
                     str(paths[1])])
    assert f"{paths[1]}: conf is a int here but a dict" in str(err.value.code)


DUALMODE_GRID = ROOT / "conf" / "paper" / "dualmode"


@pytest.mark.parametrize("override, key, value", [("fastemit", "fastemit_lambda", 0.005),
                                                  ("no_inplace_kd", "inplace_kd_weight", 0.0)])
def test_dualmode_grid_overrides_change_one_key_and_are_linked(override, key, value, token_list,
                                                               tmp_path):
    """Each override of the Dual-mode grid, merged onto the paper's dualmode_shared.yaml as
    --asr_config_overrides does, builds the paper-size model with that one setting changed
    and nothing else; the CSJ, LibriSpeech-100 and demo recipes link it."""
    paper_file = ROOT / "conf" / "paper" / "dualmode_shared.yaml"
    merged = tmp_path / f"dualmode_shared_{override}.yaml"
    recipe_main(["merge_config", "--config", str(paper_file), "--output", str(merged),
                 str(DUALMODE_GRID / f"{override}.yaml")])
    stats = tmp_path / "feats_stats.npz"
    np.savez(stats, count=np.array(100.0), sum=np.zeros(80), sum_square=np.full(80, 100.0))
    args = parse_args(merged, token_list, "--normalize_conf", f"stats_file={stats}")
    with torch.device("meta"):  # paper size: the modules without allocated weights
        model = DualModeASRTask.build_model(args)
    assert getattr(model, key) == value
    changed, paper = yaml.safe_load(merged.read_text()), yaml.safe_load(paper_file.read_text())
    assert changed["model_conf"].pop(key) == value and paper["model_conf"].pop(key, None) != value
    assert changed == paper
    for corpus in ("csj", "librispeech_100", "demo_ja"):
        link = ROOT / "egs2" / corpus / "asr1" / "conf" / f"{override}.yaml"
        assert link.is_symlink() and not os.path.isabs(os.readlink(link)), corpus
        assert link.resolve() == (DUALMODE_GRID / f"{override}.yaml").resolve(), corpus


# ---------------------------------------------------------------------------------------
# Scored experiments, as stages 11-13 leave them
# ---------------------------------------------------------------------------------------
def corrupt(ref: dict, n_sub: int, drop: tuple = ()) -> dict:
    """``ref`` with its first ``n_sub`` characters (in utterance order) replaced by ``ん``
    (one substitution each) and the utterances ``drop`` left out (failed decodings)."""
    hyp = {}
    for utt, text in sorted(ref.items()):
        k = min(n_sub, len(text))
        hyp[utt] = "ん" * k + text[k:]
        n_sub -= k
    assert n_sub == 0
    return {u: t for u, t in hyp.items() if u not in drop}


def write_text(path: Path, texts: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{u} {t}\n" for u, t in sorted(texts.items())), encoding="utf-8")


def make_experiment(root: Path, tag: str, debug_config: str, block, token_list: Path,
                    errors: dict, drop: dict = None, *options: str) -> Path:
    """``root/exp/asr_<tag>`` with config.yaml (the debug config, with ``block`` as the
    streaming block size unless None, and training ``options``) and stage-13 scores of
    ``errors``: ``{head: {set: substitutions}}``; ``drop``: ``{(head, set): utterances not
    decoded}``."""
    exp = root / "exp" / f"asr_{tag}"
    (exp / "logs").mkdir(parents=True)
    block_opts = [] if block is None else ["--stream_encoder_conf", f"block_size={block}"]
    args = parse_args(ROOT / "conf" / "debug" / f"{debug_config}.yaml", token_list, *block_opts,
                      *options)
    with open(exp / "config.yaml", "w", encoding="utf-8") as f:
        yaml_no_alias_safe_dump(vars(args), f, indent=4, sort_keys=False)
    for head, per_set in errors.items():
        for dset, n_sub in per_set.items():
            score_hypotheses(root, exp / INFERENCE_TAG / head / dset, dset, n_sub,
                             (drop or {}).get((head, dset), ()))
    return exp


def score_hypotheses(root: Path, out: Path, dset: str, n_sub: int, drop: tuple = ()) -> None:
    """``out/text`` with ``n_sub`` substitutions against ``REFS[dset]`` (``drop``: utterances
    not decoded) and ``out/scores.json`` from the stage-13 scoring command; the reference is
    ``root/dump/raw/<dset>/text``."""
    ref = root / "dump" / "raw" / dset / "text"
    if not ref.is_file():
        write_text(ref, REFS[dset])
    write_text(out / "text", corrupt(REFS[dset], n_sub, drop))
    with open(out / "scores.json", "w", encoding="utf-8") as f, contextlib.redirect_stdout(f):
        score_main(["--ref_text", str(ref), "--hyp_text", str(out / "text"),
                    "--name", dset, "--unit", "char", "--output_dir", str(out), "--json"])


# Substitutions per experiment, head and set (u2 of "test" is 10 characters long).
ERRORS = {
    "mse8": ("joint_mse_ed", 8, {"streaming": {"dev": 3, "test": 4},
                                 "rnnt": {"dev": 2, "test": 3}}),
    "sp8": ("joint_sp_ed", 8, {"streaming": {"dev": 2, "test": 3},
                               "rnnt": {"dev": 1, "test": 2}}),
    "mse12": ("joint_mse_ed", 12, {"streaming": {"dev": 4, "test": 5},
                                   "rnnt": {"dev": 2, "test": 2}}),
    "sp12": ("joint_sp_ed", 12, {"streaming": {"dev": 3, "test": 3},
                                 "rnnt": {"dev": 1, "test": 0}}),
}


@pytest.fixture(scope="module")
def grid_exps(tmp_path_factory, token_list):
    root = tmp_path_factory.mktemp("grid")
    return {name: make_experiment(root, name, conf, block, token_list, errors)
            for name, (conf, block, errors) in ERRORS.items()}


def rate(n_err: int) -> float:
    return n_err / N_REF * 100


def row(row_id: str, label: str, errs: dict, base: dict = None) -> str:
    """A table row from error counts per set; base: the baseline's counts (None: baseline)."""
    cells = []
    for s in ("dev", "test"):
        rel = "" if base is None else f"{(rate(base[s]) - rate(errs[s])) / rate(base[s]) * 100:.2f}"
        cells += [f"{rate(errs[s]):.2f}", rel]
    return f"|{row_id}|{label}|" + "|".join(cells) + "|"


def section(text: str, heading: str) -> str:
    """The lines of ``text`` from ``heading`` to the next heading."""
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def table_rows(table: str, model_cells: bool = False) -> list:
    """The ST/NST rows of a table: their score cells, or (``model_cells``) a tuple per row of
    its id, label and parameters, minutes per epoch, Latency@50/@90 and token delay cells."""
    rows = [ln for ln in table.splitlines() if re.match(r"\|N?ST\d", ln)]
    if model_cells:
        return [tuple(ln.split("|")[1:3] + ln.split("|")[-5:-1]) for ln in rows]
    return ["|".join(ln.split("|")[:-5]) + "|" for ln in rows]


def test_tables_and_figure_from_scored_experiments(grid_exps, tmp_path, capsys):
    import matplotlib.image

    order = ["mse8", "sp8", "mse12", "sp12"]
    compare_main(["--exp_dirs", *(str(grid_exps[n]) for n in order),
                  "--test_sets", "dev", "test", "--unit", "char",
                  "--output_dir", str(tmp_path / "cmp"), "--table2_block_size", "8",
                  "--figure_x", "block_size"])
    text = (tmp_path / "cmp" / "comparison.md").read_text(encoding="utf-8")
    assert text in capsys.readouterr().out
    errs = {n: ERRORS[n][2] for n in order}

    # Table 1 layout: default names (folder without asr_), baseline = first row per mode.
    table1 = section(text, "## Table 1 layout")
    expected = [row("ST1", "mse8", errs["mse8"]["streaming"])]
    expected += [row(f"ST{i}", n, errs[n]["streaming"], errs["mse8"]["streaming"])
                 for i, n in enumerate(order[1:], 2)]
    expected += [row("NST1", "mse8", errs["mse8"]["rnnt"])]
    expected += [row(f"NST{i}", n, errs[n]["rnnt"], errs["mse8"]["rnnt"])
                 for i, n in enumerate(order[1:], 2)]
    assert table_rows(table1) == expected
    assert "|row|experiment|dev abs.|dev rel.(%)|test abs.|test rel.(%)|" in table1
    assert "streaming rows against ST1 (mse8); full context rows against NST1 (mse8)" in table1
    # A spot check written out: sp8 streaming on dev, 2 vs 3 errors in 15 -> 33.33 %.
    assert "|ST2|sp8|13.33|33.33|20.00|25.00|" in table1

    # Table 2 layout: block-8 experiments, rows labelled by method, mse-ED as baseline.
    table2 = section(text, "## Table 2 layout: distillation methods at block size 8")
    assert table_rows(table2) == [
        row("ST1", "mse-ED", errs["mse8"]["streaming"]),
        row("ST2", "sp-ED", errs["sp8"]["streaming"], errs["mse8"]["streaming"]),
        row("NST1", "mse-ED", errs["mse8"]["rnnt"]),
        row("NST2", "sp-ED", errs["sp8"]["rnnt"], errs["mse8"]["rnnt"])]

    png = tmp_path / "cmp" / "figure_block_size.png"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200
    assert "Figure: figure_block_size.png" in text


def test_figure_lines_hold_the_scored_points(grid_exps):
    """The plotted data: one line per method and mode, x = block size from config.yaml."""
    from dualmode_recipe.compare import figure_points, load_experiment

    exps = [load_experiment(grid_exps[n], n, ["dev", "test"], "char") for n in ERRORS]
    lines = figure_points(exps, "stream_encoder_conf.block_size")
    head = {"streaming": "streaming", "offline": "rnnt"}
    method = {"joint_mse_ed": "mse-ED", "joint_sp_ed": "sp-ED"}
    assert set(lines) == {(m, mode) for m in method.values() for mode in head}
    for (m, mode), points in lines.items():
        expected = sorted((block, rate(errors[head[mode]]["test"]))
                          for conf, block, errors in ERRORS.values() if method[conf] == m)
        assert [x for x, _ in points] == [x for x, _ in expected]
        assert [e.scores[mode, "test"].rate for _, e in points] == pytest.approx(
            [y for _, y in expected], abs=1e-9)


@pytest.fixture(scope="module")
def table1_exps(tmp_path_factory, token_list):
    """Paper Table 1 shape: a streaming-only, a full-context-only and a joint model; the
    joint model's streaming decoding of "test" lost u2 (10 reference characters)."""
    root = tmp_path_factory.mktemp("table1")
    return {
        "ctx": make_experiment(root, "ctx", "st1_context_t", 8, token_list,
                               {"streaming": {"dev": 3, "test": 2}}),
        "conf": make_experiment(root, "conf", "nst1_conformer_t", None, token_list,
                                {"rnnt": {"dev": 2, "test": 3}}),
        "joint": make_experiment(root, "joint", "joint_sp_ed", 8, token_list,
                                 {"streaming": {"dev": 2, "test": 1},
                                  "rnnt": {"dev": 1, "test": 1}},
                                 drop={("streaming", "test"): ("u2",)}),
    }


def test_table1_baselines_per_mode_and_failed_utterances(table1_exps, tmp_path):
    out = tmp_path / "cmp"
    compare_main(["--exp_dirs", *(str(table1_exps[n]) for n in ("ctx", "conf", "joint")),
                  "--names", "Context-T", "Conformer-T", "Joint", "--baseline", "Context-T",
                  "Conformer-T", "--test_sets", "dev", "test", "--output_dir", str(out)])
    text = (out / "comparison.md").read_text(encoding="utf-8")
    table1 = section(text, "## Table 1 layout")
    # Joint streaming on test: 1 substitution in u1 + 10 deletions of the lost u2.
    joint_test = rate(11)
    rel = (rate(2) - joint_test) / rate(2) * 100
    assert table_rows(table1) == [
        row("ST1", "Context-T", {"dev": 3, "test": 2}),
        f"|ST2|Joint|{rate(2):.2f}|{(rate(3) - rate(2)) / rate(3) * 100:.2f}|"
        f"{joint_test:.2f} (1 failed)|{rel:.2f}|",
        row("NST1", "Conformer-T", {"dev": 2, "test": 3}),
        row("NST2", "Joint", {"dev": 1, "test": 1}, {"dev": 2, "test": 3})]
    assert "No experiment with distillation has block size 40." in section(
        text, "## Table 2 layout")


def test_dual_mode_variant_next_to_the_cascade_with_params_and_latency(token_list, tmp_path):
    """A shared-weights Dual-mode model gives a streaming and a full-context row; every row
    has the model's parameters (the same count as the built model's), streaming rows the
    Latency@50/@90 and token delay of their latency.json (a dash for a delay that could not
    be measured: NaN); in-place KD joins Table 2."""
    root = tmp_path / "recipe"
    scored = {"streaming": {"dev": 2, "test": 3}, "rnnt": {"dev": 1, "test": 1}}
    exps = {
        "cascade": make_experiment(root, "cascade", "joint_sp_ed", 8, token_list, scored),
        "dual": make_experiment(root, "dual", "dualmode_shared", None, token_list, scored),
        "dual_nokd": make_experiment(root, "dual_nokd", "dualmode_shared", None, token_list,
                                     scored, None, "--model_conf", "inplace_kd_weight=0"),
    }
    timing = {"cascade": (570.4, 705.0, 256.0, 1196.0), "dual": (-12.0, 88.6, 101.0, 300.0),
              "dual_nokd": (-5.0, 40.0, float("nan"), float("nan"))}  # no CTC to align with
    for name, (at50, at90, p50, p90) in timing.items():
        record = {"rtf": 0.1, "algorithmic_latency_ms": 800.0, "emission_delay_p50_ms": p50,
                  "emission_delay_p90_ms": p90, "latency_at50_ms": at50, "latency_at90_ms": at90,
                  "first_token_delay_p50_ms": 1.0, "first_token_delay_p90_ms": 2.0,
                  "last_token_delay_p50_ms": 3.0, "last_token_delay_p90_ms": 4.0}
        folder = exps[name] / INFERENCE_TAG / "latency"
        folder.mkdir()
        (folder / "latency.json").write_text(json.dumps(record))
    from dualmode_recipe.compare import load_experiment

    params = {}
    for name, (conf, block) in {"cascade": ("joint_sp_ed", ["--stream_encoder_conf", "block_size=8"]),
                                "dual": ("dualmode_shared", []),
                                "dual_nokd": ("dualmode_shared", [])}.items():
        # the reference: the model built as training builds it, weights allocated
        model = DualModeASRTask.build_model(parse_args(ROOT / "conf" / "debug" / f"{conf}.yaml",
                                                       token_list, *block))
        count = sum(p.numel() for p in model.parameters())
        assert load_experiment(exps[name], name, ["dev", "test"], "char").params == count > 0
        params[name] = f"{count / 1e6:.2f}"

    # The trainer's checkpoint.pth with its reporter, filled through ESPnet's Reporter API:
    # cascade, epochs of 3, 5 and 4 min (median 4.0); dual, 90 s and 150 s (median 2.0);
    # none for dual_nokd (–). A training log that disagrees (what a resumed run leaves) is
    # not read.
    for name, train_seconds in {"cascade": (180.0, 300.0, 240.0), "dual": (90.0, 150.0)}.items():
        state = reporter_state([(t, 5.0, {"loss": 1.0}) for t in train_seconds])
        torch.save({"model": {}, "reporter": state}, exps[name] / "checkpoint.pth")
    (exps["dual"] / "logs").mkdir(exist_ok=True)
    (exps["dual"] / "logs" / "train.1.log").write_text(
        "INFO: 3epoch results: [train] loss=1.0, time=9 minutes, [valid] loss=1.0\n")

    out = tmp_path / "cmp"
    compare_main(["--exp_dirs", *(str(exps[n]) for n in exps), "--test_sets", "dev", "test",
                  "--output_dir", str(out), "--table2_block_size", "8"])
    text = (out / "comparison.md").read_text(encoding="utf-8")
    dash = "–"
    assert table_rows(section(text, "## Table 1 layout"), model_cells=True) == [
        ("ST1", "cascade", params["cascade"], "4.0", "570 / 705", "256 / 1196"),
        ("ST2", "dual", params["dual"], "2.0", "-12 / 89", "101 / 300"),
        ("ST3", "dual_nokd", params["dual_nokd"], dash, "-5 / 40", dash),
        ("NST1", "cascade", params["cascade"], "4.0", dash, dash),
        ("NST2", "dual", params["dual"], "2.0", dash, dash),
        ("NST3", "dual_nokd", params["dual_nokd"], dash, dash, dash)]
    table2 = section(text, "## Table 2 layout")
    assert [r[:2] for r in table_rows(table2, model_cells=True)] == [
        ("ST1", "sp-ED"), ("ST2", "in-place KD"), ("NST1", "sp-ED"), ("NST2", "in-place KD")]


def test_errors_name_the_experiment_and_file(table1_exps, grid_exps, tmp_path):
    def fails(*argv: str) -> str:
        with pytest.raises(SystemExit) as err:
            compare_main([*argv, "--output_dir", str(tmp_path / "cmp")])
        return str(err.value.code)

    # A test set the joint model was never scored on.
    broken = tmp_path / "asr_joint"
    shutil.copytree(table1_exps["joint"], broken)
    missing = broken / INFERENCE_TAG / "rnnt" / "test" / "scores.json"
    missing.unlink()
    message = fails("--exp_dirs", str(table1_exps["ctx"]), str(broken),
                    "--test_sets", "dev", "test")
    assert "experiment joint:" in message and str(missing) in message

    # Scored in characters only, compared in words.
    message = fails("--exp_dirs", str(grid_exps["sp8"]), "--test_sets", "dev", "--unit", "word")
    assert "experiment sp8:" in message and "no word score" in message
    assert str(grid_exps["sp8"] / INFERENCE_TAG / "streaming" / "dev" / "scores.json") in message

    # A baseline with no full-context row.
    message = fails("--exp_dirs", str(table1_exps["ctx"]), str(table1_exps["conf"]),
                    "--test_sets", "dev", "--baseline", "ctx")
    assert "no baseline for the full context rows" in message

    # Two decoding folders: the caller must choose.
    shutil.copytree(broken / INFERENCE_TAG, broken / "decode_other")
    message = fails("--exp_dirs", str(broken), "--test_sets", "dev")
    assert "several decoding folders" in message and "--inference_tag" in message

    # A training checkpoint cut short (a full disk): its epoch times cannot be read.
    cut = tmp_path / "asr_ctx"
    shutil.copytree(table1_exps["ctx"], cut)
    torch.save({"model": {}, "reporter": reporter_state([(1, 5.0, {"loss": 1.0})])},
               cut / "checkpoint.pth")
    whole = (cut / "checkpoint.pth").read_bytes()
    (cut / "checkpoint.pth").write_bytes(whole[: len(whole) // 2])
    message = fails("--exp_dirs", str(cut), "--test_sets", "dev")
    assert "experiment ctx:" in message and str(cut / "checkpoint.pth") in message
    assert "torch cannot load it" in message

    # Two experiments at one point of the figure.
    message = fails("--exp_dirs", str(grid_exps["sp8"]), str(table1_exps["joint"]),
                    "--test_sets", "dev", "--figure_x", "block_size")
    assert "sp8 and joint both have sp-ED with stream_encoder_conf.block_size = 8" in message


def test_help_works(capsys):
    with pytest.raises(SystemExit) as err:
        compare_main(["--help"])
    assert err.value.code == 0
    assert "--exp_dirs" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# One-model block-size sweeps, as stage 14 leaves them
# ---------------------------------------------------------------------------------------
# The paper's grid rule, written out: hop = look-ahead = 0.4 x block (conf/paper/blocks/).
PAPER_GEOMETRY = {10: (4, 4), 20: (8, 8), 40: (16, 16)}
FRAME_MS = 40.0  # an encoder frame: 4 feature frames of 10 ms


def latency_record(block: int) -> dict:
    """``latency.json`` as measure_latency writes it for a paper-grid block, with made-up
    timings: RTF block / 1000, emission delay P50 10 x block ms, P90 20 x block ms."""
    hop, look_ahead = PAPER_GEOMETRY[block]
    return {"model": "valid.loss.ave.pth", "device": "cpu", "block_size": block,
            "hop_size": hop, "look_ahead": look_ahead, "block_ms": block * FRAME_MS,
            "algorithmic_latency_ms": (block + look_ahead) * FRAME_MS, "rtf": block / 1000,
            "emission_delay_p50_ms": 10.0 * block, "emission_delay_p90_ms": 20.0 * block,
            "utterances": 2, "failed": 0, "tokens": 30}


def make_sweep(root: Path, tag: str, errors: dict, drop: dict = None) -> Path:
    """``root/exp/asr_<tag>/<decode dir>/sweep`` with a stage-14 geometry folder per block of
    ``errors`` (``{block: {head: {set: substitutions}}}``; ``drop``: ``{(block, head, set):
    utterances not decoded}``): scores from the stage-13 command, ``latency.json`` from
    :func:`latency_record`."""
    sweep = root / "exp" / f"asr_{tag}" / INFERENCE_TAG / "sweep"
    for block, per_head in errors.items():
        hop, look_ahead = PAPER_GEOMETRY[block]
        folder = sweep / f"block{block}_hop{hop}_lookahead{look_ahead}"
        for head, per_set in per_head.items():
            for dset, n_sub in per_set.items():
                score_hypotheses(root, folder / head / dset, dset, n_sub,
                                 (drop or {}).get((block, head, dset), ()))
        (folder / "latency").mkdir(parents=True)
        (folder / "latency" / "latency.json").write_text(json.dumps(latency_record(block)))
    return sweep


def sweep_report_main(sweep: Path, blocks, heads=("streaming", "rnnt"),
                      test_sets=("dev", "test")) -> None:
    recipe_main(["sweep_report", "--sweep_dir", str(sweep), "--block_sizes", *map(str, blocks),
                 "--heads", *heads, "--test_sets", *test_sets, "--units", "char",
                 "--title", "exp/asr_x", "--latency_set", "test"])


def sweep_row(lead: str, block: int, errs: dict, heads=("streaming", "rnnt"),
              failed: dict = None) -> str:
    """The expected table row of a paper-grid block from its error counts per head and set."""
    hop, look_ahead = PAPER_GEOMETRY[block]
    cells = [f"{rate(errs[h][s]):.2f}" + (f" ({failed[h, s]} failed)" if (failed or {}).get((h, s))
                                          else "")
             for h in heads for s in ("dev", "test")]
    return (f"|{lead}{block}|{hop}|{look_ahead}|{(block + look_ahead) * FRAME_MS:.0f}|"
            + "|".join(cells) + f"|{block / 1000:.3f}|{10 * block}|{20 * block}|")


# Substitutions per model, block, head and set: sp-ED improves with the block, mse-ED less.
SWEEP_ERRORS = {
    "sp_dyn": {10: {"streaming": {"dev": 5, "test": 6}, "rnnt": {"dev": 2, "test": 3}},
               20: {"streaming": {"dev": 3, "test": 4}, "rnnt": {"dev": 2, "test": 2}},
               40: {"streaming": {"dev": 2, "test": 2}, "rnnt": {"dev": 1, "test": 1}}},
    "mse_dyn": {10: {"streaming": {"dev": 6, "test": 7}, "rnnt": {"dev": 3, "test": 3}},
                20: {"streaming": {"dev": 5, "test": 5}, "rnnt": {"dev": 2, "test": 3}},
                40: {"streaming": {"dev": 4, "test": 3}, "rnnt": {"dev": 2, "test": 2}}},
}


@pytest.fixture(scope="module")
def sweep_exps(tmp_path_factory):
    """Two experiments, each with a reported stage-14 sweep over blocks 10, 20 and 40."""
    exps = {}
    for name, errors in SWEEP_ERRORS.items():
        root = tmp_path_factory.mktemp(name)
        sweep_report_main(make_sweep(root, name, errors), sorted(errors))
        exps[name] = root / "exp" / f"asr_{name}"
    return exps


def test_sweeps_side_by_side(sweep_exps, tmp_path, capsys):
    """compare --sweep: a row per model and geometry with the scored error rates, and the
    figure of error rate against algorithmic latency."""
    import matplotlib.image

    out = tmp_path / "cmp"
    compare_main(["--sweep", "--exp_dirs", str(sweep_exps["sp_dyn"]), str(sweep_exps["mse_dyn"]),
                  "--names", "sp-ED", "mse-ED", "--test_sets", "dev", "test",
                  "--output_dir", str(out)])
    text = (out / "sweeps.md").read_text(encoding="utf-8")
    assert text in capsys.readouterr().out
    assert ("|experiment|block|hop|look-ahead|algorithmic latency (ms)|streaming dev|"
            "streaming test|rnnt dev|rnnt test|RTF|emission delay P50 (ms)|P90 (ms)|") in text
    assert "(block + look-ahead) x encoder frame shift" in text
    expected = [sweep_row(f"{label}|", block, SWEEP_ERRORS[name][block])
                for name, label in (("sp_dyn", "sp-ED"), ("mse_dyn", "mse-ED"))
                for block in (10, 20, 40)]
    assert [ln for ln in text.splitlines() if re.match(r"\|(sp|mse)-ED\|", ln)] == expected
    # A spot check written out: sp-ED at block 20 (look-ahead 8: 28 x 40 ms), streaming on
    # test 4 errors in 15 characters.
    assert "|sp-ED|20|8|8|1120|20.00|26.67|13.33|13.33|0.020|200|400|" in text
    image = matplotlib.image.imread(out / "figure_sweeps.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 400  # two panels


def test_sweep_comparison_errors_name_the_experiment_and_file(sweep_exps, grid_exps, tmp_path):
    def fails(*argv: str) -> str:
        with pytest.raises(SystemExit) as err:
            compare_main(["--sweep", *argv, "--output_dir", str(tmp_path / "cmp")])
        return str(err.value.code)

    # An experiment that was never swept.
    message = fails("--exp_dirs", str(sweep_exps["sp_dyn"]), str(grid_exps["sp8"]),
                    "--test_sets", "dev")
    assert "experiment sp8:" in message and "stage 14" in message
    # A head the sweeps did not decode.
    message = fails("--exp_dirs", str(sweep_exps["sp_dyn"]), "--test_sets", "dev",
                    "--offline_head", "attention")
    assert "experiment sp_dyn:" in message and "no char score of head attention" in message
    assert str(sweep_exps["sp_dyn"] / INFERENCE_TAG / "sweep" / "sweep.json") in message
    # --sweep has no config-value figure.
    with pytest.raises(SystemExit):
        compare_main(["--sweep", "--exp_dirs", str(sweep_exps["sp_dyn"]), "--test_sets", "dev",
                      "--output_dir", str(tmp_path / "cmp"), "--figure_x", "block_size"])
