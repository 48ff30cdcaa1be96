"""Audio I/O of the recipe stages: wav.scp values in, 16-bit files out.

A wav.scp value is either a file that libsndfile reads (wav, flac, ...) or a shell
command ending in ``|`` whose standard output is such a file (Kaldi's convention; the
CSJ preparation uses ``sox ... remix N |`` for 2-channel dialogues). Samples are
handled as float32 in [-1, 1) = int16 / 32768, so an int16 file that is only cut or
copied is written back bit-exactly.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Tuple

import numpy as np
import soundfile

AUDIO_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16")}


def read_recording(entry: str, source: str) -> Tuple[np.ndarray, int]:
    """Read one wav.scp value as mono float32 samples.

    Args:
        entry: the wav.scp value (a path, or a command ending in ``|``).
        source: what to name in errors (e.g. ``"data/train/wav.scp: A01F0055"``).

    Returns:
        ``(samples (T,) float32, sample rate)``.

    Raises:
        FileNotFoundError: the file does not exist.
        RuntimeError: the command fails or libsndfile cannot decode the audio.
        ValueError: the audio has more than one channel.
    """
    entry = entry.strip()
    try:
        if entry.endswith("|"):
            command = entry[:-1]
            proc = subprocess.run(command, shell=True, capture_output=True, check=False)
            if proc.returncode != 0:
                err = proc.stderr.decode(errors="replace").strip()[-500:]
                raise RuntimeError(f"{source}: command {command!r} exited with "
                                   f"{proc.returncode}: {err}")
            data, rate = soundfile.read(io.BytesIO(proc.stdout), dtype="float32",
                                        always_2d=True)
        else:
            if not os.path.isfile(entry):
                raise FileNotFoundError(f"{source}: audio file {entry} does not exist")
            data, rate = soundfile.read(entry, dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as err:
        raise RuntimeError(f"{source}: cannot decode {entry!r}: {err}") from None
    if data.shape[1] != 1:
        raise ValueError(f"{source}: {entry!r} has {data.shape[1]} channels; the recipes "
                         "need one channel per recording (select it in wav.scp, e.g. "
                         "'sox in.wav -t wav - remix 1 |')")
    return data[:, 0], rate


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling with torchaudio (identity when the rates are equal).

    Args:
        samples: (T,) float32.
        orig_rate: rate of ``samples`` in Hz (> 0, integer).
        new_rate: wanted rate in Hz (> 0, integer).

    Returns:
        (ceil(T * new_rate / orig_rate),) float32.
    """
    if orig_rate == new_rate:
        return samples
    # Imported on first use: torch would add ~2 s to every start of the dump helpers,
    # which mostly only cut and copy 16 kHz audio.
    import torch
    import torchaudio

    gcd = math.gcd(orig_rate, new_rate)
    out = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(samples)),
                                         orig_rate // gcd, new_rate // gcd)
    return out.numpy()


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float in [-1, 1) -> int16 (x 32768, rounded, clipped: resampling can overshoot)."""
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16)


def write_audio(path: str | os.PathLike, samples: np.ndarray, rate: int,
                audio_format: str) -> int:
    """Write 16-bit mono ``samples`` (float32) as ``audio_format``; returns the length."""
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"unknown audio format {audio_format!r}; expected one of "
                         f"{sorted(AUDIO_FORMATS)}")
    container, subtype = AUDIO_FORMATS[audio_format]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = to_int16(samples)
    soundfile.write(str(path), data, rate, format=container, subtype=subtype)
    return int(data.shape[0])


def is_dump_ready(entry: str, rate: int, audio_format: str) -> bool:
    """True when ``entry`` is a mono 16-bit file of ``audio_format`` at ``rate`` (it can
    then be linked into the dump instead of being decoded and re-encoded)."""
    entry = entry.strip()
    if entry.endswith("|") or not os.path.isfile(entry):
        return False
    try:
        info = soundfile.info(entry)
    except soundfile.LibsndfileError:
        return False
    return ((info.format, info.subtype) == AUDIO_FORMATS[audio_format]
            and info.samplerate == rate and info.channels == 1)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link ``src`` to ``dst`` (copy across file systems); replaces ``dst``."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
