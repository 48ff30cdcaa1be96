"""Throughput of 16 concurrent streams: batched MultiStreamDecoder vs 16 single-stream decoders.

The paper-size joint+sp-ED model (conf/paper/joint_sp_ed.yaml: 12 contextual-block Conformer
layers, d=256, ff 1024, 4 heads, block 40 / hop 16 / look-ahead 16, streaming RNN-T with
beam 10 over V=3262) with random weights. Random weights give nearly flat joint outputs (a
worst case for the search); as in a trained model, the streaming joint network's output
layer is made confident instead: its weights times ``--joint_scale`` and ``--blank_bias``
added to the blank logit, so that blank wins most frames and a few tokens per second are
emitted (the encoder's cost does not depend on its weights). Each of
``--streams`` streams is ``--min_seconds``-``--max_seconds`` of amplitude-modulated noise,
all starting together and fed in ``--chunk_ms`` chunks on one thread:

* reference: one :class:`Speech2TextStreaming` per stream (sharing the model), called in
  turn for every chunk of every stream;
* batched: one :class:`MultiStreamDecoder`, every open stream fed its chunk, then one
  ``step()``.

Both decode the same audio in the same run; the script checks that every stream's final
tokens and timestamps are identical (scores within 1e-3) and prints each throughput (audio
seconds per wall-clock second) and, last, the ratio batched / reference (target >= 3).

    python benchmarks/multistream.py [--streams 16] [--chunk_ms 160] [--beam 10]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from common import paper_streaming

from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.inference.multistream import MultiStreamDecoder
from espnet2_dualmode.inference.streaming import Speech2TextStreaming, StreamingFeatures

FS = 16000
TARGET = 3.0


def streams_audio(n: int, low: float, high: float, seed: int = 0) -> List[np.ndarray]:
    """``n`` recordings of different lengths in [low, high] s: noise modulated at 4 Hz."""
    rng = np.random.default_rng(seed)
    out = []
    for seconds in np.linspace(low, high, n):
        t = np.arange(int(seconds * FS)) / FS
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 2 * np.pi))
        out.append((0.1 * envelope * rng.standard_normal(t.size)).astype(np.float32))
    return out


def chunked(wav: np.ndarray, chunk: int) -> List[np.ndarray]:
    return [wav[i:i + chunk] for i in range(0, wav.size, chunk)]


def run_reference(proto: Speech2TextStreaming, wavs: Sequence[np.ndarray], chunk: int) -> List[List[Result]]:
    """One Speech2TextStreaming per stream on the shared model, called in turn per chunk."""
    decoders = []
    for _ in wavs:
        s2t = copy.copy(proto)
        s2t.features = StreamingFeatures(proto.model.frontend)
        s2t.reset()
        decoders.append(s2t)
    chunks = [chunked(w, chunk) for w in wavs]
    finals: List[List[Result]] = [[] for _ in wavs]
    for tick in range(max(len(c) for c in chunks)):
        for k, (s2t, cs) in enumerate(zip(decoders, chunks)):
            if tick < len(cs):
                finals[k] = s2t(cs[tick], is_final=tick == len(cs) - 1)
    return finals


def run_batched(dec: MultiStreamDecoder, wavs: Sequence[np.ndarray], chunk: int) -> List[List[Result]]:
    """Every stream fed its chunk, then one step, per tick."""
    ids = [dec.open() for _ in wavs]
    chunks = [chunked(w, chunk) for w in wavs]
    finals: List[List[Result]] = [[] for _ in wavs]
    for tick in range(max(len(c) for c in chunks)):
        for i, cs in zip(ids, chunks):
            if tick < len(cs):
                dec.feed(i, cs[tick], is_final=tick == len(cs) - 1)
        out: Dict[int, List[Result]] = dec.step()
        for k, (i, cs) in enumerate(zip(ids, chunks)):
            if tick == len(cs) - 1:
                finals[k] = out[i]
                dec.close(i)
    return finals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--min_seconds", type=float, default=3.0)
    p.add_argument("--max_seconds", type=float, default=5.0)
    p.add_argument("--chunk_ms", type=int, default=160)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--joint_scale", type=float, default=16.0)
    p.add_argument("--blank_bias", type=float, default=20.0)
    a = p.parse_args()
    torch.set_num_threads(1)
    wavs = streams_audio(a.streams, a.min_seconds, a.max_seconds)
    audio = sum(w.size for w in wavs) / FS
    chunk = a.chunk_ms * FS // 1000
    with tempfile.TemporaryDirectory() as tmp:
        proto = paper_streaming(a.beam, Path(tmp), a.joint_scale, a.blank_bias)
    dec = MultiStreamDecoder(proto)
    with torch.inference_mode():  # the model is built outside: weights with version counters
        tic = time.perf_counter()
        want = run_reference(proto, wavs, chunk)
        ref_time = time.perf_counter() - tic
        tic = time.perf_counter()
        got = run_batched(dec, wavs, chunk)
        batch_time = time.perf_counter() - tic
    for k, (g, w) in enumerate(zip(got, want)):
        same = ([r.token_ids for r in g] == [r.token_ids for r in w]
                and [r.timestamps for r in g] == [r.timestamps for r in w]
                and all(abs(x.score - y.score) <= 1e-3 for x, y in zip(g, w)))
        if not same:
            raise SystemExit(f"stream {k}: batched result differs from decoding it alone:\n"
                             f"  batched {g[0].token_ids} {g[0].score}\n"
                             f"  alone   {w[0].token_ids} {w[0].score}")
    tokens = sum(len(r[0].tokens) for r in want)
    s = dec.stats
    print(f"{a.streams} streams, {audio:.1f} s of audio in {a.chunk_ms}-ms chunks, beam {a.beam}, "
          f"{tokens / audio:.1f} tokens/s; all {a.streams} results identical")
    print(f"batching: {s.blocks_encoded} blocks in {s.encoder_calls} encoder calls, "
          f"{s.rounds} search rounds (up to {s.largest_round} streams in one)")
    print(f"reference ({a.streams} x Speech2TextStreaming): {ref_time:.2f} s, "
          f"{audio / ref_time:.1f} audio s/s")
    print(f"batched (MultiStreamDecoder): {batch_time:.2f} s, {audio / batch_time:.1f} audio s/s")
    print(f"throughput ratio batched / reference (target >= {TARGET:.0f}): {ref_time / batch_time:.2f}")


if __name__ == "__main__":
    main()
