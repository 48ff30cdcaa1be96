"""Peak memory of one paper-size joint+sp-ED training step against batch_bins (issue 10 §4).

For each requested ``--batch_bins`` a fresh subprocess builds conf/paper/joint_sp_ed.yaml
(V=3262 CSJ characters unless ``--vocab``), makes the batch that ESPnet's "numel" sampler
would form from utterances of ``--seconds`` (all of the longest length, the pessimistic
case), runs forward + backward (under autocast with ``--amp``) and reports the step's own
peak memory: on CPU peak RSS minus the RSS after imports, model build and batch (RSS as the
stand-in for GPU memory), on CUDA ``max_memory_allocated`` minus what was allocated before.

Batch bins count as in the recipes (dualmode_asr.sh passes speech_shape and
text_shape.<token_type>, whose second dimension is the vocabulary): one utterance costs
``samples + tokens * vocab`` bins, and ESPnet closes a batch at the first utterance that
exceeds ``batch_bins``. ``--speech_bins_only`` counts samples only.

    python benchmarks/memory.py --device {cpu,cuda} --batch_bins N [N ...] \
        --rnnt_loss_type {full,pruned} [full|pruned] [--amp]

Prints a Markdown table, the least-squares fit ``memory = a + b * bins`` per loss type (and,
with both loss types, the full joint's cost per (B, T', U+1, V) element), and last the
largest measured point against 40 and 80 GiB budgets with the fitted batch_bins that fit them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

SAMPLE_RATE = 16000
ENCODER_FRAME_S = 0.04  # 10-ms hop, 4x subsampling
ADAM_STATE_BYTES = 12  # per parameter, held across steps: the weight and Adam's two moments
BUDGETS_GIB = (40, 80)


@dataclass
class BatchShape:
    """The numel batch for ``batch_bins``: B utterances of ``samples`` and ``tokens``."""

    batch_bins: int
    batch: int
    samples: int
    tokens: int
    vocab: int
    utt_bins: int  # what one utterance counts in the sampler

    @property
    def held_bins(self) -> int:
        """The bins the batch really holds (up to batch_bins + one utterance)."""
        return self.batch * self.utt_bins

    @property
    def audio_s(self) -> float:
        return self.batch * self.samples / SAMPLE_RATE

    @property
    def joint_elements(self) -> int:
        """Elements of one full RNN-T joint, B * T' * (U+1) * V."""
        frames = int(self.samples / SAMPLE_RATE / ENCODER_FRAME_S)
        return self.batch * frames * (self.tokens + 1) * self.vocab


def batch_shape(batch_bins: int, seconds: float, chars_per_second: float, vocab: int,
                text_bins: bool = True) -> BatchShape:
    """ESPnet's NumElementsBatchSampler on equal-length utterances: it adds utterances until
    the padded size exceeds batch_bins, so B = floor(batch_bins / per_utterance) + 1."""
    samples = int(seconds * SAMPLE_RATE)
    tokens = max(1, round(chars_per_second * seconds))
    per_utt = samples + (tokens * vocab if text_bins else 0)
    return BatchShape(batch_bins, batch_bins // per_utt + 1, samples, tokens, vocab, per_utt)


def rss_gib() -> float:
    """Current resident memory of this process (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmRSS in /proc/self/status")


def run_point(device: str, shape: BatchShape, rnnt_loss_type: str, amp: bool, threads: int
              ) -> Dict[str, float]:
    """One forward+backward in this process; the step's peak memory and time."""
    import torch

    from common import build_paper_model, peak_rss_gib

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, _ = build_paper_model("joint_sp_ed", vocab=shape.vocab, rnnt_loss_type=rnnt_loss_type)
    model.to(device).train()
    speech = 0.1 * torch.randn(shape.batch, shape.samples, device=device)
    lengths = torch.full((shape.batch,), shape.samples, device=device)
    text = torch.randint(2, shape.vocab - 1, (shape.batch, shape.tokens), device=device)
    text_lengths = torch.full((shape.batch,), shape.tokens, device=device)
    if device == "cuda":
        # As ESPnet's trainer: bf16 where the GPU supports it, else fp16.
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**30
    else:
        dtype = torch.bfloat16
        before = rss_gib()
    tic = time.perf_counter()
    with torch.autocast(device, dtype=dtype, enabled=amp):
        loss, _, _ = model(speech, lengths, text, text_lengths)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        step_gib = torch.cuda.max_memory_allocated() / 2**30 - before
    else:
        step_gib = peak_rss_gib() - before
    params = sum(p.numel() for p in model.parameters())
    return {"step_s": time.perf_counter() - tic, "step_gib": step_gib,
            "state_gib": params * ADAM_STATE_BYTES / 2**30, "loss_value": float(loss)}


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b x (b = y/x through the origin for one point)."""
    if len(x) == 1:
        return 0.0, y[0] / x[0]
    b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(a), float(b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch_bins", type=int, nargs="+", required=True)
    p.add_argument("--rnnt_loss_type", choices=("full", "pruned"), nargs="+", default=["full"])
    p.add_argument("--amp", action="store_true", help="autocast (bf16, or fp16 on GPUs without bf16)")
    p.add_argument("--seconds", type=float, default=10.0, help="utterance length (CSJ: 8-12 s)")
    p.add_argument("--chars_per_second", type=float, default=15.0,
                   help="tokens per second of audio (CSJ characters: ~15; LibriSpeech BPE 5000: ~3)")
    p.add_argument("--vocab", type=int, default=3262)
    p.add_argument("--speech_bins_only", action="store_true",
                   help="bins = B x samples (no text_shape file), instead of the recipes' count")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        spec = json.loads(a.one)
        print(json.dumps(run_point(a.device, BatchShape(**spec["shape"]), spec["loss"], a.amp,
                                   a.threads)))
        return
    if a.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device is visible")

    rows: List[dict] = []
    print(f"device {a.device}, amp {a.amp}, {a.seconds:g}-s utterances, "
          f"{a.chars_per_second:g} tokens/s, V={a.vocab}, bins "
          f"{'B x samples' if a.speech_bins_only else 'B x (samples + tokens x V)'}\n")
    print("| RNN-T loss | batch_bins | B | audio s | step s | step peak GiB | + weights & Adam GiB |")
    print("|---|---|---|---|---|---|---|")
    for loss_type in a.rnnt_loss_type:
        for bins in a.batch_bins:
            shape = batch_shape(bins, a.seconds, a.chars_per_second, a.vocab,
                                text_bins=not a.speech_bins_only)
            cmd = [sys.executable, __file__, "--device", a.device, "--threads", str(a.threads),
                   "--batch_bins", str(bins),
                   "--one", json.dumps({"shape": asdict(shape), "loss": loss_type})]
            if a.amp:
                cmd.append("--amp")
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                errors = [line for line in out.stderr.splitlines() if "Error" in line]
                why = errors[-1] if errors else f"exit status {out.returncode}"
                print(f"| {loss_type} | {bins} | {shape.batch} | {shape.audio_s:.0f} | "
                      f"failed: {why} | | |", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"loss": loss_type, "shape": shape, **r})
            print(f"| {loss_type} | {bins} | {shape.batch} | {shape.audio_s:.0f} | "
                  f"{r['step_s']:.1f} | {r['step_gib']:.2f} | {r['step_gib'] + r['state_gib']:.2f} |",
                  flush=True)
    if not rows:
        sys.exit("no point was measured")
    report_fit(rows, a)


def report_fit(rows: List[dict], a: argparse.Namespace) -> None:
    """The per-loss linear fits, the joint term, and the budget line (printed last)."""
    utt_bins = rows[0]["shape"].utt_bins
    per_second = utt_bins / a.seconds
    state = rows[0]["state_gib"]
    fits = {}
    print()
    for loss_type in a.rnnt_loss_type:
        pts = [r for r in rows if r["loss"] == loss_type]
        if not pts:
            continue
        fits[loss_type] = fit_line([r["shape"].held_bins for r in pts],
                                   [r["step_gib"] for r in pts])
        f_a, f_b = fits[loss_type]
        print(f"fit {loss_type}: step GiB = {f_a:.3f} + {f_b * 1e6:.4f} x (held bins / 1e6); "
              f"{f_b * per_second * 1024:.1f} MiB per second of audio")
    pairs = [(r, q) for r in rows if r["loss"] == "full" for q in rows
             if q["loss"] == "pruned" and q["shape"].batch_bins == r["shape"].batch_bins]
    if pairs:
        per_elem = [(r["step_gib"] - q["step_gib"]) * 2**30 / (2 * r["shape"].joint_elements)
                    for r, q in pairs]
        print(f"full - pruned at the same batch: {np.mean(per_elem):.1f} bytes per element of "
              f"each of the two (B, T', U+1, V) joints (points: "
              f"{', '.join(f'{v:.1f}' for v in per_elem)})")
    top = max(rows, key=lambda r: r["step_gib"])
    need = top["step_gib"] + state
    ratios = ", ".join(f"{need / g:.3f} of {g} GiB" for g in BUDGETS_GIB)
    fitted = "; ".join(
        f"{lt}: " + ", ".join(
            f"{g} GiB <- batch_bins {max(0.0, (g - state - fa) / fb - utt_bins):.3g}"
            for g in BUDGETS_GIB)
        for lt, (fa, fb) in fits.items() if fb > 0)
    print(f"largest point ({top['loss']}, batch_bins {top['shape'].batch_bins}): "
          f"{need:.2f} GiB with weights & Adam = {ratios}; fitted, no margin: {fitted}")


if __name__ == "__main__":
    main()
