"""One training step of the joint+sp-ED model vs standalone Context-T + Conformer-T (issue 6 §2).

Each model runs in its own subprocess (so peak memory is its own): forward, backward and an
Adam step on the same batch (B=8 utterances of 6 s, 40 tokens each, V=3262), paper size,
built with our task. Prints median step times, peak RSS and, last, the ratio
joint / (Context-T + Conformer-T); the target is <= 1.0.

    python benchmarks/joint_step.py [--threads 2] [--steps 3] [--rnnt-loss-type full|pruned]

``--rnnt-loss-type`` sets model_conf.rnnt_loss_type of all three models (default: full, as
the paper configs). ``--configs A.yaml B.yaml ...`` times those training configs instead and
prints each one's step against the first's, e.g. the demo's cascade against its Dual-mode
variant at the demo's batch (the README of benchmarks/ has the command).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import CSJ_VOCAB

MODELS = ("joint_sp_ed", "st1_context_t", "nst1_conformer_t")


def run_one(name: str, steps: int, threads: int, batch: int, seconds: float, tokens: int,
            rnnt_loss_type: str, vocab: int) -> dict:
    import torch

    from common import build_paper_model, peak_rss_gib

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # the full training step, past any CTC-only warm-up of the config
    model, _ = build_paper_model(name, vocab, rnnt_loss_type=rnnt_loss_type, ctc_warmup_iters=0)
    model.train()
    speech = torch.randn(batch, int(16000 * seconds))
    lengths = torch.full((batch,), speech.size(1))
    text = torch.randint(2, model.vocab_size - 1, (batch, tokens))
    text_lengths = torch.full((batch,), tokens)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators
        tic = time.perf_counter()
        loss, _, _ = model(speech, lengths, text, text_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - tic)
    times = sorted(times[1:])
    return {"model": name, "step_s": times[len(times) // 2], "peak_rss_gib": peak_rss_gib(),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--tokens", type=int, default=40)
    p.add_argument("--rnnt-loss-type", choices=("full", "pruned"), default="full")
    p.add_argument("--configs", nargs="+", default=None,
                   help="training configs to time instead of the paper's three models")
    p.add_argument("--vocab", type=int, default=CSJ_VOCAB)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.steps, a.threads, a.batch, a.seconds, a.tokens,
                                 a.rnnt_loss_type, a.vocab)))
        return
    rows = {}
    for name in a.configs or MODELS:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--threads", str(a.threads),
                              "--steps", str(a.steps), "--batch", str(a.batch),
                              "--seconds", str(a.seconds), "--tokens", str(a.tokens),
                              "--rnnt-loss-type", a.rnnt_loss_type, "--vocab", str(a.vocab)],
                             capture_output=True, text=True, check=True)
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = rows[name]
        print(f"{name:18s} {r['params_m']:6.1f}M params  step {r['step_s']:7.2f} s  "
              f"peak RSS {r['peak_rss_gib']:5.2f} GiB", flush=True)
    if a.configs:
        first = rows[a.configs[0]]["step_s"]
        for name in a.configs[1:]:
            print(f"step of {name} / step of {a.configs[0]}: {rows[name]['step_s'] / first:.2f}")
        return
    base = rows["st1_context_t"]["step_s"] + rows["nst1_conformer_t"]["step_s"]
    print(f"joint step / (Context-T + Conformer-T): {rows['joint_sp_ed']['step_s'] / base:.2f}")


if __name__ == "__main__":
    main()
