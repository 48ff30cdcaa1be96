"""Decode lists (ESPnet's ``path,name,type`` inputs) read utterance by utterance, and
ESPnet's 1best_recog output layout.

A broken entry (unreadable file, wrong sample rate, empty or too-short audio) is logged
with its utterance id, listed in ``<output_dir>/failed`` and counted; the rest of the list
is still decoded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import kaldiio
import numpy as np
import soundfile
from espnet2.fileio.datadir_writer import DatadirWriter
from espnet2.fileio.read_text import read_2columns_text

from espnet2_dualmode.inference.model_io import Result

SUPPORTED_TYPES = ("sound", "kaldi_ark")


@dataclass
class DecodeList:
    """The utterances of one ``path,speech,type`` triple, optionally restricted by a key file."""

    path: str
    file_type: str
    keys: Optional[Sequence[str]] = None
    entries: Dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        if self.file_type not in SUPPORTED_TYPES:
            raise ValueError(f"{self.path}: unsupported type {self.file_type!r}; use {SUPPORTED_TYPES}")
        try:
            self.entries = read_2columns_text(self.path)
        except RuntimeError as e:  # ESPnet's reader: a duplicated key (it names the line)
            raise ValueError(f"{self.path}: {e}") from None
        except ValueError:  # ESPnet's reader: a blank line
            raise ValueError(f"{self.path}: a blank line; expected 'key value' lines") from None
        if self.keys is not None:
            missing = [k for k in self.keys if k not in self.entries]
            if missing:
                raise ValueError(f"{self.path}: keys {missing[:5]} of the key file are not in it")
        else:
            self.keys = list(self.entries)

    @classmethod
    def from_triple(cls, triple: str, key_file: Optional[str] = None) -> "DecodeList":
        """``dump/test/wav.scp,speech,sound`` (ESPnet's --data_path_and_name_and_type)."""
        parts = triple.split(",")
        if len(parts) != 3:
            raise ValueError(f"expected PATH,NAME,TYPE, got {triple!r}")
        keys = None
        if key_file is not None:
            keys = [line.split(maxsplit=1)[0] for line in Path(key_file).read_text().splitlines() if line.strip()]
        return cls(parts[0], parts[2], keys)

    def load(self, key: str, sample_rate: int, min_samples: int) -> np.ndarray:
        """Waveform (n,) float32, or features (T, F) for kaldi_ark; ValueError says what is wrong."""
        value = self.entries[key]
        if self.file_type == "kaldi_ark":
            feats = np.asarray(kaldiio.load_mat(value), dtype=np.float32)
            if feats.ndim != 2 or feats.shape[0] == 0:
                raise ValueError(f"features of shape {feats.shape}")
            if feats.shape[0] < min_samples:
                raise ValueError(f"too short: {feats.shape[0]} feature frames, at least "
                                 f"{min_samples} are needed")
            return feats
        if value.rstrip().endswith("|"):
            raise ValueError("piped wav.scp entries are not supported; run the format stage (3)")
        try:
            wav, rate = soundfile.read(value, dtype="float32", always_2d=False)
        except Exception as e:  # soundfile raises several types for unreadable files
            raise ValueError(f"cannot read {value}: {e}") from e
        if rate != sample_rate:
            raise ValueError(f"sample rate {rate} Hz, the model expects {sample_rate} Hz")
        if wav.ndim != 1:
            raise ValueError(f"{wav.shape[1]} channels, expected mono")
        if wav.size == 0:
            raise ValueError("empty audio")
        if wav.size < min_samples:
            raise ValueError(f"too short: {wav.size} samples, at least {min_samples} are needed")
        return wav

    def batches(self, batch_size: int, sample_rate: int, min_samples: int,
                failures: "Failures") -> Iterator[Tuple[List[str], List[np.ndarray]]]:
        """Batches of loadable utterances (in list order); broken ones go to ``failures``."""
        keys: List[str] = []
        data: List[np.ndarray] = []
        for key in self.keys:
            try:
                item = self.load(key, sample_rate, min_samples)
            except Exception as e:
                failures.add(key, str(e))
                continue
            keys.append(key)
            data.append(item)
            if len(keys) == batch_size:
                yield keys, data
                keys, data = [], []
        if keys:
            yield keys, data


class Failures:
    """Utterances that could not be decoded, with the reason (logged as they happen)."""

    def __init__(self) -> None:
        self.items: List[Tuple[str, str]] = []

    def add(self, key: str, reason: str) -> None:
        logging.warning(f"utterance {key}: {reason}; skipped")
        self.items.append((key, reason))

    def write(self, output_dir: Path, total: int) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        with open(output_dir / "failed", "w", encoding="utf-8") as f:
            for key, reason in self.items:
                f.write(f"{key} {reason}\n")
        level = logging.WARNING if self.items else logging.INFO
        logging.log(level, f"decoded {total - len(self.items)} of {total} utterances; "
                           f"{len(self.items)} failed (listed in {output_dir / 'failed'})")


def write_results(writer: DatadirWriter, key: str, nbest: Sequence[Result]) -> None:
    """ESPnet's layout: <n>best_recog/{text,token,token_int,score}."""
    for n, res in enumerate(nbest, 1):
        sub = writer[f"{n}best_recog"]
        sub["text"][key] = res.text
        sub["token"][key] = " ".join(res.tokens)
        sub["token_int"][key] = " ".join(map(str, res.token_ids))
        sub["score"][key] = str(res.score)
