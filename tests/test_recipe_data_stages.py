"""Stages 1-5 of the CSJ and LibriSpeech recipes on fake corpora, skipping of finished
stages, re-running on changed arguments, and the stage script's argument errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import sentencepiece
import soundfile

from fake_corpora import make_fake_csj, make_fake_librispeech
from recipe_sandbox import make_recipe, read_map, run_recipe

RATE = 16000
FACTORS = ("0.9", "1.0", "1.1")
SETS = ("train_dev", "train_nodev", "train_nodup", "eval1", "eval2", "eval3")


def csj_args(csj_root: Path, *extra: str) -> list:
    return ["--stop_stage", "5", "--nj", "2", "--local_data_opts",
            f"--csj_root {csj_root} --csj_version usb --subset A --train_dev_size 3 "
            "--dup_cap 2", *extra]


@pytest.fixture(scope="module")
def csj(tmp_path_factory):
    """The CSJ recipe run through stages 1-5 on the fake usb tree (subset A)."""
    root = tmp_path_factory.mktemp("csj")
    expected = make_fake_csj(root / "CSJ", version="usb", encoding="shift_jis")
    recipe = make_recipe("csj", root)
    result = run_recipe(recipe, csj_args(root / "CSJ"))
    assert result.returncode == 0, result.stdout[-5000:]
    return recipe, expected.dirs["A"], root / "CSJ", result.stdout


def snapshot(*dirs: Path) -> Dict[str, int]:
    """mtime (ns) of every file under ``dirs``."""
    return {str(p): p.stat().st_mtime_ns for d in dirs for p in sorted(d.rglob("*"))
            if p.is_file()}


def test_csj_stage1_writes_the_expected_data_dirs(csj) -> None:
    recipe, expected, _, _ = csj
    for name in SETS:
        for file, content in expected[name].items():
            assert (recipe / "data" / name / file).read_text() == content, (name, file)


def test_csj_stage2_speed_perturbs_train_nodup(csj) -> None:
    recipe, expected, _, _ = csj
    original = segments_of(expected["train_nodup"]["segments"])
    texts = kaldi(expected["train_nodup"]["text"])
    sp = recipe / "data" / "train_nodup_sp"
    assert read_map(sp / "text") == {f"sp{f}-{u}": t for f in FACTORS
                                      for u, t in texts.items()}
    segments = {u: v.split() for u, v in read_map(sp / "segments").items()}
    for utt, (rec, start, end) in original.items():
        assert segments[f"sp1.0-{utt}"] == [f"sp1.0-{rec}", start, end]
        for f in ("0.9", "1.1"):
            rec_f, start_f, end_f = segments[f"sp{f}-{utt}"]
            assert rec_f == f"sp{f}-{utt}" and float(start_f) == 0.0
            assert float(end_f) == pytest.approx((float(end) - float(start)) / float(f),
                                                 abs=1.5e-3)


def test_csj_stages_3_4_dump_every_set(csj) -> None:
    recipe, expected, csj_root, _ = csj
    raw = recipe / "dump" / "raw"
    train = segments_of(expected["train_nodup"]["segments"])
    lengths = {u: int(n) for u, n in read_map(raw / "org" / "train_nodup_sp" /
                                              "utt2num_samples").items()}
    assert set(lengths) == {f"sp{f}-{u}" for f in FACTORS for u in train}
    for utt, (_, start, end) in train.items():
        n = round(float(end) * RATE) - round(float(start) * RATE)
        assert lengths[f"sp1.0-{utt}"] == n
        for f in ("0.9", "1.1"):
            assert abs(lengths[f"sp{f}-{utt}"] - n / float(f)) <= 1
    # the 1.0 copy is the original audio, cut bit-exactly
    utt, (rec, start, end) = next(iter(train.items()))
    talk, _ = soundfile.read(kaldi(expected["train_nodup"]["wav.scp"])[rec],
                             dtype="int16")
    dumped, _ = soundfile.read(read_map(raw / "org" / "train_nodup_sp" / "wav.scp")
                               [f"sp1.0-{utt}"], dtype="int16")
    np.testing.assert_array_equal(dumped, talk[round(float(start) * RATE):
                                               round(float(end) * RATE)])
    # stage 4 keeps everything of this corpus (all between 0.1 s and 20 s)
    for name, dump in (("train_nodup_sp", raw / "train_nodup_sp"),
                       ("train_dev", raw / "train_dev"), ("eval1", raw / "eval1"),
                       ("eval2", raw / "eval2"), ("eval3", raw / "eval3")):
        src = name.replace("_sp", "")
        want = set(kaldi(expected[src]["text"]))
        if name.endswith("_sp"):
            want = {f"sp{f}-{u}" for f in FACTORS for u in want}
        assert set(read_map(dump / "wav.scp")) == want, name
        assert set(read_map(dump / "utt2num_samples")) == want, name


def test_csj_stage5_char_token_list(csj) -> None:
    recipe, expected, _, _ = csj
    tokens = (recipe / "data" / "token_list" / "char" / "tokens.txt").read_text().split("\n")
    assert tokens[-1] == ""  # newline-terminated
    tokens = tokens[:-1]
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    counts = Counter("".join(kaldi(expected["train_nodup"]["text"]).values()) * 3)
    assert set(tokens[2:-1]) == set(counts)
    freq = [counts[t] for t in tokens[2:-1]]
    assert freq == sorted(freq, reverse=True)  # ESPnet orders by frequency


def test_rerun_skips_finished_stages_and_a_changed_argument_reruns(csj) -> None:
    recipe, expected, csj_root, _ = csj
    before = snapshot(recipe / "data", recipe / "dump")
    again = run_recipe(recipe, csj_args(csj_root))
    assert again.returncode == 0, again.stdout[-3000:]
    # 1 (stage 1) + 1 (stage 2) + 5 sets (stage 3) + 2 sets (stage 4) + 1 (stage 5)
    assert again.stdout.count("skipped: already done with the same arguments") == 10
    assert "skipped: already done" in (recipe / "exp" / "logs" / "stage3.log").read_text()
    assert snapshot(recipe / "data", recipe / "dump") == before

    changed = run_recipe(recipe, csj_args(csj_root, "--max_wav_duration", "10"))
    assert changed.returncode == 0, changed.stdout[-3000:]
    after = snapshot(recipe / "data", recipe / "dump")
    untouched = [p for p in before if "/dump/raw/org/" in p or "/dump/raw/eval" in p
                 or "/data/train" in p or "/data/eval" in p]
    assert untouched and all(after[p] == before[p] for p in untouched)
    for rerun in ("dump/raw/train_dev/text", "dump/raw/train_nodup_sp/text",
                  "data/token_list/char/tokens.txt"):
        path = str(recipe / rerun)
        assert after[path] > before[path], rerun
    # U3 of train_dev lasts 10.5 s: removed now
    dev = set(read_map(recipe / "dump" / "raw" / "train_dev" / "text"))
    assert dev == set(kaldi(expected["train_dev"]["text"])) - \
        {"A01F0055_0006500_0017000"}
    assert "removed: 1 longer than 10.0 s" in changed.stdout
    assert changed.stdout.count("arguments or inputs changed") == 3  # 2 sets + tokens


def test_wrong_corpus_path_surfaces_the_preparation_error(tmp_path: Path) -> None:
    recipe = make_recipe("csj", tmp_path)
    result = run_recipe(recipe, csj_args(tmp_path / "nowhere"))
    assert result.returncode != 0
    assert f"no CSJ transcripts found for --csj_version usb: expected {tmp_path}/nowhere" \
        in result.stdout
    assert "last lines of exp/logs/stage1.log" in result.stdout
    unset = run_recipe(recipe, ["--stop_stage", "1", "--local_data_opts", "--subset A"],
                       env={"CSJDATATOP": ""})
    assert unset.returncode != 0 and "Set CSJDATATOP in db.sh" in unset.stdout


@pytest.mark.parametrize("args, message", [
    (["--valid_set", "dev", "--test_sets", "test", "--asr_config", "c.yaml"],
     "--train_set is required"),
    (["--train_set", "a", "--valid_set", "b", "--test_sets", "c"], "--asr_config is required"),
    (["--train_set", "a", "--frobnicate", "1"], "unknown option --frobnicate"),
    (["--train_set"], "option --train_set needs a value"),
    (["--train_set", "a", "--valid_set", "b", "--test_sets", "c", "--asr_config", "x",
      "--token_type", "word"], "--token_type must be char or bpe"),
    (["stray"], "unexpected argument 'stray'")])
def test_argument_errors_print_help_and_exit_2(tmp_path: Path, args, message) -> None:
    recipe = make_recipe("demo_ja", tmp_path)
    result = run_recipe(recipe, args, script="./dualmode_asr.sh")
    assert result.returncode == 2
    assert message in result.stdout and "Usage: ./dualmode_asr.sh --train_set" in result.stdout


def test_librispeech_stages_1_to_5(tmp_path: Path) -> None:
    expected = make_fake_librispeech(tmp_path / "corpus")
    recipe = make_recipe("librispeech_100", tmp_path)
    result = run_recipe(recipe, [
        "--stop_stage", "5", "--nj", "1", "--nbpe", "30",
        "--local_data_opts", f"--corpus_root {tmp_path / 'corpus'} --download false"])
    assert result.returncode == 0, result.stdout[-5000:]
    for name, files in expected.items():
        for file, content in files.items():
            assert (recipe / "data" / name / file).read_text() == content, (name, file)
    # flac dumps (linked: the corpus is already 16 kHz 16-bit FLAC), BPE token list
    train = read_map(recipe / "dump" / "raw" / "train_clean_100_sp" / "wav.scp")
    assert len(train) == 9 and all(p.endswith(".flac") for p in train.values())
    model = recipe / "data" / "token_list" / "bpe_unigram30" / "bpe.model"
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(model))
    assert pieces.get_piece_size() == 30
    tokens = (recipe / "data" / "token_list" / "bpe_unigram30" / "tokens.txt") \
        .read_text().splitlines()
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    vocabulary = {pieces.id_to_piece(i) for i in range(pieces.get_piece_size())}
    assert set(tokens[2:-1]) <= vocabulary
    used = {p for text in read_map(recipe / "dump" / "raw" / "train_clean_100_sp" /
                                   "text").values() for p in pieces.encode(text, out_type=str)}
    assert set(tokens[2:-1]) == used


def kaldi(content: str) -> Dict[str, str]:
    """``key value`` lines given as text, as a dict."""
    return dict(line.partition(" ")[::2] for line in content.splitlines())


def segments_of(content: str) -> Dict[str, Tuple[str, str, str]]:
    """A segments file given as text: utt -> (recording, start, end)."""
    return {u: tuple(v.split()) for u, v in kaldi(content).items()}
