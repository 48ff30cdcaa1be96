"""Benchmark: pruned RNN-T loss vs torchaudio's full-joint RNN-T loss (CPU).

Each variant runs in a fresh subprocess (so that peak RSS belongs to that variant only)
on the same random batch: an ESPnet ``JointNetwork`` (``--joint-dim``) over encoder and
prediction-network outputs, loss forward + backward to the inputs and all parameters.

* ``reference``: ``joint(enc.unsqueeze(2), dec.unsqueeze(1))`` (B, T, U+1, V) logits +
  ``espnet2_dualmode.losses.rnnt_loss(backend="torchaudio")``;
* ``pruned``: ``pruned_rnnt_loss`` with the tied trivial joiner (no extra parameters);
* ``pruned_heads``: ``pruned_rnnt_loss`` with separate ``SimpleJoiner`` heads.

Memory: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak resident set size) of the
subprocess, reported whole and as "loss memory" = peak minus the peak reached after
imports and building the inputs (what the loss itself adds). Time: median over
``--repeats`` runs after one warm-up run. The ratios (ours / reference) come last.

Usage: ``python benchmarks/rnnt_loss.py [--repeats 3] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

VARIANTS = ("reference", "pruned", "pruned_heads")


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_variant(args: argparse.Namespace) -> Dict[str, float]:
    """Time one variant in this process and return its measurements."""
    import torch
    from espnet2.asr_transducer.joint_network import JointNetwork

    from espnet2_dualmode.losses import rnnt_loss
    from espnet2_dualmode.losses.pruned_transducer import SimpleJoiner, pruned_rnnt_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch, frames, labels, vocab = args.batch, args.frames, args.labels, args.vocab
    joint = JointNetwork(vocab, args.enc_dim, args.dec_dim, joint_space_size=args.joint_dim)
    heads = SimpleJoiner(args.enc_dim, args.dec_dim, vocab)
    enc = torch.randn(batch, frames, args.enc_dim, requires_grad=True)
    dec = torch.randn(batch, labels + 1, args.dec_dim, requires_grad=True)
    targets = torch.randint(1, vocab, (batch, labels))
    t_lens = torch.full((batch,), frames)
    u_lens = torch.full((batch,), labels)
    params = [enc, dec, *joint.parameters(), *heads.parameters()]

    def forward() -> torch.Tensor:
        if args.run_variant == "reference":
            logits = joint(enc.unsqueeze(2), dec.unsqueeze(1))
            return rnnt_loss(logits, targets, t_lens, u_lens, backend="torchaudio")
        simple = heads if args.run_variant == "pruned_heads" else None
        loss, _ = pruned_rnnt_loss(joint, enc, dec, targets, t_lens, u_lens,
                                   s_range=args.s_range, simple_joiner=simple)
        return loss

    setup_peak = _peak_rss_mb()
    fwd_times, total_times, value = [], [], 0.0
    for run in range(args.repeats + 1):
        for p in params:
            p.grad = None
        start = time.perf_counter()
        loss = forward()
        mid = time.perf_counter()
        loss.backward()
        end = time.perf_counter()
        value = float(loss)
        if run > 0:  # run 0 is the warm-up
            fwd_times.append(mid - start)
            total_times.append(end - start)
    return {
        "forward_s": statistics.median(fwd_times),
        "total_s": statistics.median(total_times),
        "peak_rss_mb": _peak_rss_mb(),
        "loss_mem_mb": _peak_rss_mb() - setup_peak,
        "loss": value,
    }


def _child_command(args: argparse.Namespace, variant: str) -> List[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--run-variant", variant]
    for name in ("repeats", "threads", "batch", "frames", "labels", "vocab", "joint_dim",
                 "enc_dim", "dec_dim", "s_range"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return cmd


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after 1 warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=150, help="encoder frames T")
    parser.add_argument("--labels", type=int, default=40, help="labels U per utterance")
    parser.add_argument("--vocab", type=int, default=3262, help="vocabulary V (with blank)")
    parser.add_argument("--joint-dim", type=int, default=320)
    parser.add_argument("--enc-dim", type=int, default=256)
    parser.add_argument("--dec-dim", type=int, default=256)
    parser.add_argument("--s-range", type=int, default=5, help="pruned label positions")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--run-variant", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    if args.run_variant:  # child process
        print(json.dumps(run_variant(args)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if "reference" not in args.variants:
        raise SystemExit("--variants must include 'reference' (the ratios' denominator)")
    logging.info("machine: %s, %d CPUs, Python %s; load average %s",
                 platform.processor() or platform.machine(), os.cpu_count(),
                 platform.python_version(), "/".join(f"{x:.2f}" for x in os.getloadavg()))
    logging.info("B=%d T=%d U=%d V=%d joint=%d s_range=%d threads=%d", args.batch,
                 args.frames, args.labels, args.vocab, args.joint_dim, args.s_range,
                 args.threads)
    results = {}
    for variant in args.variants:
        logging.info("running %s", variant)
        out = subprocess.run(_child_command(args, variant), check=True, capture_output=True,
                             text=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    logging.info("load average after: %s", "/".join(f"{x:.2f}" for x in os.getloadavg()))

    print(f"{'variant':<14}{'forward s':>11}{'fwd+bwd s':>11}{'peak RSS MiB':>14}"
          f"{'loss mem MiB':>14}{'loss':>12}")
    for variant, r in results.items():
        print(f"{variant:<14}{r['forward_s']:>11.3f}{r['total_s']:>11.3f}"
              f"{r['peak_rss_mb']:>14.0f}{r['loss_mem_mb']:>14.0f}{r['loss']:>12.2f}")
    ref = results["reference"]
    for variant, r in results.items():
        if variant == "reference":
            continue
        print(f"ratio {variant}/reference: fwd+bwd time {r['total_s'] / ref['total_s']:.3f} "
              f"(target <= 0.2), peak RSS {r['peak_rss_mb'] / ref['peak_rss_mb']:.3f}, "
              f"loss memory {r['loss_mem_mb'] / ref['loss_mem_mb']:.3f} (target <= 0.25)")


if __name__ == "__main__":
    main()
