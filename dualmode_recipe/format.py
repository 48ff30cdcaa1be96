"""Dump a data directory as one audio file per utterance (stage 3, ``feats_type=raw``).

Like ESPnet's ``format_wav_scp.py``: segments are cut out, audio is resampled to the
recipe's rate and written as 16-bit mono ``wav`` or ``flac`` under
``<dst>/data/<speaker>/<utt>.<format>``; ``<dst>`` receives ``wav.scp`` (absolute
paths), ``text``, ``utt2spk``, ``spk2utt`` and ``utt2num_samples``. A recording that is
already an unsegmented file in the wanted format and rate is hard-linked, not decoded.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path
from typing import List

import soundfile

from dualmode_recipe.audio import (AUDIO_FORMATS, is_dump_ready, link_or_copy, read_recording,
                                   resample, write_audio)
from dualmode_recipe.kaldi_dir import Utterance, read_data_dir, write_dump_dir
from dualmode_recipe.recordings import (Produced, RecordingResult, cut_segment,
                                        group_by_recording, map_recordings, produce)


def _dump_recording(entry: str, utts: List[Utterance], out_dir: str, rate: int,
                    audio_format: str) -> RecordingResult:
    """Worker: write the utterances of one recording as files of the dump."""

    def target(u: Utterance) -> str:
        return os.path.join(out_dir, u.speaker, f"{u.utt_id}.{audio_format}")

    def record(u: Utterance, path: str, n: int) -> List[Produced]:
        return [Produced(Utterance(u.utt_id, u.speaker, u.text, u.utt_id), path, n)]

    if len(utts) == 1 and utts[0].start is None and is_dump_ready(entry, rate, audio_format):
        u = utts[0]
        link_or_copy(entry.strip(), target(u))
        return record(u, target(u), soundfile.info(entry.strip()).frames), []
    samples, orig_rate = read_recording(entry, f"wav.scp: {utts[0].recording}")

    def make(u: Utterance) -> List[Produced]:
        piece = resample(cut_segment(samples, orig_rate, u), orig_rate, rate)
        return record(u, target(u), write_audio(target(u), piece, rate, audio_format))

    return produce(utts, make)


def format_data_dir(src: str | os.PathLike, dst: str | os.PathLike, rate: int = 16000,
                    audio_format: str = "wav", nj: int = 1) -> Path:
    """Dump the data directory ``src`` into ``dst`` (see the module docstring).

    Args:
        src: Kaldi data directory (wav.scp, text, utt2spk, optional segments).
        dst: output directory; its ``data/`` sub-folder is recreated.
        rate: output sample rate in Hz.
        audio_format: ``"wav"`` or ``"flac"``.
        nj: worker processes (the output does not depend on it).

    Returns:
        ``dst`` as a Path.

    Raises:
        ValueError: bad arguments, a broken data directory, or no utterance left.
    """
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"unknown audio format {audio_format!r}; expected one of "
                         f"{sorted(AUDIO_FORMATS)}")
    if rate <= 0:
        raise ValueError(f"sample rate must be > 0, got {rate}")
    data = read_data_dir(src)
    out = Path(dst)
    audio_dir = out / "data"
    if audio_dir.exists():
        shutil.rmtree(audio_dir)
    worker = functools.partial(_dump_recording, out_dir=str(audio_dir.resolve()), rate=rate,
                               audio_format=audio_format)
    produced = map_recordings(worker, group_by_recording(data.utterances, data.wav_scp), nj,
                              f"format {src}")
    write_dump_dir(out, [p.utterance for p in produced],
                   {p.utterance.utt_id: p.path for p in produced},
                   {p.utterance.utt_id: p.num_samples for p in produced})
    seconds = sum(p.num_samples for p in produced) / rate
    logging.info("%s: %d of %d utterances, %.2f h at %d Hz (%s)", out, len(produced),
                 len(data.utterances), seconds / 3600, rate, audio_format)
    return out
