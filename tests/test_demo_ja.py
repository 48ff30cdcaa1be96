"""Tests of the synthetic Japanese demo corpus (text templates, synthesis, CLI)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Dict

import numpy as np
import pyopenjtalk
import pytest
import soundfile

from dualmode_recipe.__main__ import main as recipe_main
from dualmode_recipe.corpora.demo_ja import (EMPTY_SECONDS, PEAK_LEVEL, SAMPLE_RATE,
                                            SEGMENTS_NAME, SPLITS, STAMP_NAME, TEST_VOICES,
                                            TRAIN_VOICES, CorpusConfig, PlannedUtterance,
                                            SynthesisOptions, Voice, make_corpus, plan_corpus,
                                            synthesize, synthesize_utterance)
from dualmode_recipe.corpora.demo_ja_text import (MINUTES, TTS_ONLY_PUNCTUATION, Sentence,
                                                 generate_sentences, kanji_number)
from dualmode_recipe.kaldi_dir import read_kaldi_map

TINY = dict(num_train=3, num_dev=2, num_test=2)


# --------------------------------------------------------------------------- text
@pytest.mark.parametrize("n, expected", [
    (1, "一"), (10, "十"), (11, "十一"), (20, "二十"), (100, "百"), (101, "百一"),
    (110, "百十"), (1200, "千二百"), (2024, "二千二十四"), (10000, "一万"),
    (10001, "一万一"), (12345, "一万二千三百四十五"), (100000, "十万"),
    (99999999, "九千九百九十九万九千九百九十九")])
def test_kanji_number(n: int, expected: str) -> None:
    assert kanji_number(n) == expected


@pytest.mark.parametrize("n", [0, -3, 10**8])
def test_kanji_number_rejects_out_of_range(n: int) -> None:
    with pytest.raises(ValueError, match="kanji_number"):
        kanji_number(n)


def test_sentences_distinct_bounded_and_seeded() -> None:
    sentences = generate_sentences(5000, seed=0)
    texts = [s.text for s in sentences]
    assert len(set(texts)) == 5000
    chars = {c for t in texts for c in t}
    assert 100 <= len(chars) <= 300, len(chars)
    assert not chars & set(TTS_ONLY_PUNCTUATION + " \u3000\t")
    assert all(s.text == "".join(c for c in s.tts_text if c not in "、。？")
               for s in sentences)
    assert sentences == generate_sentences(5000, seed=0)
    assert sentences[:100] == generate_sentences(100, seed=0)  # a prefix of one stream
    other = [s.text for s in generate_sentences(5000, seed=1)]
    assert other != texts


def test_generate_sentences_rejects_negative() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        generate_sentences(-1, seed=0)


def _kana(text: str) -> str:
    return pyopenjtalk.g2p(text, kana=True)


def test_pyopenjtalk_reads_generated_sentences() -> None:
    sentences = generate_sentences(800, seed=3)
    for s in sentences:
        kana = _kana(s.tts_text)
        # Only katakana (every word known to the dictionary), long vowels and punctuation.
        assert re.fullmatch(r"[ァ-ヴー、。？]+", kana), (s.tts_text, kana)
        # Every 分 is read as minutes (フン/プン), never ブ/ブン (a portion, enough).
        assert s.text.count("分") == len(re.findall("[フプ]ン", kana)), (s.tts_text, kana)
        assert "ハレレ" not in kana, (s.tts_text, kana)


@pytest.mark.parametrize("minute", MINUTES)
def test_every_minute_reads_as_minutes(minute: int) -> None:
    kana = _kana(f"午後三時{kanji_number(minute)}分からです。")
    assert re.search("[フプ]ンカラ", kana), kana


@pytest.mark.parametrize("text, reading", [
    ("三月一日です。", "サンガツツイタチデス。"),
    ("五月二十日です。", "ゴガツハツカデス。"),
    ("部屋に四人います。", "ヘヤニヨニンイマス。"),
    ("牛乳を三本ください。", "ギューニューヲサンボンクダサイ。"),
    ("このパンは六百円です。", "コノパンワロッピャクエンデス。"),
    ("次は品川、横浜です。", "ツギワシナガワ、ヨコハマデス。")])
def test_known_readings(text: str, reading: str) -> None:
    assert _kana(text) == reading


# ----------------------------------------------------------------------- synthesis
def _project_snr_db(noisy: np.ndarray, clean: np.ndarray) -> float:
    """SNR of ``noisy`` w.r.t. ``clean`` after fitting the unknown gain by least squares."""
    gain = noisy @ clean / (clean @ clean)
    residual = noisy - gain * clean
    return float(10 * np.log10(gain**2 * (clean @ clean) / (residual @ residual)))


def test_synthesize_matches_scipy_resampling_reference() -> None:
    import scipy.signal

    text, voice = "東京駅で会いましょう。", Voice(1.0, 0.0)
    out, bounds = synthesize(text, voice)
    assert out.dtype == np.int16
    assert int(np.max(np.abs(out))) == round(PEAK_LEVEL * 32767)
    raw, rate = pyopenjtalk.tts(text, speed=1.0, half_tone=0.0)
    assert rate == 48000
    reference = scipy.signal.resample_poly(raw, 1, 3)  # independent polyphase filter
    reference *= PEAK_LEVEL * 32767 / np.max(np.abs(reference))
    assert out.shape == reference.shape
    rel_err = np.sqrt(np.mean((out - reference) ** 2) / np.mean(reference**2))
    assert rel_err < 0.05, rel_err  # the two low-pass filters differ near 8 kHz
    # speech bounds: where the independent reference first/last exceeds 1 % of its peak
    loud = np.flatnonzero(np.abs(reference) > 0.01 * np.max(np.abs(reference)))
    assert abs(bounds[0] - loud[0]) <= 16 and abs(bounds[1] - (loud[-1] + 1)) <= 16, bounds
    assert 0 < bounds[0] < bounds[1] < out.size


def test_padding_keeps_speech_and_shifts_its_bounds() -> None:
    text, voice = "明日の京都は雨でしょう。", Voice(1.0, 0.0)
    clean, (start, end) = synthesize(text, voice)
    padded, (p_start, p_end) = synthesize(text, voice, noise_seed=(0, 0, 7),
                                          options=SynthesisOptions(pad_seconds=0.5))
    left = p_start - start
    assert 0 <= left <= 0.5 * SAMPLE_RATE and p_end - p_start == end - start
    assert 0 <= padded.size - clean.size - left <= 0.5 * SAMPLE_RATE
    assert not padded[:left].any() and not padded[left + clean.size:].any()  # digital silence
    assert np.array_equal(padded[left:left + clean.size], clean)  # same peak: same scaling


def test_noise_fraction_and_snr_over_the_speech() -> None:
    text, voice = "明日の京都は雨でしょう。", Voice(1.0, 0.0)
    clean, _ = synthesize(text, voice)
    options = SynthesisOptions(noise_snr_db=20.0, noise_fraction=0.5, pad_seconds=0.3)
    noisy = 0
    for i in range(8):
        x, (start, end) = synthesize(text, voice, noise_seed=(0, 0, i), options=options)
        left = start - synthesize(text, voice)[1][0]
        if x[:left].any():  # noise covers the padding too
            noisy += 1
            speech = x[left:left + clean.size].astype(np.float64)
            assert abs(_project_snr_db(speech, clean.astype(np.float64)) - 20.0) < 0.5
    assert 0 < noisy < 8


def test_noise_snr_and_seed() -> None:
    text, voice = "明日の京都は雨でしょう。", Voice(1.15, 3.0)
    clean = synthesize(text, voice)[0].astype(np.float64)
    noisy = synthesize(text, voice, noise_snr_db=10.0, noise_seed=(0, 1, 2))[0]
    assert abs(_project_snr_db(noisy.astype(np.float64), clean) - 10.0) < 0.3
    assert np.array_equal(noisy, synthesize(text, voice, 10.0, (0, 1, 2))[0])
    assert not np.array_equal(noisy, synthesize(text, voice, 10.0, (0, 1, 3))[0])


def test_voices_change_rate_and_pitch() -> None:
    text = "誕生日は八月三日です。"
    slow, fast = synthesize(text, Voice(0.85, 0.0))[0], synthesize(text, Voice(1.15, 0.0))[0]
    assert len(slow) / len(fast) > 1.15
    low, high = synthesize(text, Voice(1.0, -3.0))[0], synthesize(text, Voice(1.0, 3.0))[0]
    assert not np.array_equal(low, high)


def test_failed_synthesis_names_the_utterance(tmp_path: Path) -> None:
    utt = PlannedUtterance("s100h+00_train_000000", "train", Sentence("", "。"),
                           Voice(1.0, 0.0), str(tmp_path / "x.wav"), (0, 0, 0))
    with pytest.raises(RuntimeError, match="s100h\\+00_train_000000.*no audio"):
        synthesize_utterance(utt, SynthesisOptions())


def test_invalid_settings_rejected() -> None:
    with pytest.raises(ValueError, match="num_dev"):
        CorpusConfig("d", "w", num_train=1, num_dev=0, num_test=1)
    with pytest.raises(ValueError, match="seed"):
        CorpusConfig("d", "w", num_train=1, num_dev=1, num_test=1, seed=-1)
    with pytest.raises(ValueError, match="voice out of range"):
        Voice(1.0, 12.0)


# --------------------------------------------------------------------------- plan
def test_plan_splits_and_voices(tmp_path: Path) -> None:
    config = CorpusConfig(str(tmp_path / "d"), str(tmp_path / "w"), num_train=300,
                          num_dev=40, num_test=40, seed=5)
    plan = plan_corpus(config)
    texts = {split: {u.sentence.text for u in utts} for split, utts in plan.items()}
    assert [len(texts[s]) for s in SPLITS] == [300, 40, 40]
    assert not texts["train"] & texts["dev"]
    assert not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]
    train_settings = {(u.voice.speed, u.voice.half_tone) for u in plan["train"]}
    test_settings = {(u.voice.speed, u.voice.half_tone) for u in plan["test"]}
    assert len(train_settings) == len(TRAIN_VOICES) and len(test_settings) == len(TEST_VOICES)
    assert not train_settings & test_settings
    assert not {u.voice.speaker_id for u in plan["train"]} & {
        u.voice.speaker_id for u in plan["test"]}
    # dev/test do not move when only the training size changes.
    bigger = plan_corpus(CorpusConfig(config.out_dir, config.wav_dir, num_train=500,
                                      num_dev=40, num_test=40, seed=5))
    assert bigger["dev"] == plan["dev"] and bigger["test"] == plan["test"]


# ----------------------------------------------------------------------- corpus
NOISY = ["--noise_snr_db", "20", "--noise_fraction", "0.5", "--pad_seconds", "0.4",
         "--empty_fraction", "0.5"]


def _generate(root: Path, seed: int = 0, nj: int = 1, noise: bool = False,
              **sizes: int) -> Path:
    sizes = sizes or TINY
    recipe_main(
        ["make_demo_ja", "--out_dir", str(root / "data"), "--wav_dir", str(root / "wav"),
         "--seed", str(seed), "--nj", str(nj)] + [f"--{k}={v}" for k, v in sizes.items()]
        + (NOISY if noise else []))
    return root


def _fingerprint(root: Path) -> Dict[str, str]:
    """utt id -> sha256 of its split, text, speaker and WAV bytes."""
    result = {}
    for split in SPLITS:
        data = root / "data" / split
        text, utt2spk = read_kaldi_map(data / "text"), read_kaldi_map(data / "utt2spk")
        for utt, path in read_kaldi_map(data / "wav.scp").items():
            digest = hashlib.sha256(Path(path).read_bytes())
            digest.update(f"{split} {text[utt]} {utt2spk[utt]}".encode())
            result[utt] = digest.hexdigest()
    return result


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory.mktemp("demo_ja"), noise=True)


def test_kaldi_dirs_consistent(corpus: Path) -> None:
    for split in SPLITS:
        data = corpus / "data" / split
        wav_scp, text = read_kaldi_map(data / "wav.scp"), read_kaldi_map(data / "text")
        utt2spk, spk2utt = read_kaldi_map(data / "utt2spk"), read_kaldi_map(data / "spk2utt")
        n_empty = 0 if split == "test" else round(0.5 * TINY[f"num_{split}"])
        assert len(text) == TINY[f"num_{split}"] + n_empty
        assert sum(not t for t in text.values()) == n_empty
        segments = read_kaldi_map(data / SEGMENTS_NAME)
        assert set(segments) == {u for u, t in text.items() if t}  # the speech utterances
        for utt, value in segments.items():
            start, end = map(float, value.split())
            assert 0 < start < end < soundfile.info(wav_scp[utt]).duration
        assert set(wav_scp) == set(text) == set(utt2spk)
        assert {(u, s) for s, us in spk2utt.items() for u in us.split()} == set(
            utt2spk.items())
        for name in ("wav.scp", "text", "utt2spk", "spk2utt"):
            keys = [line.split(" ", 1)[0] for line in
                    (data / name).read_text(encoding="utf-8").splitlines()]
            assert keys == sorted(keys, key=lambda k: k.encode()), name  # C locale order
        speakers_in_utt_order = [utt2spk[u] for u in sorted(utt2spk)]
        assert speakers_in_utt_order == sorted(speakers_in_utt_order)
        assert all(u.startswith(s + "_") for u, s in utt2spk.items())
        for path in wav_scp.values():
            assert Path(path).is_absolute() and Path(path).is_file()


def test_wavs_are_16k_16bit_mono(corpus: Path) -> None:
    for split in SPLITS:
        for path in read_kaldi_map(corpus / "data" / split / "wav.scp").values():
            info = soundfile.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (
                SAMPLE_RATE, 1, "PCM_16"), path
            assert min(0.7, EMPTY_SECONDS[0]) < info.duration < 6.0, (path, info.duration)


def test_corpus_splits_and_voices(corpus: Path) -> None:
    texts = {s: set(read_kaldi_map(corpus / "data" / s / "text").values()) - {""}
             for s in SPLITS}  # the non-speech clips all have the empty transcript
    assert not (texts["train"] & texts["dev"] or texts["train"] & texts["test"]
                or texts["dev"] & texts["test"])
    speakers = {s: set(read_kaldi_map(corpus / "data" / s / "utt2spk").values())
                for s in SPLITS}
    assert speakers["train"] <= {v.speaker_id for v in TRAIN_VOICES}
    assert speakers["test"] <= {v.speaker_id for v in TEST_VOICES}
    assert not speakers["train"] & speakers["test"]


def test_bit_identical_for_seed_and_nj(corpus: Path, tmp_path: Path) -> None:
    first = _fingerprint(corpus)
    again = _fingerprint(_generate(tmp_path / "nj2", seed=0, nj=2, noise=True))
    assert again == first
    other = _fingerprint(_generate(tmp_path / "seed1", seed=1, noise=True))
    assert set(other.values()).isdisjoint(first.values())


def test_rerun_is_skipped_and_new_args_regenerate(tmp_path: Path) -> None:
    root = _generate(tmp_path, num_train=2, num_dev=1, num_test=1)
    wavs = sorted((root / "wav").rglob("*.wav"))
    mtimes = [p.stat().st_mtime_ns for p in wavs]
    config = CorpusConfig(str(root / "data"), str(root / "wav"), num_train=2, num_dev=1,
                          num_test=1)
    assert make_corpus(config, nj=1) is False
    assert [p.stat().st_mtime_ns for p in wavs] == mtimes
    smaller = CorpusConfig(config.out_dir, config.wav_dir, num_train=1, num_dev=1,
                           num_test=1)
    assert make_corpus(smaller, nj=1) is True
    assert len(list((root / "wav").rglob("*.wav"))) == 3  # the stale train WAV is gone
    assert len(read_kaldi_map(root / "data" / "train" / "text")) == 1
    assert '"num_train": 1' in (root / "data" / STAMP_NAME).read_text()
    (root / "wav" / "dev").joinpath(next(iter(
        read_kaldi_map(root / "data" / "dev" / "wav.scp"))) + ".wav").unlink()
    assert make_corpus(smaller, nj=1) is True  # a missing WAV forces regeneration


def test_cli_help_and_bad_arguments(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(["make_demo_ja", "--help"])
    assert exit_info.value.code == 0
    assert "--noise_snr_db" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(["make_demo_ja", "--out_dir", "d", "--wav_dir", "w", "--num_test", "0"])
    assert exit_info.value.code == 2
    assert "num_test must be >= 1" in capsys.readouterr().err
