"""The non-speech test set (60-s silence and noise) and the check that every head decodes
it to empty text (stage 13 of the demo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from dualmode_recipe.__main__ import main as recipe_main
from dualmode_recipe.corpora.demo_ja import make_non_speech_set
from dualmode_recipe.empty_check import empty_check_markdown
from dualmode_recipe.kaldi_dir import read_kaldi_map


def test_non_speech_set_is_silence_and_noise_at_the_level(tmp_path: Path) -> None:
    out = make_non_speech_set(tmp_path / "data", tmp_path / "wav", seconds=3.0,
                              noise_dbfs=-50.0)
    text, wav_scp = read_kaldi_map(out / "text"), read_kaldi_map(out / "wav.scp")
    assert text == {"noise_3s": "", "silence_3s": ""}
    silence, rate = soundfile.read(wav_scp["silence_3s"], dtype="int16")
    noise, _ = soundfile.read(wav_scp["noise_3s"], dtype="int16")
    assert rate == 16000 and silence.size == noise.size == 48000
    assert not silence.any()
    level = 20 * np.log10(np.sqrt(np.mean(noise.astype(np.float64) ** 2)) / 32767)
    assert abs(level - (-50.0)) < 0.1, level


def _decodings(root: Path, outputs: dict) -> Path:
    for head, lines in outputs.items():
        d = root / head / "non_speech"
        d.mkdir(parents=True)
        (d / "text").write_text("".join(f"{u} {t}".rstrip() + "\n" for u, t in lines.items()),
                                encoding="utf-8")
    return root


def test_check_passes_only_when_every_head_is_empty(tmp_path: Path) -> None:
    empty = {"noise_60s": "", "silence_60s": ""}
    root = _decodings(tmp_path / "ok", {"streaming": empty, "attention": empty})
    report, ok = empty_check_markdown(root, ["streaming", "attention"], "non_speech")
    assert ok and report.count("|empty|empty|") == 2
    root = _decodings(tmp_path / "bad", {"streaming": empty,
                                         "attention": {**empty, "silence_60s": "新宿まで"}})
    report, ok = empty_check_markdown(root, ["streaming", "attention"], "non_speech")
    assert not ok and "|attention|empty|新宿まで|" in report
    with pytest.raises(SystemExit, match="non-empty output on the non-speech set"):
        recipe_main(["check_empty", "--decode_dir", str(root), "--heads", "streaming",
                     "attention", "--test_set", "non_speech", "--output",
                     str(tmp_path / "report.md")])
    assert "新宿まで" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_check_names_a_missing_decoding(tmp_path: Path) -> None:
    root = _decodings(tmp_path, {"streaming": {"silence_60s": ""}})
    with pytest.raises(FileNotFoundError, match="no decoding output of head ctc"):
        empty_check_markdown(root, ["streaming", "ctc"], "non_speech")
