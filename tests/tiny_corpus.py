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


def load_batch(corpus: Dict[str, Path]):
    """The whole toy corpus as one padded batch (speech, lengths, token ids, lengths)."""
    import torch

    tokens = [line.split()[0] for line in corpus["tokens.txt"].read_text().splitlines()]
    wavs, texts = [], []
    for line in corpus["wav.scp"].read_text().splitlines():
        wavs.append(torch.tensor(soundfile.read(line.split()[1], dtype="float32")[0]))
    for line in corpus["text"].read_text().splitlines():
        texts.append(torch.tensor([tokens.index(ch) for ch in line.split()[1]]))
    pad = torch.nn.utils.rnn.pad_sequence
    return (pad(wavs, batch_first=True), torch.tensor([len(w) for w in wavs]),
            pad(texts, batch_first=True, padding_value=-1), torch.tensor([len(t) for t in texts]))


def overfit_toy_model(corpus: Dict[str, Path], config: Path, out_dir: Path,
                      max_steps: int = 3000, extra_steps: int = 200) -> Dict[str, Path]:
    """Train ``config`` on the toy corpus until every head's greedy output is exact.

    Writes ESPnet-style ``config.yaml`` and ``model.pth`` into ``out_dir``.
    """
    import numpy
    import torch
    from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

    from espnet2_dualmode.tasks.dualmode_asr import DualModeASRTask

    args = DualModeASRTask.get_parser().parse_args(
        ["--config", str(config), "--token_list", str(corpus["tokens.txt"]), "--token_type", "char"])
    torch.manual_seed(0)
    numpy.random.seed(0)
    model = DualModeASRTask.build_model(args)
    batch = load_batch(corpus)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    converged_at = None
    for step in range(max_steps):
        model.train()
        loss, _, _ = model(*batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if converged_at is None and step % 50 == 49:
            model.eval()
            with torch.no_grad():
                _, stats, _ = model(*batch)
            exact = all(float(v) == 0 for k, v in stats.items() if k.startswith("cer_"))
            if exact and float(stats.get("acc_att", 1.0)) == 1.0:
                converged_at = step
        if converged_at is not None and step >= converged_at + extra_steps:
            break
    if converged_at is None:
        raise RuntimeError(f"toy model did not converge in {max_steps} steps")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "config.yaml", "w", encoding="utf-8") as f:
        yaml_no_alias_safe_dump(vars(args), f, indent=4, sort_keys=False)
    torch.save(model.state_dict(), out_dir / "model.pth")
    return {"config": out_dir / "config.yaml", "model": out_dir / "model.pth"}
