"""Integration: the demo_ja recipe, stages 1-13, on a tiny corpus with the debug model on
CPU (RESULTS.md checked against an independent CER), and stage 11 resuming after a kill."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict

import pytest
import torch
import yaml

from dualmode_recipe.config import load_mapping, merge_config
from recipe_sandbox import REPO, make_recipe, read_map, run_recipe

HEADS = ("streaming", "rnnt", "ctc", "attention", "maskctc", "joint")
COMMON = ["--corpus_size", "tiny", "--nj", "1",
          "--asr_config", str(REPO / "conf" / "debug" / "joint_sp_ed.yaml"),
          "--decode_heads", " ".join(HEADS), "--latency_max_utts", "2"]
E2E = COMMON + ["--tag", "e2e", "--asr_args", "--max_epoch 1"]


TIMESPAN_PART = re.compile(r"([\d.]+) (second|minute|hour|day)s?\b")
TIMESPAN_SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def parse_timespan(text: str) -> float:
    """Seconds of a timespan as ESPnet's trainer logs it (humanfriendly's
    ``format_timespan``: "1 minute and 34.01 seconds"): the reference of the learning
    curve's minutes, read from the training log rather than the reporter. Not
    ``humanfriendly.parse_timespan``: it takes one unit only and fails on that example."""
    parts = TIMESPAN_PART.findall(text)
    if not parts:
        raise ValueError(f"not a timespan: {text!r}")
    return sum(float(n) * TIMESPAN_SECONDS[unit] for n, unit in parts)


@pytest.mark.parametrize("text, seconds", [
    ("8.46 seconds", 8.46), ("1 minute and 34.01 seconds", 94.01),
    ("2 hours, 1 minute and 1 second", 7261.0), ("1 day", 86400.0)])
def test_timespans_as_the_trainer_logs_them(text, seconds):
    import humanfriendly

    assert parse_timespan(text) == pytest.approx(seconds)
    # the logger's own format, round trip (ESPnet's trainer calls format_timespan)
    assert parse_timespan(humanfriendly.format_timespan(seconds)) == pytest.approx(seconds, abs=0.01)
    with pytest.raises(ValueError, match="not a timespan"):
        parse_timespan("soon")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo recipe after stages 1-13 (tiny corpus: 24/4/4 utterances)."""
    recipe = make_recipe("demo_ja", tmp_path_factory.mktemp("demo"))
    result = run_recipe(recipe, E2E, timeout=1800)
    assert result.returncode == 0, result.stdout[-6000:]
    return recipe, result.stdout


def edit_distance(ref: str, hyp: str) -> int:
    """Levenshtein distance between two character strings (plain DP)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def cer(ref: Dict[str, str], hyp: Dict[str, str]) -> float:
    """Character error rate in percent; a missing hypothesis counts as empty."""
    errors = sum(edit_distance(t.replace(" ", ""), hyp.get(u, "").replace(" ", ""))
                 for u, t in ref.items())
    return 100.0 * errors / sum(len(t.replace(" ", "")) for t in ref.values())


def test_stages_1_to_13_write_results(demo) -> None:
    recipe, stdout = demo
    exp = recipe / "exp" / "asr_e2e"
    results = (exp / "RESULTS.md").read_text()
    assert results in stdout  # printed at the end
    ref = read_map(recipe / "dump" / "raw" / "test" / "text")
    assert len(ref) == 4
    decode = exp / "decode_asr_asr_model_valid.loss.ave"
    rows = dict(re.findall(r"^\|(\w+)\|([^|]+)\|$", results, flags=re.M))
    assert list(rows) == list(HEADS)
    for head in HEADS:
        hyp = read_map(decode / head / "test" / "text")
        failed = read_map(decode / head / "test" / "failed")
        assert set(hyp) | set(failed) == set(ref), head
        value = float(rows[head].split()[0])
        assert value == pytest.approx(cer(ref, {u: h for u, h in hyp.items()
                                                if u not in failed}), abs=0.051), head
    latency = json.loads((decode / "latency" / "latency.json").read_text())
    assert (f"RTF {latency['rtf']:.3f}, algorithmic latency "
            f"{latency['algorithmic_latency_ms']:.0f} ms") in results
    for log in ("logs/stage1.log", "logs/stage5.log", "asr_stats_raw_char/logs/stage10.log",
                "asr_e2e/logs/stage11.log", "asr_e2e/logs/stage12.log",
                "asr_e2e/logs/stage13.log"):
        assert (recipe / "exp" / log).is_file(), log
    assert (exp / "run.sh").is_file()
    # the non-speech set (10 s of silence and of noise) went through every head; the tiny
    # model is too small to learn silence, so the demo's run.sh only reports it here
    table = re.search(r"^\|head\|noise_10s\|silence_10s\|\n\|---\|---\|---\|\n((?:\|.*\n?)+)",
                      results, flags=re.M)
    assert table and [r.split("|")[1] for r in table.group(1).splitlines()] == list(HEADS)
    for head in HEADS:
        hyp = read_map(decode / head / "non_speech" / "text")
        assert set(hyp) == {"noise_10s", "silence_10s"}
        assert f"|{head}|{hyp['noise_10s'] or 'empty'}|{hyp['silence_10s'] or 'empty'}|" in results
    # latency against the corpus's own synthesis timing
    assert "Latency@50" in results and latency["latency_at50_ms"] == latency["latency_at50_ms"]
    # the joint head's weights were tuned on dev, and the joint decoding used them
    tuned = yaml.safe_load((decode / "joint_tuning" / "joint_decode.yaml").read_text())
    assert tuned["joint_nbest_head"] == "rnnt+attention" and tuned["joint_weights"]
    assert "dev error rate" in (decode / "joint_tuning" / "tuning.md").read_text()
    joint_log = (decode / "joint" / "test" / "logdir" / "decode.1.log").read_text()
    assert "joint_tuning/joint_decode.yaml" in joint_log
    # the learning curve: the one epoch's validation CERs as the training log printed them
    train, logged = next(m for log in sorted((exp / "logs").glob("*.log"))
                         for m in re.findall(r"1epoch results: \[train\](.*)\[valid\](.*)",
                                             log.read_text()))
    curve = (exp / "learning_curve.md").read_text()
    assert curve in results and (exp / "learning_curve.png").is_file()
    header, _, row = re.search(r"^(\|epoch\|minutes\|.*)\n(.*)\n(\|1\|.*)$", curve,
                               flags=re.M).groups()
    cells = dict(zip(header.strip("|").split("|"), row.strip("|").split("|")))
    for key, label in (("cer_onl", "streaming RNN-T"), ("cer_ctc", "full-context CTC"),
                       ("cer_att", "full-context attention")):
        value = float(re.search(rf"\b{key}=([\d.e-]+)", logged).group(1))
        assert float(cells[label]) == pytest.approx(100 * value, abs=0.051), key
    seconds = sum(parse_timespan(re.search(r"\btime=([^,]+)", part).group(1))
                  for part in (train, logged))
    assert float(cells["minutes"]) == pytest.approx(seconds / 60, abs=0.051)


def test_finished_decoding_is_skipped_and_a_head_config_redecodes_that_head(
        demo, tmp_path: Path) -> None:
    recipe, _ = demo
    exp = recipe / "exp" / "asr_e2e"
    decode = exp / "decode_asr_asr_model_valid.loss.ave"
    results = exp / "RESULTS.md"
    before = results.stat().st_mtime_ns
    again = run_recipe(recipe, E2E + ["--stage", "11"])
    assert again.returncode == 0, again.stdout[-3000:]
    # stage 11; in stage 12 the joint tuning, six heads on the test and the non-speech set,
    # the latency; stage 13
    assert again.stdout.count("skipped: already done with the same arguments") == 1 + 1 + 12 + 1 + 1
    assert results.stat().st_mtime_ns == before

    ctc_config = tmp_path / "decode_ctc.yaml"
    ctc_config.write_text("beam_size: 1\n")
    texts = {h: (decode / h / "test" / "text").stat().st_mtime_ns for h in HEADS}
    per_head = run_recipe(recipe, E2E + ["--stage", "12", "--inference_head_configs",
                                         f"ctc={ctc_config}"])
    assert per_head.returncode == 0, per_head.stdout[-3000:]
    for head in HEADS:
        redecoded = (decode / head / "test" / "text").stat().st_mtime_ns != texts[head]
        assert redecoded == (head == "ctc"), head
    assert f"--config {ctc_config}" in (decode / "ctc" / "test" / "logdir" /
                                        "decode.1.log").read_text()
    assert results.stat().st_mtime_ns > before  # stage 13 followed


def test_stage11_resumes_after_a_kill(demo) -> None:
    recipe, _ = demo
    exp = recipe / "exp" / "asr_resume"
    args = ["./run.sh", *COMMON, "--tag", "resume", "--stage", "11", "--stop_stage", "11",
            "--asr_args", "--max_epoch 3 --num_iters_per_epoch 2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(args, cwd=recipe, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (exp / "1epoch.pth").exists():
            assert first.poll() is None, (exp / "logs" / "stage11.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the script and the trainer it started
        first.wait()
    assert not (exp / ".done_stage11").exists()
    killed_at = torch.load(exp / "checkpoint.pth", map_location="cpu",
                           weights_only=False)["reporter"]["epoch"]
    assert 1 <= killed_at < 3

    second = run_recipe(recipe, args[1:])
    assert second.returncode == 0, second.stdout[-3000:]
    log = (exp / "logs" / "stage11.log").read_text()
    last_run = log[log.rindex("===== "):]
    assert "--resume true" in last_run
    assert "The training was resumed using" in last_run
    final = torch.load(exp / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert final["reporter"]["epoch"] == 3
    assert (exp / ".done_stage11").is_file()


def test_recipe_configs_resolve_and_the_demo_config_builds(demo, tmp_path: Path) -> None:
    """Every recipe config link resolves; the demo's default config passes ESPnet's dry
    run (model built with the statistics and token list the recipe made)."""
    for corpus in ("csj", "librispeech_100"):
        confs = sorted((REPO / "egs2" / corpus / "asr1" / "conf").glob("train_*.yaml"))
        paper = {f"train_{p.name}" for p in (REPO / "conf" / "paper").glob("*.yaml")}
        assert paper <= {c.name for c in confs}, corpus  # every paper experiment is there
        assert all(c.is_symlink() and c.resolve().is_file() for c in confs), corpus
        assert not any(os.path.isabs(os.readlink(c)) for c in confs)  # relative links
    recipe, _ = demo
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m",
         "espnet2_dualmode.bin.dualmode_asr_train", "--dry_run", "true",
         "--iterator_type", "none", "--output_dir", str(tmp_path / "dry"),
         "--config", str(recipe / "conf" / "train_joint_sp_ed_small.yaml"),
         "--token_list", str(recipe / "data" / "token_list" / "char" / "tokens.txt"),
         "--normalize_conf",
         f"stats_file={recipe / 'exp' / 'asr_stats_raw_char' / 'train' / 'feats_stats.npz'}"],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "dry" / "config.yaml").is_file()


def test_comparison_of_two_recipe_runs(demo, tmp_path: Path) -> None:
    """A second run (mse-ED instead of sp-ED, with a block-size override merged onto its
    config) and the comparison command over both runs: Table 1/2 layouts whose numbers are
    the runs' own CERs, and the Figure 2 PNG."""
    import matplotlib.image

    recipe, _ = demo
    base = REPO / "conf" / "debug" / "joint_mse_ed.yaml"
    override = tmp_path / "block12.yaml"
    override.write_text("stream_encoder_conf:\n  block_size: 12\n")
    second_args = COMMON + [
        "--asr_config", str(base), "--asr_config_overrides", str(override),
        "--asr_args", "--max_epoch 1", "--decode_heads", "streaming rnnt", "--stage", "10",
        "--measure_latency", "false"]
    second = run_recipe(recipe, second_args, timeout=1800)
    assert second.returncode == 0, second.stdout[-4000:]
    # The default tag names the override; training read the merged config.
    exp_mse = recipe / "exp" / "asr_joint_mse_ed_block12_raw_char_max_epoch1"
    merged = load_mapping(exp_mse / "merged_asr_config.yaml")
    assert merged == merge_config(load_mapping(base), load_mapping(override))
    trained = yaml.safe_load((exp_mse / "config.yaml").read_text())["stream_encoder_conf"]
    assert trained["block_size"] == 12
    assert trained["hop_size"] == load_mapping(base)["stream_encoder_conf"]["hop_size"]
    # A re-run with the same override skips statistics and training.
    again = run_recipe(recipe, second_args + ["--stop_stage", "11"])
    assert again.returncode == 0, again.stdout[-3000:]
    assert again.stdout.count("skipped: already done with the same arguments") == 2
    ref = read_map(recipe / "dump" / "raw" / "test" / "text")
    out = tmp_path / "compare"
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "dualmode_recipe", "compare",
         "--exp_dirs", "exp/asr_e2e", str(exp_mse), "--names", "sp-run", "mse-run",
         "--test_sets", "test", "--unit", "char", "--output_dir", str(out),
         "--figure_x", "block_size", "--table2_block_size", "8"],
        cwd=recipe, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "comparison.md").read_text()
    assert "Table 1" in table and "Table 2" in table
    for exp, name in ((recipe / "exp" / "asr_e2e", "sp-run"), (exp_mse, "mse-run")):
        decode = exp / "decode_asr_asr_model_valid.loss.ave"
        for head, mode in (("streaming", "ST"), ("rnnt", "NST")):
            hyp = read_map(decode / head / "test" / "text")
            failed = read_map(decode / head / "test" / "failed")
            scored = json.loads((decode / head / "test" / "scores.json").read_text())["err_rate"]
            # sclite's weighted alignment never counts fewer errors than Levenshtein
            assert scored >= cer(ref, {u: h for u, h in hyp.items() if u not in failed}) - 1e-9
            row = re.search(rf"^\|{mode}\d\|{name}\|([0-9.]+)", table, flags=re.M)
            assert row, (mode, name, table)
            assert float(row.group(1)) == pytest.approx(scored, abs=0.006), (mode, name)
    image = matplotlib.image.imread(out / "figure_block_size.png")
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_block_size_sweep_of_the_trained_model(demo) -> None:
    """Stage 14 (Figure 2 from one model) on the trained tiny model at two geometries: the
    decoders ran at each, the table's cells are the per-geometry scores.json (which agree
    with an independent CER) and latency.json, the PNG is written, and a re-run skips every
    decoding, latency and scoring."""
    import matplotlib.image

    recipe, _ = demo
    decode = recipe / "exp" / "asr_e2e" / "decode_asr_asr_model_valid.loss.ave"
    sweep_args = E2E + ["--stage", "14", "--sweep_block_sizes", "12 4",
                        "--sweep_heads", "streaming rnnt"]
    result = run_recipe(recipe, sweep_args)
    assert result.returncode == 0, result.stdout[-6000:]
    table = (decode / "sweep" / "sweep.md").read_text()
    assert table in result.stdout
    rows = re.findall(r"^\|(\d+)\|(\d+)\|(\d+)\|([^|]+)\|([^|]+)\|([^|]+)\|([0-9.]+)\|", table,
                      flags=re.M)
    # hop = look-ahead = round(0.4 x block): 4 -> 2, 12 -> 5 (4.8); rows by block size.
    assert [r[:3] for r in rows] == [("4", "2", "2"), ("12", "5", "5")]
    ref = read_map(recipe / "dump" / "raw" / "test" / "text")
    for block, hop, look_ahead, algorithmic, streaming, rnnt, rtf in rows:
        geometry = f"--block_size {block} --hop_size {hop} --look_ahead {look_ahead}"
        folder = decode / "sweep" / f"block{block}_hop{hop}_lookahead{look_ahead}"
        latency = json.loads((folder / "latency" / "latency.json").read_text())
        assert (latency["block_size"], latency["hop_size"], latency["look_ahead"]) == (
            int(block), int(hop), int(look_ahead))
        # 10 ms feature shift, 4x subsampling: 40 ms per block / look-ahead frame.
        assert float(algorithmic) == pytest.approx((int(block) + int(look_ahead)) * 40.0)
        assert float(rtf) == pytest.approx(latency["rtf"], abs=0.0006)
        for head, cell in (("streaming", streaming), ("rnnt", rnnt)):
            assert geometry in (folder / head / "test" / "logdir" / "decode.1.log").read_text()
            hyp = read_map(folder / head / "test" / "text")
            failed = read_map(folder / head / "test" / "failed")
            assert set(hyp) | set(failed) == set(ref), head
            scored = json.loads((folder / head / "test" / "scores.json").read_text())["err_rate"]
            assert float(cell.split()[0]) == pytest.approx(scored, abs=0.006), (block, head)
            # sclite's weighted alignment never counts fewer errors than Levenshtein
            assert scored >= cer(ref, {u: h for u, h in hyp.items() if u not in failed}) - 1e-9
    image = matplotlib.image.imread(decode / "sweep" / "sweep.png")
    assert image.shape[0] > 100 and image.shape[1] > 100

    again = run_recipe(recipe, sweep_args)
    assert again.returncode == 0, again.stdout[-3000:]
    # per geometry: two heads, the latency and the scoring
    assert again.stdout.count("skipped: already done with the same arguments") == 8
