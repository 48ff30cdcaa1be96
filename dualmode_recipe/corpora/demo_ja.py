"""Synthetic Japanese speech corpus for demos and CI (recipe ``egs2/demo_ja/asr1``).

CSJ is licensed and LibriSpeech is large, so the project ships a corpus that is made
offline on any machine: template sentences (:mod:`.demo_ja_text`) spoken by OpenJTalk
(``pyopenjtalk-plus``, dictionary and HTS voice inside the wheel).

Speakers are "voices": one HTS voice at a given speaking rate (``speed``) and pitch shift
(``half_tone``, semitones). train and dev use :data:`TRAIN_VOICES`; test uses
:data:`TEST_VOICES`, rate/pitch settings that lie inside the training range but are never
used in training. Splits are disjoint by sentence text. Speaker ids encode the voice,
``s<speed*100:03d>h<half_tone*10:+03d>`` (``s085h-30`` = speed 0.85, -3 semitones); all
have the same length, so utterance ids ``<speaker>_<split>_<index:06d>`` sort consistently
with speaker ids, as Kaldi requires.

Each utterance is synthesized at 48 kHz, resampled to 16 kHz with torchaudio, optionally
mixed with white Gaussian noise at a given SNR (measured over the whole utterance), peak
normalized to :data:`PEAK_LEVEL` of full scale (pyopenjtalk's samples can exceed the int16
range) and written as 16-bit mono PCM WAV. Every utterance is a pure function of
(text, voice, noise SNR, seed, split, index), so the corpus is bit-identical for the same
arguments whatever the number of worker processes.

Layout: ``<wav_dir>/<split>/<utt_id>.wav`` and Kaldi data dirs ``<out_dir>/<split>/``
(``wav.scp`` holds absolute WAV paths, so the data dirs work from any working directory;
moving ``wav_dir`` means re-running the generator). A stamp file
``<out_dir>/.demo_ja_corpus.json`` records the arguments; a re-run with the same ones
does nothing, a run with others regenerates everything and deletes WAVs it no longer
references.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import wave
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from dualmode_recipe.corpora.demo_ja_text import Sentence, generate_sentences
from dualmode_recipe.kaldi_dir import Utterance, write_data_dir

SAMPLE_RATE = 16000
TTS_SAMPLE_RATE = 48000  # what pyopenjtalk's HTS voice produces
PEAK_LEVEL = 0.7  # output peak as a fraction of int16 full scale
SPLITS = ("train", "dev", "test")
STAMP_NAME = ".demo_ja_corpus.json"
# Bump when a change to the text templates or the synthesis alters the output, so that
# stamps written by an older generator no longer match.
CORPUS_VERSION = 1


@dataclass(frozen=True)
class Voice:
    """A synthetic speaker: OpenJTalk's voice at one speaking rate and pitch shift."""

    speed: float
    half_tone: float

    def __post_init__(self) -> None:
        if not 0.5 <= self.speed <= 2.0 or not abs(self.half_tone) < 10:
            raise ValueError(f"voice out of range (0.5 <= speed <= 2, |half_tone| < 10): "
                             f"{self}")

    @property
    def speaker_id(self) -> str:
        """Fixed-length id that names the setting, e.g. ``s085h-30`` or ``s108h+15``."""
        return f"s{round(self.speed * 100):03d}h{round(self.half_tone * 10):+03d}"


TRAIN_VOICES: Tuple[Voice, ...] = tuple(
    Voice(speed, half_tone) for speed in (0.85, 1.0, 1.15) for half_tone in (-3.0, 0.0, 3.0))
TEST_VOICES: Tuple[Voice, ...] = tuple(
    Voice(speed, half_tone) for speed in (0.92, 1.08) for half_tone in (-1.5, 1.5))
SPLIT_VOICES: Dict[str, Tuple[Voice, ...]] = {
    "train": TRAIN_VOICES, "dev": TRAIN_VOICES, "test": TEST_VOICES}


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that determines the corpus content (and so its stamp)."""

    out_dir: str
    wav_dir: str
    num_train: int
    num_dev: int
    num_test: int
    seed: int = 0
    noise_snr_db: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("num_train", "num_dev", "num_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class PlannedUtterance:
    """One utterance to synthesize: what to say, how, and where to write it."""

    utt_id: str
    split: str
    sentence: Sentence
    voice: Voice
    wav_path: str
    noise_seed: Tuple[int, int, int]  # (seed, split index, utterance index)


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise so that power(x) / power(noise) is ``snr_db`` dB.

    Args:
        x: (Samples,) float signal; its power is taken over all samples.
        snr_db: target signal-to-noise ratio in dB.
        rng: noise source (seeded by the caller for reproducibility).
    """
    power = float(np.mean(x**2))
    if power == 0.0:
        raise ValueError("cannot set an SNR against a silent signal")
    noise = rng.standard_normal(x.shape[0])
    noise *= np.sqrt(power / 10 ** (snr_db / 10) / np.mean(noise**2))
    return x + noise


def to_int16(x: np.ndarray) -> np.ndarray:
    """Scale ``x`` so that its peak is :data:`PEAK_LEVEL` of full scale; round to int16.

    Args:
        x: (Samples,) float signal, not all zero.
    """
    peak = float(np.max(np.abs(x)))
    if peak == 0.0:
        raise ValueError("cannot normalize an all-zero signal")
    return np.round(x * (PEAK_LEVEL * 32767 / peak)).astype(np.int16)


def synthesize(
    tts_text: str,
    voice: Voice,
    noise_snr_db: Optional[float] = None,
    noise_seed: Sequence[int] = (0,),
) -> np.ndarray:
    """Speak ``tts_text`` with ``voice``; return (Samples,) int16 at :data:`SAMPLE_RATE`.

    Raises:
        RuntimeError: pyopenjtalk returned another sample rate or no/silent audio.
    """
    import pyopenjtalk  # heavy (dictionary load); imported where it is used
    import torch
    import torchaudio

    samples, rate = pyopenjtalk.tts(tts_text, speed=voice.speed, half_tone=voice.half_tone)
    if rate != TTS_SAMPLE_RATE:
        raise RuntimeError(f"pyopenjtalk returned {rate} Hz for {tts_text!r}, expected "
                           f"{TTS_SAMPLE_RATE}")
    if samples.size == 0 or not np.any(samples):
        raise RuntimeError(f"pyopenjtalk returned no audio for {tts_text!r}")
    x = torchaudio.functional.resample(torch.from_numpy(samples), rate, SAMPLE_RATE).numpy()
    if noise_snr_db is not None:
        x = add_noise(x, noise_snr_db, np.random.default_rng(list(noise_seed)))
    return to_int16(x)


def write_wav(path: str | os.PathLike, samples: np.ndarray) -> None:
    """Write (Samples,) int16 as 16-bit mono PCM at :data:`SAMPLE_RATE`, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with wave.open(str(tmp), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(samples.astype("<i2").tobytes())
    os.replace(tmp, path)


def plan_corpus(config: CorpusConfig) -> Dict[str, List[PlannedUtterance]]:
    """Assign sentences, voices and WAV paths to the utterances of each split.

    Sentences come from one seeded stream: dev takes the first ``num_dev``, test the next
    ``num_test``, train the rest, so dev/test stay the same when only ``num_train``
    changes. Voices go round-robin over each split's voice list.
    """
    counts = {"dev": config.num_dev, "test": config.num_test, "train": config.num_train}
    sentences = generate_sentences(sum(counts.values()), config.seed)
    wav_root = Path(config.wav_dir).resolve()
    plan: Dict[str, List[PlannedUtterance]] = {}
    start = 0
    for split in ("dev", "test", "train"):
        voices = SPLIT_VOICES[split]
        utts = []
        for i, sentence in enumerate(sentences[start:start + counts[split]]):
            voice = voices[i % len(voices)]
            utt_id = f"{voice.speaker_id}_{split}_{i:06d}"
            utts.append(PlannedUtterance(
                utt_id=utt_id, split=split, sentence=sentence, voice=voice,
                wav_path=str(wav_root / split / f"{utt_id}.wav"),
                noise_seed=(config.seed, SPLITS.index(split), i)))
        plan[split] = utts
        start += counts[split]
    return {split: plan[split] for split in SPLITS}


def synthesize_utterance(
        utt: PlannedUtterance, noise_snr_db: Optional[float]) -> Tuple[str, int]:
    """Synthesize ``utt`` into its WAV file; return (utterance id, number of samples).

    Raises:
        RuntimeError: synthesis failed; the message names the utterance and its text.
    """
    try:
        samples = synthesize(utt.sentence.tts_text, utt.voice, noise_snr_db, utt.noise_seed)
    except (RuntimeError, ValueError) as e:
        raise RuntimeError(f"utterance {utt.utt_id} ({utt.sentence.tts_text!r}): {e}") from e
    write_wav(utt.wav_path, samples)
    return utt.utt_id, int(samples.shape[0])


def _init_worker() -> None:
    """Give each worker one intra-op thread: nj processes should use nj cores."""
    import torch

    torch.set_num_threads(1)


def _run_jobs(utts: Sequence[PlannedUtterance], noise_snr_db: Optional[float],
              nj: int) -> Iterator[Tuple[str, int]]:
    """Synthesize ``utts`` in ``nj`` processes (in this process when nj == 1)."""
    job = functools.partial(synthesize_utterance, noise_snr_db=noise_snr_db)
    if nj == 1:
        yield from map(job, utts)
        return
    # spawn, not fork: forking a process that has started torch's thread pools can hang.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(nj, initializer=_init_worker) as pool:
        yield from pool.imap_unordered(job, utts, chunksize=4)


def _stamp(config: CorpusConfig) -> dict:
    """What the corpus content depends on, as stored in the stamp file."""
    stamp = dataclasses.asdict(config)
    stamp["out_dir"] = str(Path(config.out_dir).resolve())
    stamp["wav_dir"] = str(Path(config.wav_dir).resolve())
    stamp["corpus_version"] = CORPUS_VERSION
    stamp["pyopenjtalk_plus"] = metadata.version("pyopenjtalk-plus")
    stamp["torchaudio"] = metadata.version("torchaudio")
    return stamp


def is_up_to_date(config: CorpusConfig) -> bool:
    """True when the stamp matches ``config`` and every data dir and WAV is there."""
    stamp_path = Path(config.out_dir) / STAMP_NAME
    if not stamp_path.is_file():
        return False
    try:
        old = json.loads(stamp_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        logging.warning("%s is not valid JSON; regenerating", stamp_path)
        return False
    if old != _stamp(config):
        return False
    for split, utts in plan_corpus(config).items():
        if not (Path(config.out_dir) / split / "wav.scp").is_file():
            return False
        if not all(Path(u.wav_path).is_file() for u in utts):
            return False
    return True


def make_corpus(config: CorpusConfig, nj: int = 2) -> bool:
    """Generate the corpus for ``config`` unless it is already there.

    Returns:
        True when it was (re)generated, False when the stamp showed it up to date.
    """
    if nj < 1:
        raise ValueError(f"nj must be >= 1, got {nj}")
    if is_up_to_date(config):
        logging.info("demo_ja corpus in %s is up to date (stamp %s); nothing to do",
                     config.out_dir, STAMP_NAME)
        return False
    from tqdm import tqdm

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp_path = out_dir / STAMP_NAME
    stamp_path.unlink(missing_ok=True)  # a crash below must not leave a valid stamp
    plan = plan_corpus(config)
    all_utts = [u for utts in plan.values() for u in utts]
    for split in SPLITS:
        (Path(config.wav_dir) / split).mkdir(parents=True, exist_ok=True)
    logging.info("synthesizing %d utterances (train %d, dev %d, test %d) with nj=%d",
                 len(all_utts), config.num_train, config.num_dev, config.num_test, nj)
    num_samples: Dict[str, int] = {}
    for utt_id, n in tqdm(_run_jobs(all_utts, config.noise_snr_db, nj), total=len(all_utts),
                          desc="demo_ja", unit="utt"):
        num_samples[utt_id] = n
    _remove_stale_wavs(config.wav_dir, {u.wav_path for u in all_utts})
    for split, utts in plan.items():
        write_data_dir(out_dir / split,
                       [Utterance(u.utt_id, u.voice.speaker_id, u.sentence.text, u.utt_id)
                        for u in utts],
                       {u.utt_id: u.wav_path for u in utts})
        seconds = sum(num_samples[u.utt_id] for u in utts) / SAMPLE_RATE
        logging.info("%s: %d utterances, %.2f h, mean %.2f s, %d voices", split, len(utts),
                     seconds / 3600, seconds / len(utts), len({u.voice for u in utts}))
    stamp_path.write_text(json.dumps(_stamp(config), indent=1, sort_keys=True) + "\n",
                          encoding="utf-8")
    return True


def _remove_stale_wavs(wav_dir: str, keep: set) -> None:
    """Delete WAVs under ``<wav_dir>/<split>/`` left by a run with other arguments."""
    removed = 0
    for split in SPLITS:
        for path in (Path(wav_dir).resolve() / split).glob("*.wav"):
            if str(path) not in keep:
                path.unlink()
                removed += 1
    if removed:
        logging.info("removed %d WAVs of a previous run with other arguments", removed)
