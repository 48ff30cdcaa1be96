"""Kaldi data directories (wav.scp, segments, text, utt2spk, spk2utt, utt2num_samples).

Every corpus preparation (CSJ, LibriSpeech, the synthetic demo corpus) writes its output
through :func:`write_data_dir`, so that all recipes see the same, sorted and validated
layout that ESPnet's stages 2-5 expect. The stage helpers load a directory back with
:func:`read_data_dir`, which checks that its files agree with each other, so every later
step can trust ids, speakers and segment times. Errors name the file (and line) and the
utterance that is wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple


@dataclass(frozen=True)
class Utterance:
    """One utterance of a data directory.

    ``recording`` names the wav.scp entry; ``start``/``end`` (seconds) are set only
    when the utterance is a segment of a longer recording.
    """

    utt_id: str
    speaker: str
    text: str
    recording: str
    start: Optional[float] = None
    end: Optional[float] = None


def write_data_dir(
    out_dir: str | os.PathLike,
    utterances: Iterable[Utterance],
    wav_scp: Dict[str, str],
) -> Path:
    """Write ``utterances`` and their recordings as a Kaldi data directory.

    Files are sorted by key (C locale, as Kaldi's ``validate_data_dir.sh`` requires).
    ``segments`` is written when any utterance has start/end times; then all must.

    Raises:
        ValueError: duplicate utterance ids, an utterance whose recording is missing
            from ``wav_scp``, a segment with end <= start, a mix of segmented and
            unsegmented utterances, or whitespace inside an id.
    """
    out = Path(out_dir)
    utts: List[Utterance] = sorted(utterances, key=lambda u: u.utt_id)
    seen: set = set()
    for u in utts:
        if u.utt_id in seen:
            raise ValueError(f"{out}: duplicate utterance id {u.utt_id!r}")
        seen.add(u.utt_id)
        for name, value in (("utterance id", u.utt_id), ("speaker", u.speaker),
                            ("recording", u.recording)):
            if not value or any(c.isspace() for c in value):
                raise ValueError(f"{out}: {name} {value!r} of {u.utt_id!r} is empty "
                                 "or contains whitespace")
        if u.recording not in wav_scp:
            raise ValueError(f"{out}: utterance {u.utt_id!r} refers to recording "
                             f"{u.recording!r}, which is not in wav.scp")
    segmented = {u.start is not None for u in utts}
    if len(segmented) > 1:
        raise ValueError(f"{out}: some utterances have segment times and some do not")
    out.mkdir(parents=True, exist_ok=True)
    used = sorted({u.recording for u in utts})
    _write_lines(out / "wav.scp", (f"{r} {wav_scp[r]}" for r in used))
    _write_lines(out / "text", (f"{u.utt_id} {u.text}" for u in utts))
    _write_lines(out / "utt2spk", (f"{u.utt_id} {u.speaker}" for u in utts))
    spk2utt: Dict[str, List[str]] = {}
    for u in utts:
        spk2utt.setdefault(u.speaker, []).append(u.utt_id)
    _write_lines(out / "spk2utt",
                 (f"{s} {' '.join(ids)}" for s, ids in sorted(spk2utt.items())))
    if segmented == {True}:
        for u in utts:
            if u.end is None or u.end <= u.start:
                raise ValueError(f"{out}: segment {u.utt_id!r} has end {u.end} <= start "
                                 f"{u.start}")
        _write_lines(out / "segments", (f"{u.utt_id} {u.recording} {u.start:.3f} {u.end:.3f}"
                                        for u in utts))
    elif (out / "segments").exists():
        (out / "segments").unlink()
    return out


def read_kaldi_map(path: str | os.PathLike) -> Dict[str, str]:
    """Read a ``key value...`` file into a dict (value = rest of the line, may be empty)."""
    result: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, _, value = line.partition(" ")
            if key in result:
                raise ValueError(f"{path}:{lineno}: duplicate key {key!r}")
            result[key] = value
    return result


@dataclass(frozen=True)
class DataDir:
    """A Kaldi data directory in memory.

    ``utterances`` are sorted by id; ``wav_scp`` maps recording ids to wav.scp values
    (a path, or a command ending in ``|``); ``num_samples`` holds utt2num_samples when
    the directory has one (dump directories), else it is empty.
    """

    path: Path
    utterances: List[Utterance]
    wav_scp: Dict[str, str]
    num_samples: Dict[str, int]

    @property
    def segmented(self) -> bool:
        """True when the utterances are segments of longer recordings."""
        return bool(self.utterances) and self.utterances[0].start is not None


def read_data_dir(path: str | os.PathLike) -> DataDir:
    """Load ``wav.scp``, ``text``, ``utt2spk`` and, when present, ``segments`` and
    ``utt2num_samples``.

    Raises:
        FileNotFoundError: the directory or one of its required files is missing.
        ValueError: ids that disagree between files, a malformed segments line, a
            segment whose recording is not in wav.scp, or ``/`` in an id (ids become
            file names in the dump).
    """
    root = Path(path)
    for name in ("wav.scp", "text", "utt2spk"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root}: no {name} (not a Kaldi data directory?)")
    wav_scp = read_kaldi_map(root / "wav.scp")
    text = read_kaldi_map(root / "text")
    utt2spk = read_kaldi_map(root / "utt2spk")
    _same_keys(root, "text", text, "utt2spk", utt2spk)
    segments = _read_segments(root / "segments") if (root / "segments").is_file() else None
    if segments is not None:
        _same_keys(root, "text", text, "segments", segments)
    num_samples: Dict[str, int] = {}
    if (root / "utt2num_samples").is_file():
        raw = read_kaldi_map(root / "utt2num_samples")
        _same_keys(root, "text", text, "utt2num_samples", raw)
        for utt, value in raw.items():
            if not value.isdigit():
                raise ValueError(f"{root}/utt2num_samples: {utt}: {value!r} is not a "
                                 "sample count")
            num_samples[utt] = int(value)
    utterances: List[Utterance] = []
    for utt in sorted(text):
        speaker = utt2spk[utt]
        for name, value in (("utterance id", utt), ("speaker", speaker)):
            if "/" in value:
                raise ValueError(f"{root}: {name} {value!r} contains '/'")
        if segments is None:
            recording, start, end = utt, None, None
        else:
            recording, start, end = segments[utt]
        if recording not in wav_scp:
            where = "segments" if segments is not None else "text"
            raise ValueError(f"{root}: utterance {utt!r} ({where}) refers to recording "
                             f"{recording!r}, which is not in wav.scp")
        utterances.append(Utterance(utt, speaker, text[utt], recording, start, end))
    return DataDir(root, utterances, wav_scp, num_samples)


def write_dump_dir(out_dir: str | os.PathLike, utterances: List[Utterance],
                   wav_scp: Dict[str, str], num_samples: Dict[str, int]) -> Path:
    """Write an unsegmented data directory plus ``utt2num_samples`` (the dump layout)."""
    out = write_data_dir(out_dir, utterances, wav_scp)
    with open(out / "utt2num_samples", "w", encoding="utf-8") as f:
        for u in sorted(utterances, key=lambda u: u.utt_id):
            f.write(f"{u.utt_id} {num_samples[u.utt_id]}\n")
    return out


def _read_segments(path: Path) -> Dict[str, Tuple[str, float, float]]:
    """``utt -> (recording, start, end)`` from a segments file."""
    result: Dict[str, Tuple[str, float, float]] = {}
    for utt, rest in read_kaldi_map(path).items():
        fields = rest.split()
        if len(fields) != 3:
            raise ValueError(f"{path}: {utt}: expected '<utt> <recording> <start> <end>', "
                             f"got {len(fields) + 1} fields")
        try:
            start, end = float(fields[1]), float(fields[2])
        except ValueError:
            raise ValueError(f"{path}: {utt}: start/end {fields[1:]} are not numbers") from None
        if not 0 <= start < end:
            raise ValueError(f"{path}: {utt}: segment {start}..{end} s is empty or negative")
        result[utt] = (fields[0], start, end)
    return result


def _same_keys(root: Path, name_a: str, a: Dict[str, str], name_b: str,
               b: Dict[str, str]) -> None:
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if only_a or only_b:
        detail = []
        if only_a:
            detail.append(f"{len(only_a)} only in {name_a} (first: {only_a[0]!r})")
        if only_b:
            detail.append(f"{len(only_b)} only in {name_b} (first: {only_b[0]!r})")
        raise ValueError(f"{root}: {name_a} and {name_b} list different utterances: "
                         + "; ".join(detail))


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
