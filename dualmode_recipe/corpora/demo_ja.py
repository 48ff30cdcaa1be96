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
padded with leading and trailing digital silence (each side uniform in ``[0, pad_seconds]``),
optionally mixed with white Gaussian noise at a given SNR (measured over the speech, the
noise covering the padding too) on a ``noise_fraction`` of the utterances, peak normalized to
:data:`PEAK_LEVEL` of full scale (pyopenjtalk's samples can exceed the int16 range) and
written as 16-bit mono PCM WAV.

With ``empty_fraction`` > 0, train and dev also get that fraction of non-speech clips with
an EMPTY transcript (0.5-4 s; a third digital silence, the rest white noise at
:data:`EMPTY_NOISE_DBFS`), so that the model learns to emit nothing on silence and noise.

``<out_dir>/<split>/speech_segments`` holds ``<utt_id> <start_s> <end_s>`` per speech
utterance: where the synthesized speech lies in the file, from the synthesis itself (the
first and last sample of the clean TTS output above :data:`SPEECH_THRESHOLD` of its peak,
shifted by the leading padding). It is the model-independent reference of the latency
metric (``measure_latency --speech_segments``).

Every utterance is a pure function of (text, voice, corpus options, seed, split, index),
so the corpus is bit-identical for the same arguments whatever the number of worker
processes.

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
SEGMENTS_NAME = "speech_segments"  # <utt_id> <speech start s> <speech end s>
# Bump when a change to the text templates or the synthesis alters the output, so that
# stamps written by an older generator no longer match.
CORPUS_VERSION = 2
SPEECH_THRESHOLD = 0.01  # speech boundaries: first/last sample above 1 % of the TTS peak
EMPTY_SECONDS = (0.5, 4.0)  # duration range of the non-speech clips
EMPTY_NOISE_DBFS = (-65.0, -30.0)  # RMS range of their noise, dB relative to full scale
EMPTY_SILENT_FRACTION = 1 / 3  # share of non-speech clips that are digital silence


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
    noise_fraction: float = 1.0  # share of speech utterances that get noise_snr_db noise
    pad_seconds: float = 0.0  # max leading / trailing silence per side
    empty_fraction: float = 0.0  # non-speech clips added to train and dev, per utterance

    def __post_init__(self) -> None:
        for name in ("num_train", "num_dev", "num_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for name in ("noise_fraction", "empty_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.pad_seconds < 0:
            raise ValueError(f"pad_seconds must be >= 0, got {self.pad_seconds}")

    @property
    def synthesis(self) -> "SynthesisOptions":
        return SynthesisOptions(self.noise_snr_db, self.noise_fraction, self.pad_seconds)


@dataclass(frozen=True)
class SynthesisOptions:
    """How an utterance is rendered after TTS (see the module docstring)."""

    noise_snr_db: Optional[float] = None
    noise_fraction: float = 1.0
    pad_seconds: float = 0.0


@dataclass(frozen=True)
class PlannedUtterance:
    """One utterance to synthesize: what to say, how, and where to write it."""

    utt_id: str
    split: str
    sentence: Sentence
    voice: Voice
    wav_path: str
    noise_seed: Tuple[int, int, int]  # (seed, split index, utterance index)

    @property
    def is_speech(self) -> bool:
        return bool(self.sentence.tts_text)


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator,
              power: Optional[float] = None) -> np.ndarray:
    """Add white Gaussian noise so that power(x) / power(noise) is ``snr_db`` dB.

    Args:
        x: (Samples,) float signal.
        snr_db: target signal-to-noise ratio in dB.
        rng: noise source (seeded by the caller for reproducibility).
        power: the signal power to measure against (default: over all samples of ``x``;
            a padded utterance passes its speech's power).
    """
    power = float(np.mean(x**2)) if power is None else power
    if power == 0.0:
        raise ValueError("cannot set an SNR against a silent signal")
    noise = rng.standard_normal(x.shape[0])
    noise *= np.sqrt(power / 10 ** (snr_db / 10) / np.mean(noise**2))
    return x + noise


def speech_bounds(x: np.ndarray) -> Tuple[int, int]:
    """First sample and one past the last sample of ``x`` above
    :data:`SPEECH_THRESHOLD` of its peak."""
    loud = np.flatnonzero(np.abs(x) > SPEECH_THRESHOLD * np.max(np.abs(x)))
    return int(loud[0]), int(loud[-1]) + 1


def non_speech(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A non-speech clip (int16): digital silence or white noise at a random level in
    :data:`EMPTY_NOISE_DBFS`."""
    n = int(round(seconds * SAMPLE_RATE))
    if rng.random() < EMPTY_SILENT_FRACTION:
        return np.zeros(n, dtype=np.int16)
    rms = 32767 * 10 ** (rng.uniform(*EMPTY_NOISE_DBFS) / 20)
    return np.round(np.clip(rng.standard_normal(n) * rms, -32768, 32767)).astype(np.int16)


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
    options: Optional[SynthesisOptions] = None,
) -> Tuple[np.ndarray, Tuple[int, int]]:
    """Speak ``tts_text`` with ``voice``.

    ``options`` (padding, noise on a fraction of utterances) replaces ``noise_snr_db``
    when given; the random draws come from ``noise_seed``.

    Returns:
        (Samples,) int16 at :data:`SAMPLE_RATE`, and the speech's ``(start, end)`` samples.

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
    options = options or SynthesisOptions(noise_snr_db)
    rng = np.random.default_rng(list(noise_seed))
    power = float(np.mean(x**2))
    start, end = speech_bounds(x)
    if options.pad_seconds > 0:
        left, right = (int(round(rng.uniform(0, options.pad_seconds) * SAMPLE_RATE))
                       for _ in range(2))
        x = np.concatenate([np.zeros(left), x, np.zeros(right)])
        start, end = start + left, end + left
    if options.noise_snr_db is not None and (options.noise_fraction >= 1.0
                                             or rng.random() < options.noise_fraction):
        x = add_noise(x, options.noise_snr_db, rng, power)
    return to_int16(x), (start, end)


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
    silent = Sentence(text="", tts_text="")
    wav_root = Path(config.wav_dir).resolve()
    plan: Dict[str, List[PlannedUtterance]] = {}
    start = 0
    for split in ("dev", "test", "train"):
        voices = SPLIT_VOICES[split]
        utts = []
        n_empty = round(config.empty_fraction * counts[split]) if split != "test" else 0
        for i, sentence in enumerate(sentences[start:start + counts[split]]
                                     + [silent] * n_empty):
            voice = voices[i % len(voices)]
            utt_id = f"{voice.speaker_id}_{split}_{i:06d}"
            utts.append(PlannedUtterance(
                utt_id=utt_id, split=split, sentence=sentence, voice=voice,
                wav_path=str(wav_root / split / f"{utt_id}.wav"),
                noise_seed=(config.seed, SPLITS.index(split), i)))
        plan[split] = utts
        start += counts[split]
    return {split: plan[split] for split in SPLITS}


def synthesize_utterance(utt: PlannedUtterance, options: SynthesisOptions
                         ) -> Tuple[str, int, Optional[Tuple[int, int]]]:
    """Synthesize ``utt`` into its WAV file.

    Returns:
        (utterance id, number of samples, speech (start, end) samples or None for a
        non-speech clip).

    Raises:
        RuntimeError: synthesis failed; the message names the utterance and its text.
    """
    if not utt.is_speech:
        rng = np.random.default_rng(list(utt.noise_seed))
        samples = non_speech(rng.uniform(*EMPTY_SECONDS), rng)
        write_wav(utt.wav_path, samples)
        return utt.utt_id, int(samples.shape[0]), None
    try:
        samples, bounds = synthesize(utt.sentence.tts_text, utt.voice,
                                     noise_seed=utt.noise_seed, options=options)
    except (RuntimeError, ValueError) as e:
        raise RuntimeError(f"utterance {utt.utt_id} ({utt.sentence.tts_text!r}): {e}") from e
    write_wav(utt.wav_path, samples)
    return utt.utt_id, int(samples.shape[0]), bounds


def _init_worker() -> None:
    """Give each worker one intra-op thread: nj processes should use nj cores."""
    import torch

    torch.set_num_threads(1)


def _run_jobs(utts: Sequence[PlannedUtterance], options: SynthesisOptions,
              nj: int) -> Iterator[Tuple[str, int, Optional[Tuple[int, int]]]]:
    """Synthesize ``utts`` in ``nj`` processes (in this process when nj == 1)."""
    job = functools.partial(synthesize_utterance, options=options)
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
        if not all((Path(config.out_dir) / split / name).is_file()
                   for name in ("wav.scp", SEGMENTS_NAME)):
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
    bounds: Dict[str, Tuple[int, int]] = {}
    for utt_id, n, speech in tqdm(_run_jobs(all_utts, config.synthesis, nj),
                                  total=len(all_utts), desc="demo_ja", unit="utt"):
        num_samples[utt_id] = n
        if speech is not None:
            bounds[utt_id] = speech
    _remove_stale_wavs(config.wav_dir, {u.wav_path for u in all_utts})
    for split, utts in plan.items():
        write_data_dir(out_dir / split,
                       [Utterance(u.utt_id, u.voice.speaker_id, u.sentence.text, u.utt_id)
                        for u in utts],
                       {u.utt_id: u.wav_path for u in utts})
        (out_dir / split / SEGMENTS_NAME).write_text("".join(
            f"{u.utt_id} {bounds[u.utt_id][0] / SAMPLE_RATE:.4f} "
            f"{bounds[u.utt_id][1] / SAMPLE_RATE:.4f}\n" for u in utts if u.utt_id in bounds),
            encoding="utf-8")
        seconds = sum(num_samples[u.utt_id] for u in utts) / SAMPLE_RATE
        logging.info("%s: %d utterances (%d without speech), %.2f h, mean %.2f s, %d voices",
                     split, len(utts), sum(not u.is_speech for u in utts), seconds / 3600,
                     seconds / len(utts), len({u.voice for u in utts}))
    stamp_path.write_text(json.dumps(_stamp(config), indent=1, sort_keys=True) + "\n",
                          encoding="utf-8")
    return True


def make_non_speech_set(out_dir: str | os.PathLike, wav_dir: str | os.PathLike,
                        seconds: float = 60.0, noise_dbfs: float = -50.0, seed: int = 0) -> Path:
    """A test set of two long non-speech recordings with empty transcripts: ``silence``
    (digital silence) and ``noise`` (white noise of RMS ``noise_dbfs`` dB full scale).

    A model that learned to emit nothing on silence and noise decodes both to empty text
    in every head (the demo's check in stage 13, ``--empty_test_sets``).
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    n = int(round(seconds * SAMPLE_RATE))
    rms = 32767 * 10 ** (noise_dbfs / 20)
    noise = np.random.default_rng([seed, len(SPLITS)]).standard_normal(n) * rms
    clips = {"silence": np.zeros(n, dtype=np.int16),
             "noise": np.round(np.clip(noise, -32768, 32767)).astype(np.int16)}
    wav_root = Path(wav_dir).resolve()
    wav_root.mkdir(parents=True, exist_ok=True)
    tag = f"{round(seconds)}s"
    utts, paths = [], {}
    for name, samples in clips.items():
        utt_id = f"{name}_{tag}"
        paths[utt_id] = str(wav_root / f"{utt_id}.wav")
        write_wav(paths[utt_id], samples)
        utts.append(Utterance(utt_id, utt_id, "", utt_id))
    write_data_dir(out_dir, utts, paths)
    logging.info("%s: %s of %.0f s (noise at %.0f dBFS), empty transcripts", out_dir,
                 " and ".join(clips), seconds, noise_dbfs)
    return Path(out_dir)


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
