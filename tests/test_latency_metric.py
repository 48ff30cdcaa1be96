"""The Dual-mode ASR paper's utterance-level latency in measure_latency: Latency@50/@90
(last-token emission minus end of speech) and the first-token delay, against a
model-independent ``speech_segments`` file."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from dualmode_recipe.results import read_latency
from espnet2_dualmode.inference.latency import (
    SpeechSegmentLatency,
    UtteranceTiming,
    read_speech_segments,
)


def timing(duration: float, emissions: list) -> UtteranceTiming:
    return UtteranceTiming(duration=duration, compute=0.1, token_ids=list(range(len(emissions))),
                           emission_times=emissions, arrival_times=emissions)


def test_segment_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "speech_segments"
    path.write_text("utt1 0.25 1.5\n\nutt2 0 2\n")
    assert read_speech_segments(path) == {"utt1": (0.25, 1.5), "utt2": (0.0, 2.0)}


@pytest.mark.parametrize("line, message", [
    ("utt2 0.1", "expected '<utt_id> <speech_start_s> <speech_end_s>', got 2 fields"),
    ("utt2 0.1 0.5 x", "got 4 fields"),
    ("utt2 abc 0.5", "times must be numbers"),
    ("utt2 0.6 0.5", "need 0 <= speech_start_s <= speech_end_s"),
    ("utt2 -0.1 0.5", "need 0 <= speech_start_s <= speech_end_s"),
    ("utt2 0.1 nan", "need 0 <= speech_start_s <= speech_end_s"),
    ("utt1 0.1 0.5", "utterance utt1 appears twice"),
])
def test_bad_segment_lines_name_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "speech_segments"
    path.write_text(f"utt1 0.2 0.9\n{line}\n")
    with pytest.raises(ValueError, match=rf"speech_segments:2: .*{message}"):
        read_speech_segments(path)


def test_latency_percentiles_on_synthetic_timings(caplog: pytest.LogCaptureFixture) -> None:
    """Hand-made emission times; the expected figures from numpy's percentile directly."""
    segments = {f"u{i}": (0.1 * i, 1.0 + 0.2 * i) for i in range(6)}
    emissions = {
        "u0": [0.5, 0.9, 1.3],   # last token 300 ms after the end of speech
        "u1": [0.6, 1.1],        # -100 ms: the model emitted before the speaker finished
        "u2": [1.0, 1.6],
        "u3": [0.4, 0.8, 2.4],   # 800 ms
        "u4": [2.1],             # one token: both first and last
        "u5": [],                # empty hypothesis: counted, left out
    }
    metric = SpeechSegmentLatency(segments, "segs")
    with caplog.at_level(logging.WARNING):
        for key, times in emissions.items():
            metric.add(key, timing(3.0, times))
        metric.add("not_in_file", timing(3.0, [0.5]))
    last = [300, -100, 200, 800, 300]       # ms: last emission - (1.0 + 0.2 i)
    first = [500, 500, 800, 100, 1700]      # ms: first emission - 0.1 i
    got = metric.summary()
    assert got["latency_at50_ms"] == pytest.approx(np.percentile(last, 50))
    assert got["latency_at90_ms"] == pytest.approx(np.percentile(last, 90))
    assert got["first_token_delay_p50_ms"] == pytest.approx(np.percentile(first, 50))
    assert got["first_token_delay_p90_ms"] == pytest.approx(np.percentile(first, 90))
    assert (got["latency_utterances"], got["latency_no_segment"],
            got["latency_empty_hypothesis"]) == (5, 1, 1)
    assert "utterance not_in_file: no line in segs" in caplog.text
    assert "utterance u5: empty hypothesis" in caplog.text


def test_no_utterance_gives_nan_not_an_error() -> None:
    got = SpeechSegmentLatency({}, "segs").summary()
    assert np.isnan(got["latency_at50_ms"]) and got["latency_utterances"] == 0


def test_segment_after_the_audio_is_an_error() -> None:
    metric = SpeechSegmentLatency({"u": (0.0, 2.5)}, "data/test/speech_segments")
    with pytest.raises(ValueError, match=r"data/test/speech_segments: speech of u ends at 2.5 s"):
        metric.add("u", timing(2.0, [1.0]))


def run_latency(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "espnet2_dualmode.bin.measure_latency",
                           *map(str, args)], capture_output=True, text=True)


def measure_with_segments(model: dict, toy_corpus: dict, tmp_path: Path):
    """measure_latency on the toy corpus, every utterance but the first with a segment line
    (speech = the whole file); returns (latency.json, the run, durations, segment file)."""
    durations = {}
    for line in toy_corpus["wav.scp"].read_text().splitlines():
        key, path = line.split()
        durations[key] = soundfile.info(path).duration
    segments = tmp_path / "speech_segments"
    segments.write_text("".join(f"{k} 0 {durations[k]:.4f}\n" for k in sorted(durations)[1:]))
    out = tmp_path / "latency"
    r = run_latency("--asr_train_config", model["config"], "--asr_model_file",
                    model["model"], "--data_path_and_name_and_type",
                    f"{toy_corpus['wav.scp']},speech,sound", "--output_dir", out,
                    "--beam_size", "4", "--speech_segments", segments)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((out / "latency.json").read_text()), r, durations, segments


def test_measure_latency_with_speech_segments(toy_model, toy_corpus, tmp_path: Path) -> None:
    """End to end on the tiny debug model: every utterance but one has a segment line."""
    result, r, durations, segments = measure_with_segments(toy_model, toy_corpus, tmp_path)
    out = tmp_path / "latency"
    keys = sorted(durations)
    assert result["utterances"] == len(keys) and result["failed"] == 0
    assert (result["latency_utterances"], result["latency_no_segment"],
            result["latency_empty_hypothesis"]) == (len(keys) - 1, 1, 0)
    assert f"utterance {keys[0]}: no line in {segments}" in r.stderr
    # Speech starts at 0 s: the first token cannot come before the first chunk arrived.
    assert 0 < result["first_token_delay_p50_ms"] <= result["first_token_delay_p90_ms"]
    # Speech ends with the file: the last token comes after the start of the file and
    # within the algorithmic latency plus the whole compute time of the utterance.
    longest = 1000 * max(durations.values())
    assert -longest < result["latency_at50_ms"] <= result["latency_at90_ms"]
    assert result["latency_at90_ms"] < result["algorithmic_latency_ms"] + longest
    assert read_latency(out / "latency.json")["rtf"] == result["rtf"]  # old keys still read
    header = (out / "latency.md").read_text().splitlines()[0]
    assert "Latency@50 (ms)|Latency@90 (ms)|first token P50 (ms)|first token P90 (ms)" in header


def test_measure_latency_rejects_a_bad_segment_file(tmp_path: Path, toy_corpus) -> None:
    segments = tmp_path / "speech_segments"
    segments.write_text("utt 0.5\n")
    r = run_latency("--asr_train_config", "unused.yaml", "--asr_model_file", "unused.pth",
                    "--data_path_and_name_and_type", f"{toy_corpus['wav.scp']},speech,sound",
                    "--output_dir", tmp_path / "out", "--speech_segments", segments)
    assert r.returncode != 0
    assert f"{segments}:1: expected '<utt_id> <speech_start_s> <speech_end_s>'" in r.stderr
