"""Real-time factor of the paper-size streaming path on one CPU thread (issue 6 §4).

The streaming encoder (12 contextual-block layers, d=256, block 40 / hop 16 / look-ahead 16)
+ streaming RNN-T beam search (beam 10, V=3262) of conf/paper/joint_sp_ed.yaml, fed 640-sample
chunks exactly as Speech2TextStreaming does. Prints RTF and, last, RTF / 0.1 (the target
is <= 1.0).

The encoder's cost does not depend on its weights; the search's does, on how peaked the
joint network's outputs are (``--search``):

* ``random``: the model's own random weights. Nearly flat outputs: every frame expands the
  most symbols, a worst case.
* ``structured`` (default): the hand-set "trained-like" prediction and joint networks of
  ``beam_search.py`` (V=3262, LSTM 256, joint 320, the paper's sizes), searching their own
  planted encoder frames, as many per chunk as the streaming encoder emits; a quarter of
  the frames carry a token (about 6 characters per second).

``--model dualmode_shared`` times the shared-weights Dual-mode model's streaming mode
(conf/paper/dualmode_shared.yaml: 12 layers, d=256, left context only) instead: its encoder
carries keys/values and convolution state from frame to frame (exact for that model). The
contextual-block encoder recomputes each block's overlap instead, because an overlapping
frame's hidden state depends on the block it is computed in (README, "Serving").

    python benchmarks/streaming_rtf.py [--seconds 20] [--beam 10] [--search random]
        [--model joint_sp_ed|dualmode_shared]
"""

from __future__ import annotations

import argparse
import time

import torch

from beam_search import structured_model
from common import CSJ_VOCAB, build_paper_model

from espnet2_dualmode.decoding import TransducerSearch
from espnet2_dualmode.inference.streaming import StreamingFeatures

TARGET_RTF = 0.1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--chunk", type=int, default=640)
    p.add_argument("--search", choices=("structured", "random"), default="structured")
    p.add_argument("--model", choices=("joint_sp_ed", "dualmode_shared"), default="joint_sp_ed",
                   help="paper config whose streaming path is timed")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, _ = build_paper_model(a.model)
    model.eval()
    wav = 0.1 * torch.randn(int(16000 * a.seconds))
    features = StreamingFeatures(model.frontend)
    state = model.stream_encoder.init_state(1)
    decoder, joint, search_frames = model.stream_decoder, model.stream_joint, None
    if a.search == "structured":
        frames = int(a.seconds * 25) + 10  # 40-ms encoder frames, with room to spare
        decoder, joint, search_frames, _, _ = structured_model(
            CSJ_VOCAB, torch.Generator().manual_seed(0), utts=1, frames=frames)
    search = TransducerSearch(decoder, joint, a.beam)
    hyps = search.init(1)
    enc_time = search_time = 0.0
    with torch.inference_mode():
        for start in range(0, wav.numel(), a.chunk):
            final = start + a.chunk >= wav.numel()
            tic = time.perf_counter()
            feats = features(wav[start:start + a.chunk], final)
            feats, _ = model.normalize(feats, torch.tensor([feats.size(1)]))
            enc, state = model.stream_encoder.forward_incremental(feats, state, is_final=final)
            if search_frames is not None:  # as many of the search model's own frames
                done = hyps.num_frames[0]
                enc = search_frames[:, done:done + enc.size(1)]
            mid = time.perf_counter()
            search.advance(hyps, enc)
            search_time += time.perf_counter() - mid
            enc_time += mid - tic
    rtf = (enc_time + search_time) / a.seconds
    tokens = len(search.finalize(hyps)[0][0].tokens)
    print(f"audio {a.seconds:.0f} s: features+encoder {enc_time:.2f} s, beam search "
          f"{search_time:.2f} s ({a.search} search model, {hyps.num_frames[0]} frames, "
          f"1-best {tokens} tokens)")
    print(f"RTF {rtf:.3f} (encoder {enc_time / a.seconds:.3f}, search {search_time / a.seconds:.3f})")
    print(f"RTF / target {TARGET_RTF}: {rtf / TARGET_RTF:.2f}")


if __name__ == "__main__":
    main()
