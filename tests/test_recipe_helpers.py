"""The Python stage helpers of dualmode_asr.sh: speed perturbation, dumping, filtering,
job split/merge, sentencepiece training and the RESULTS.md table."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import sentencepiece
import soundfile

from dualmode_recipe.__main__ import main as recipe_main, parse_rate
from dualmode_recipe.bpe import train_bpe
from dualmode_recipe.filter import filter_dump_dir
from dualmode_recipe.format import format_data_dir
from dualmode_recipe.jobs import merge_decode_outputs, split_scp
from dualmode_recipe.kaldi_dir import (Utterance, read_data_dir, read_kaldi_map, write_data_dir,
                                       write_dump_dir)
from dualmode_recipe.results import results_markdown
from dualmode_recipe.speed_perturb import perturb_data_dir

RATE = 16000


def tone(freq: float, seconds: float, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = samples if samples.dtype == np.int16 else \
        np.clip(np.rint(samples * 32768), -32768, 32767).astype(np.int16)
    soundfile.write(str(path), data, rate, subtype="PCM_16")
    return path


def peak_frequency(x: np.ndarray, rate: int = RATE) -> float:
    """Frequency of the largest spectral peak, 0.1 Hz resolution (zero padding)."""
    n = 10 * rate
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size), n))
    return float(np.argmax(spectrum) * rate / n)


def read_int16(path: str) -> np.ndarray:
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == RATE
    return data


# ------------------------------------------------------------------ speed perturbation
@pytest.fixture
def tone_dir(tmp_path: Path) -> Path:
    """Two 1 s recordings of a 440 Hz tone: one utterance each, no segments."""
    utts = []
    scp = {}
    for i in range(2):
        rec = f"spk{i}-utt{i}"
        scp[rec] = str(write_wav(tmp_path / "wav" / f"{rec}.wav", tone(440.0, 1.0)))
        utts.append(Utterance(rec, f"spk{i}", f"text {i}", rec))
    return write_data_dir(tmp_path / "data", utts, scp)


@pytest.mark.parametrize("nj", [1, 2])
def test_speed_perturbation_scales_duration_and_pitch(tone_dir: Path, tmp_path: Path,
                                                      nj: int) -> None:
    out = perturb_data_dir(tone_dir, tmp_path / "sp", ["0.9", "1.0", "1.1"], nj=nj)
    data = read_data_dir(out)
    ids = [u.utt_id for u in data.utterances]
    assert ids == sorted(f"sp{f}-spk{i}-utt{i}" for f in ("0.9", "1.0", "1.1")
                         for i in range(2))
    for u in data.utterances:
        factor = u.utt_id.split("-")[0][2:]
        original = u.utt_id[len(f"sp{factor}-"):]
        assert u.speaker == f"sp{factor}-{original.split('-')[0]}"
        assert u.text == f"text {original[-1]}"
        samples, rate = soundfile.read(data.wav_scp[u.recording], dtype="float32")
        assert rate == RATE
        # y(t) = x(f t): the duration shrinks by f and the pitch rises by f.
        assert abs(samples.size - RATE / float(factor)) <= 1
        assert peak_frequency(samples) == pytest.approx(440.0 * float(factor), abs=0.5)
        if factor == "1.0":  # the original file, not a copy
            assert data.wav_scp[u.recording] == str(tmp_path / "wav" / f"{original}.wav")


def test_speed_perturbation_of_segments(tmp_path: Path) -> None:
    """A segment is cut before the speed change; the 1.0 copy keeps the segment."""
    rec = np.concatenate([np.zeros(RATE // 2, np.float32), tone(1000.0, 1.0),
                          np.zeros(RATE // 2, np.float32)])
    scp = {"talk": str(write_wav(tmp_path / "talk.wav", rec))}
    src = write_data_dir(tmp_path / "src",
                         [Utterance("talk_a", "talk", "あ", "talk", 0.5, 1.5)], scp)
    data = read_data_dir(perturb_data_dir(src, tmp_path / "sp", ["1.0", "1.25"]))
    by_id = {u.utt_id: u for u in data.utterances}
    same = by_id["sp1.0-talk_a"]
    assert (same.recording, same.start, same.end) == ("sp1.0-talk", 0.5, 1.5)
    assert data.wav_scp["sp1.0-talk"] == scp["talk"]
    fast = by_id["sp1.25-talk_a"]
    assert fast.start == 0.0 and fast.end == pytest.approx(0.8, abs=1e-3)
    samples, _ = soundfile.read(data.wav_scp[fast.recording], dtype="float32")
    assert abs(samples.size - 0.8 * RATE) <= 1
    assert peak_frequency(samples) == pytest.approx(1250.0, abs=0.5)
    # only the tone was cut out: no silence at either end
    assert np.abs(samples[:80]).max() > 0.1 and np.abs(samples[-80:]).max() > 0.1


@pytest.mark.parametrize("factors, message", [
    ([], "no speed factors"), (["0.9", "fast"], "not a number"), (["0"], "must be > 0"),
    (["1.0", "1"], "repeated")])
def test_speed_perturbation_rejects_bad_factors(tone_dir: Path, tmp_path: Path, factors,
                                                message: str) -> None:
    with pytest.raises(ValueError, match=message):
        perturb_data_dir(tone_dir, tmp_path / "sp", factors)


# ------------------------------------------------------------------ format (dump)
@pytest.fixture
def noise_talk(tmp_path: Path) -> np.ndarray:
    """A 3 s int16 noise recording (talk.wav)."""
    samples = np.random.default_rng(0).integers(-20000, 20000, 3 * RATE, dtype=np.int16)
    write_wav(tmp_path / "talk.wav", samples)
    return samples


@pytest.mark.parametrize("pipe", [False, True])
def test_format_cuts_segments_bit_exactly(tmp_path: Path, noise_talk: np.ndarray,
                                          pipe: bool, caplog) -> None:
    entry = f"cat {tmp_path / 'talk.wav'} |" if pipe else str(tmp_path / "talk.wav")
    segments = {"talk_a": (0.5, 1.25), "talk_b": (1.003, 2.0),
                "talk_c": (2.5, 3.2),    # ends 0.2 s after the recording: clamped
                "talk_d": (3.6, 4.0),    # starts after the end: skipped
                "talk_e": (2.0, 3.9)}    # ends 0.9 s after the end: skipped
    utts = [Utterance(u, "talk", "テキスト", "talk", s, e) for u, (s, e) in segments.items()]
    src = write_data_dir(tmp_path / "src", utts, {"talk": entry})
    with caplog.at_level(logging.WARNING):
        out = format_data_dir(src, tmp_path / "dump", RATE, "wav", nj=1)
    scp = read_kaldi_map(out / "wav.scp")
    assert sorted(scp) == ["talk_a", "talk_b", "talk_c"]
    lengths = {k: int(v) for k, v in read_kaldi_map(out / "utt2num_samples").items()}
    for utt in scp:
        start, end = segments[utt]
        expected = noise_talk[round(start * RATE):min(round(end * RATE), noise_talk.size)]
        got = read_int16(scp[utt])
        np.testing.assert_array_equal(got, expected)
        assert lengths[utt] == expected.size
        assert Path(scp[utt]).is_absolute() and f"/talk/{utt}.wav" in scp[utt]
    assert read_kaldi_map(out / "text") == {u: "テキスト" for u in scp}
    assert read_kaldi_map(out / "utt2spk") == {u: "talk" for u in scp}
    assert "skipping utterance talk_d" in caplog.text
    assert "skipping utterance talk_e" in caplog.text
    assert "skipped 2 utterance(s)" in caplog.text


def test_format_resamples_to_the_target_rate(tmp_path: Path) -> None:
    """8 kHz 1 kHz sine -> 16 kHz: compare with the analytic 16 kHz sine."""
    write_wav(tmp_path / "u.wav", tone(1000.0, 1.0, rate=8000), rate=8000)
    src = write_data_dir(tmp_path / "src", [Utterance("u", "s", "x", "u")],
                         {"u": str(tmp_path / "u.wav")})
    out = format_data_dir(src, tmp_path / "dump", RATE, "flac")
    path = read_kaldi_map(out / "wav.scp")["u"]
    assert path.endswith(".flac") and soundfile.info(path).format == "FLAC"
    got, rate = soundfile.read(path, dtype="float32")
    assert rate == RATE and got.size == RATE
    reference = tone(1000.0, 1.0)
    interior = slice(200, -200)  # the resampling filter's edges
    np.testing.assert_allclose(got[interior], reference[interior], atol=2e-3)


def test_format_links_files_that_need_no_conversion(tmp_path: Path,
                                                    noise_talk: np.ndarray) -> None:
    src = write_data_dir(tmp_path / "src", [Utterance("talk", "spk", "x", "talk")],
                         {"talk": str(tmp_path / "talk.wav")})
    out = format_data_dir(src, tmp_path / "dump", RATE, "wav")
    dumped = read_kaldi_map(out / "wav.scp")["talk"]
    assert os.path.samefile(dumped, tmp_path / "talk.wav") or \
        Path(dumped).read_bytes() == (tmp_path / "talk.wav").read_bytes()
    assert read_kaldi_map(out / "utt2num_samples") == {"talk": str(noise_talk.size)}


def test_format_rejects_stereo_and_missing_audio(tmp_path: Path) -> None:
    soundfile.write(str(tmp_path / "st.wav"), np.zeros((800, 2), np.int16), RATE)
    src = write_data_dir(tmp_path / "src", [Utterance("st", "s", "x", "st")],
                         {"st": str(tmp_path / "st.wav")})
    with pytest.raises(ValueError, match="wav.scp: st: .* has 2 channels"):
        format_data_dir(src, tmp_path / "dump", RATE, "wav")
    src = write_data_dir(tmp_path / "src2", [Utterance("gone", "s", "x", "gone")],
                         {"gone": str(tmp_path / "gone.wav")})
    with pytest.raises(FileNotFoundError, match="gone.wav does not exist"):
        format_data_dir(src, tmp_path / "dump2", RATE, "wav")


def test_read_data_dir_names_inconsistent_files(tmp_path: Path) -> None:
    d = write_data_dir(tmp_path / "d", [Utterance("a", "s", "x", "a"),
                                        Utterance("b", "s", "y", "b")],
                       {"a": "a.wav", "b": "b.wav"})
    (d / "utt2spk").write_text("a s\n")
    with pytest.raises(ValueError, match="text and utt2spk list different utterances: "
                                         "1 only in text \\(first: 'b'\\)"):
        read_data_dir(d)


# ------------------------------------------------------------------ filter
def test_filter_counts_every_removal(tmp_path: Path, caplog) -> None:
    durations = {"ok1": 1.0, "ok2": 20.0, "short": 0.05, "long": 20.5, "empty": 2.0,
                 "blank": 2.0}
    texts = {u: "あい" for u in durations}
    texts.update(empty="", blank="   ")
    utts = [Utterance(u, "s", texts[u], u) for u in durations]
    src = write_dump_dir(tmp_path / "org", utts, {u: f"/x/{u}.wav" for u in durations},
                         {u: int(d * RATE) for u, d in durations.items()})
    with caplog.at_level(logging.INFO):
        out, removed = filter_dump_dir(src, tmp_path / "kept", RATE, 0.1, 20.0)
    assert sorted(read_kaldi_map(out / "wav.scp")) == ["ok1", "ok2"]
    assert read_kaldi_map(out / "utt2num_samples") == {"ok1": "16000", "ok2": "320000"}
    assert dict(removed) == {"shorter than 0.1 s": 1, "longer than 20.0 s": 1,
                             "empty text": 2}
    assert "kept 2 of 6 utterances" in caplog.text
    with pytest.raises(ValueError, match="all 6 utterances removed"):
        filter_dump_dir(src, tmp_path / "none", RATE, 30.0, 40.0)
    # a corpus of silence/noise clips keeps its empty transcripts
    out, removed = filter_dump_dir(src, tmp_path / "with_empty", RATE, 0.1, 20.0,
                                   keep_empty_text=True)
    assert sorted(read_kaldi_map(out / "wav.scp")) == ["blank", "empty", "ok1", "ok2"]
    assert dict(removed) == {"shorter than 0.1 s": 1, "longer than 20.0 s": 1}


# ------------------------------------------------------------------ jobs
def test_split_is_contiguous_and_capped(tmp_path: Path) -> None:
    scp = tmp_path / "wav.scp"
    keys = [f"u{i:02d}" for i in range(7)]
    scp.write_text("".join(f"{k} /a/{k}.wav\n" for k in keys))
    parts = split_scp(scp, 3, tmp_path / "split")
    contents = [list(read_kaldi_map(p)) for p in parts]
    assert [len(c) for c in contents] == [2, 2, 3]
    assert sum(contents, []) == keys  # concatenation restores the sorted list
    assert len(split_scp(scp, 20, tmp_path / "split")) == 7
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == \
        [f"keys.{i}.scp" for i in range(1, 8)]  # the 3-way parts were replaced


def test_split_cli_prints_the_number_of_parts(tmp_path: Path, capsys) -> None:
    scp = tmp_path / "wav.scp"
    scp.write_text("a x\nb y\n")
    recipe_main(["split", "--scp", str(scp), "--num_splits", "4",
                      "--out_dir", str(tmp_path / "o"), "--name", "train"])
    assert capsys.readouterr().out.strip() == "2"
    assert (tmp_path / "o" / "train.2.scp").read_text() == "b y\n"


def _job(root: Path, name: str, texts: Dict[str, str], failed: Dict[str, str]) -> Path:
    job = root / name
    (job / "1best_recog").mkdir(parents=True)
    for f in ("text", "token", "score"):
        (job / "1best_recog" / f).write_text("".join(f"{k} {v}\n" for k, v in texts.items()))
    (job / "failed").write_text("".join(f"{k} {v}\n" for k, v in failed.items()))
    return job


def test_merge_checks_coverage(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("a 1\nb 2\nc 3\nd 4\n")
    jobs: List[Path] = [_job(tmp_path, "o2", {"d": "でで", "c": "しい"}, {}),
                        _job(tmp_path, "o1", {"a": "あ"}, {"b": "RuntimeError: too short"})]
    counts = merge_decode_outputs(jobs, keys, tmp_path / "out")
    assert counts == {"decoded": 3, "failed": 1}
    assert (tmp_path / "out" / "text").read_text() == "a あ\nc しい\nd でで\n"
    assert (tmp_path / "out" / "failed").read_text() == "b RuntimeError: too short\n"
    assert (tmp_path / "out" / "score").read_text() == "a あ\nc しい\nd でで\n"
    assert not (tmp_path / "out" / "token_int").exists()  # no job wrote one

    lost = [_job(tmp_path / "x", "o1", {"a": "あ"}, {})]
    with pytest.raises(ValueError, match="3 utterance\\(s\\) .* neither a hypothesis nor a "
                                         "failure record .*first: 'b'"):
        merge_decode_outputs(lost, keys, tmp_path / "out2")
    twice = [_job(tmp_path / "y", "o1", {"a": "あ"}, {}), _job(tmp_path / "y", "o2",
                                                               {"a": "あ"}, {})]
    with pytest.raises(ValueError, match="'a' was also written by another job"):
        merge_decode_outputs(twice, keys, tmp_path / "out3")
    stranger = [_job(tmp_path / "z", "o1", {"zz": "x"}, {})]
    with pytest.raises(ValueError, match="'zz' is not in"):
        merge_decode_outputs(stranger, keys, tmp_path / "out4")


# ------------------------------------------------------------------ tokens
def test_bpe_model_has_the_requested_vocabulary(tmp_path: Path) -> None:
    words = ["HELLO WORLD", "THE WORLD IS ROUND", "HELLO THERE", "ROUND AND ROUND",
             "THE END IS NEAR", "NEAR AND FAR"]
    text = tmp_path / "text"
    text.write_text("".join(f"u{i} {w}\n" for i, w in enumerate(words * 5)) + "empty \n")
    model = train_bpe(text, tmp_path / "bpe" / "bpe", 20, "unigram",
                      user_defined_symbols=["<noise>"])
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    assert sp.get_piece_size() == 20
    assert sp.encode("HELLO <noise> WORLD", out_type=str).count("<noise>") == 1
    assert sp.decode(sp.encode("THE WORLD IS NEAR")) == "THE WORLD IS NEAR"
    # the training text holds the transcripts without ids (and without empty ones)
    train_txt = (tmp_path / "bpe" / "train.txt").read_text().splitlines()
    assert train_txt == words * 5
    with pytest.raises(ValueError, match="sentencepiece training on .* failed"):
        train_bpe(text, tmp_path / "bpe2" / "bpe", 5000)


@pytest.mark.parametrize("text, rate", [("16k", 16000), ("16000", 16000), ("8K", 8000),
                                        ("22.05k", 22050)])
def test_parse_rate(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "0", "-16k"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


# ------------------------------------------------------------------ results
def _score_record(unit: str, err: float, snt: int, wrd: int, missing=()) -> str:
    return json.dumps({"dataset": "x", "unit": unit, "backend": "sclite", "snt": snt,
                       "wrd": wrd, "percent": {"Err": err}, "missing_hyp": list(missing)})


def test_results_table(tmp_path: Path) -> None:
    rows = {("streaming", "eval1"): 6.04, ("streaming", "eval2"): 4.45,
            ("ctc", "eval1"): 5.0, ("ctc", "eval2"): 3.96}
    for (head, dset), err in rows.items():
        d = tmp_path / head / dset
        d.mkdir(parents=True)
        missing = ["u1", "u2"] if (head, dset) == ("ctc", "eval2") else []
        n = 1272 if dset == "eval1" else 1292
        (d / "scores.json").write_text(_score_record("char", err, n, 43897, missing) + "\n")
    md = results_markdown(tmp_path, ["streaming", "ctc"], ["eval1", "eval2"], ["char"],
                          "exp/asr_x")
    assert "|head / mode|eval1|eval2|\n|---|---|---|\n|streaming|6.0|4.5|\n" \
           "|ctc|5.0|4.0 (2 failed)|" in md
    assert "eval1 1272 / 43897, eval2 1292 / 43897" in md
    assert "Latency" not in md
    (tmp_path / "latency").mkdir()
    (tmp_path / "latency" / "latency.json").write_text(json.dumps(
        {"rtf": 0.1234, "algorithmic_latency_ms": 1280.0, "emission_delay_p50_ms": 310.4,
         "emission_delay_p90_ms": 655.6, "num_utts": 3}))
    md = results_markdown(tmp_path, ["streaming", "ctc"], ["eval1", "eval2"], ["char"],
                          "exp/asr_x", latency_set="eval1")
    assert ("Latency (streaming on eval1): RTF 0.123, algorithmic latency 1280 ms, "
            "emission delay P50 310 ms / P90 656 ms") in md
    assert "Latency@50" not in md  # no speech-segments reference in this file
    (tmp_path / "latency" / "latency.json").write_text(json.dumps(
        {"rtf": 0.1234, "algorithmic_latency_ms": 1280.0, "emission_delay_p50_ms": 310.4,
         "emission_delay_p90_ms": 655.6, "latency_at50_ms": -12.4, "latency_at90_ms": 250.6,
         "first_token_delay_p50_ms": 420.0, "first_token_delay_p90_ms": 610.2}))
    md = results_markdown(tmp_path, ["streaming", "ctc"], ["eval1", "eval2"], ["char"],
                          "exp/asr_x", latency_set="eval1")
    assert ("Latency@50 -12 ms / @90 251 ms (last token after the end of speech), "
            "first-token delay P50 420 ms / P90 610 ms") in md
    # A model without a CTC head to align with (the shared-weights one): NaN token delays.
    (tmp_path / "latency" / "latency.json").write_text(json.dumps(
        {"rtf": 0.1234, "algorithmic_latency_ms": 40.0, "emission_delay_p50_ms": float("nan"),
         "emission_delay_p90_ms": float("nan"), "latency_at50_ms": -12.4,
         "latency_at90_ms": 250.6, "first_token_delay_p50_ms": 420.0,
         "first_token_delay_p90_ms": 610.2}))
    md = results_markdown(tmp_path, ["streaming", "ctc"], ["eval1", "eval2"], ["char"],
                          "exp/asr_x", latency_set="eval1")
    assert ("RTF 0.123, algorithmic latency 40 ms, emission delay not measured (no "
            "full-context CTC head to align tokens with)") in md and "nan" not in md
    assert "Latency@50 -12 ms / @90 251 ms" in md
    with pytest.raises(ValueError, match="no word score"):
        results_markdown(tmp_path, ["ctc"], ["eval1"], ["word"], "t")
    (tmp_path / "latency" / "latency.json").write_text(json.dumps({"rtf": 0.1}))
    with pytest.raises(ValueError, match="missing or non-numeric"):
        results_markdown(tmp_path, ["ctc"], ["eval1"], ["char"], "t")
