"""A learnable toy corpus for end-to-end tests: each character is a tone of its own pitch.

``make_tone_corpus`` writes 16 kHz WAVs, a Kaldi-style wav.scp/text, ESPnet shape files and
a char token list, so the training/inference binaries can be run on it in seconds.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List

import numpy as np
import soundfile

ALPHABET = "abcdefgh"
SAMPLE_RATE = 16000


def tone_speech(text: str, rng: np.random.Generator, seconds_per_char: float = 0.12) -> np.ndarray:
    """Concatenated tones (one pitch per character) with short gaps and light noise."""
    pieces = [np.zeros(int(0.05 * SAMPLE_RATE))]
    for ch in text:
        n = int(seconds_per_char * SAMPLE_RATE)
        freq = 300.0 + 150.0 * ALPHABET.index(ch)
        pieces.append(0.5 * np.sin(2 * np.pi * freq * np.arange(n) / SAMPLE_RATE))
        pieces.append(np.zeros(int(0.03 * SAMPLE_RATE)))
    pieces.append(np.zeros(int(0.05 * SAMPLE_RATE)))
    wav = np.concatenate(pieces)
    return (wav + 0.01 * rng.standard_normal(wav.size)).astype(np.float32)


def make_tone_corpus(root: Path, n_utts: int = 8, seed: int = 0, min_len: int = 2,
                     max_len: int = 5) -> Dict[str, Path]:
    """Write the corpus under ``root``; returns paths: wav.scp, text, speech_shape, tokens."""
    root.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    scp: List[str] = []
    text: List[str] = []
    shape: List[str] = []
    for i in range(n_utts):
        uid = f"utt{i:03d}"
        words = "".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(min_len, max_len)))
        wav = tone_speech(words, rng)
        path = root / f"{uid}.wav"
        soundfile.write(path, wav, SAMPLE_RATE, subtype="PCM_16")
        scp.append(f"{uid} {path}")
        text.append(f"{uid} {words}")
        shape.append(f"{uid} {wav.size}")
    (root / "wav.scp").write_text("\n".join(scp) + "\n")
    (root / "text").write_text("\n".join(text) + "\n")
    (root / "speech_shape").write_text("\n".join(shape) + "\n")
    tokens = ["<blank>", "<unk>", *ALPHABET, "<sos/eos>"]
    (root / "tokens.txt").write_text("\n".join(tokens) + "\n")
    return {name: root / name for name in ("wav.scp", "text", "speech_shape", "tokens.txt")}


def train_args(corpus: Dict[str, Path], config: Path, output_dir: Path) -> List[str]:
    """ESPnet training arguments that train and validate on the toy corpus."""
    args = ["--config", str(config), "--token_list", str(corpus["tokens.txt"]),
            "--token_type", "char", "--output_dir", str(output_dir), "--ngpu", "0"]
    for split in ("train", "valid"):
        args += [f"--{split}_data_path_and_name_and_type", f"{corpus['wav.scp']},speech,sound",
                 f"--{split}_data_path_and_name_and_type", f"{corpus['text']},text,text",
                 f"--{split}_shape_file", str(corpus["speech_shape"])]
    return args
