"""Speed perturbation of a training data directory (stage 2), Kaldi's 3-way recipe in Python.

For each factor ``f`` the utterances are copied with the prefix ``sp<f>-`` on utterance,
speaker and recording ids, as Kaldi's ``perturb_data_dir_speed.sh`` does. The copy at
factor 1.0 reuses the original audio. For any other factor each utterance is cut from
its recording and played ``f`` times faster (tempo and pitch change together, like
``sox speed f``): y(t) = x(f t), i.e. the samples are resampled from ``round(f * rate)``
Hz to ``rate`` Hz with torchaudio, and written as a 16-bit WAV of its own under
``<dst>/audio/<speaker>/`` (no sox needed). In a segmented directory those utterances
get the segment ``0 .. duration`` of their own file.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from dualmode_recipe.audio import read_recording, resample, write_audio
from dualmode_recipe.kaldi_dir import Utterance, read_data_dir, write_data_dir
from dualmode_recipe.recordings import (Produced, RecordingResult, cut_segment,
                                        group_by_recording, map_recordings, produce)


def parse_factors(factors: Sequence[str]) -> List[str]:
    """Validate speed factors given as strings (the strings become id prefixes).

    Raises:
        ValueError: a factor that is not a positive number, or a repeated factor.
    """
    if not factors:
        raise ValueError("no speed factors given")
    values = []
    for f in factors:
        try:
            value = float(f)
        except ValueError:
            raise ValueError(f"speed factor {f!r} is not a number") from None
        if not value > 0:
            raise ValueError(f"speed factor {f!r} must be > 0")
        values.append(value)
    if len(set(values)) != len(values):
        raise ValueError(f"repeated speed factor in {list(factors)}")
    return list(factors)


def change_speed(samples: np.ndarray, rate: int, factor: float) -> np.ndarray:
    """Play ``samples`` ``factor`` times faster (duration / factor, pitch x factor).

    Args:
        samples: (T,) float32.
        rate: sample rate in Hz.
        factor: speed factor (> 0).

    Returns:
        (ceil(T / factor'),) float32, where factor' = round(factor * rate) / rate.
    """
    return resample(samples, round(factor * rate), rate)


def _perturb_recording(entry: str, utts: List[Utterance], factors: Sequence[str],
                       audio_dir: str, segmented: bool) -> RecordingResult:
    """Worker: cut and speed-change every utterance of one recording at every factor."""
    samples, rate = read_recording(entry, f"wav.scp: {utts[0].recording}")

    def make(u: Utterance) -> List[Produced]:
        piece = cut_segment(samples, rate, u)
        out = []
        for f in factors:
            prefix = f"sp{f}-"
            utt_id, speaker = prefix + u.utt_id, prefix + u.speaker
            path = os.path.join(audio_dir, speaker, f"{utt_id}.wav")
            n = write_audio(path, change_speed(piece, rate, float(f)), rate, "wav")
            # Round the end up to the millisecond: the segment then covers the whole file
            # (format clamps the sub-millisecond overshoot).
            start, end = (0.0, math.ceil(n / rate * 1000) / 1000) if segmented else (None, None)
            out.append(Produced(Utterance(utt_id, speaker, u.text, utt_id, start, end),
                                path, n))
        return out

    return produce(utts, make)


def perturb_data_dir(src: str | os.PathLike, dst: str | os.PathLike,
                     factors: Sequence[str], nj: int = 1) -> Path:
    """Write ``dst``: the utterances of ``src`` at every speed factor.

    Args:
        src: Kaldi data directory (with or without segments).
        dst: output data directory; its ``audio/`` sub-folder is recreated.
        factors: speed factors as strings, e.g. ``["0.9", "1.0", "1.1"]``.
        nj: worker processes (the output does not depend on it).

    Returns:
        ``dst`` as a Path.
    """
    factors = parse_factors(factors)
    data = read_data_dir(src)
    out = Path(dst)
    audio_dir = out / "audio"
    if audio_dir.exists():
        shutil.rmtree(audio_dir)
    utterances: List[Utterance] = []
    wav_scp: Dict[str, str] = {}
    for f in factors:
        if float(f) == 1.0:  # same audio, new ids
            prefix = f"sp{f}-"
            for u in data.utterances:
                utterances.append(Utterance(prefix + u.utt_id, prefix + u.speaker, u.text,
                                            prefix + u.recording, u.start, u.end))
                wav_scp[prefix + u.recording] = data.wav_scp[u.recording]
    changed = [f for f in factors if float(f) != 1.0]
    if changed:
        worker = functools.partial(_perturb_recording, factors=changed,
                                   audio_dir=str(audio_dir.resolve()),
                                   segmented=data.segmented)
        produced = map_recordings(worker, group_by_recording(data.utterances, data.wav_scp),
                                  nj, f"speed perturbation of {src}")
        for p in produced:
            utterances.append(p.utterance)
            wav_scp[p.utterance.recording] = p.path
    write_data_dir(out, utterances, wav_scp)
    logging.info("%s: %d utterances at speed factors %s", out, len(utterances),
                 " ".join(factors))
    return out
