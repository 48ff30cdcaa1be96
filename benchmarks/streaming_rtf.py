"""Real-time factor of the paper-size streaming path on one CPU thread (issue 6 §4).

The streaming encoder (12 contextual-block layers, d=256, block 40 / hop 16 / look-ahead 16)
+ streaming RNN-T beam search (beam 10, V=3262) of conf/paper/joint_sp_ed.yaml, fed 640-sample
chunks exactly as Speech2TextStreaming does. The weights are random, so the search expands
the most symbols every frame: a worst case for the search's cost. Prints RTF and, last,
RTF / 0.1 (the target is <= 1.0).

    python benchmarks/streaming_rtf.py [--seconds 20] [--beam 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import build_paper_model

from espnet2_dualmode.decoding import TransducerSearch
from espnet2_dualmode.inference.streaming import StreamingFeatures

TARGET_RTF = 0.1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--chunk", type=int, default=640)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, _ = build_paper_model("joint_sp_ed")
    model.eval()
    wav = 0.1 * torch.randn(int(16000 * a.seconds))
    features = StreamingFeatures(model.frontend)
    state = model.stream_encoder.init_state(1)
    search = TransducerSearch(model.stream_decoder, model.stream_joint, a.beam)
    hyps = search.init(1)
    enc_time = search_time = 0.0
    with torch.no_grad():
        for start in range(0, wav.numel(), a.chunk):
            final = start + a.chunk >= wav.numel()
            tic = time.perf_counter()
            feats = features(wav[start:start + a.chunk], final)
            feats, _ = model.normalize(feats, torch.tensor([feats.size(1)]))
            enc, state = model.stream_encoder.forward_incremental(feats, state, is_final=final)
            mid = time.perf_counter()
            search.advance(hyps, enc)
            search_time += time.perf_counter() - mid
            enc_time += mid - tic
    rtf = (enc_time + search_time) / a.seconds
    print(f"audio {a.seconds:.0f} s: features+encoder {enc_time:.2f} s, beam search {search_time:.2f} s")
    print(f"RTF {rtf:.3f} (encoder {enc_time / a.seconds:.3f}, search {search_time / a.seconds:.3f})")
    print(f"RTF / target {TARGET_RTF}: {rtf / TARGET_RTF:.2f}")


if __name__ == "__main__":
    main()
