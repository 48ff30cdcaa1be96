"""Kaldi-style data directories (wav.scp, segments, text, utt2spk, spk2utt).

Every corpus preparation in this project (CSJ, LibriSpeech, the synthetic demo corpus)
writes its output through :func:`write_data_dir`, so that all recipes see the same,
sorted and validated layout that ESPnet's stages 2-5 expect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional


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


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
