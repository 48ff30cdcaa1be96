"""Long-form streaming recognition of one recording, cut into segments by endpoint rules.

Usage:
    python -m espnet2_dualmode.bin.dualmode_asr_longform \
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.loss.ave.pth \
        --wav long.wav [--max_segment 20 --trailing_silence_after_token 0.8 \
        --trailing_silence_no_token 5] [--two_pass_head attention] [--chunk_ms 160]

The recording is fed in ``--chunk_ms`` chunks, as a live stream would arrive (the segments
do not depend on it). Prints one JSON line per segment as it is finished:
``{"index", "start", "end", "text", "tokens", "token_timestamps": [{"token", "time"}],
"endpoint"}`` (the server's segment layout; times in seconds from the start of the recording; a token's time is the end
of the encoder frame that emitted it), plus ``"two_pass": {"head", "text", "tokens"}``
with ``--two_pass_head``. Segments with no token (silence or noise) are printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import List, Optional

import numpy as np
import soundfile

# stdout carries only the JSON lines: ESPnet prints notices there (importing its attention
# modules, building a model), so both happen with stdout sent to stderr
with contextlib.redirect_stdout(sys.stderr):
    from espnet2_dualmode.inference.cli import (
        add_device_argument,
        add_geometry_arguments,
        device_of,
        geometry_of,
    )
    from espnet2_dualmode.inference.endpoint import (
        EndpointRules,
        LongFormRecognizer,
        add_two_pass_margin_argument,
    )
    from espnet2_dualmode.inference.offline import HEADS, shared_offline_head
    from espnet2_dualmode.inference.streaming import Speech2TextStreaming

def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--asr_train_config", required=True, help="the training run's config.yaml")
    p.add_argument("--asr_model_file", required=True, help="model weights (.pth)")
    p.add_argument("--wav", required=True, help="the recording: a mono wav at the model's rate")
    p.add_argument("--chunk_ms", type=float, default=160.0, help="simulated chunk length (ms)")
    EndpointRules.add_arguments(p)
    p.add_argument("--two_pass_head", default=None,
                   choices=[h for h in HEADS if h != "streaming_rnnt"],
                   help="full-context head that re-decodes each finished segment")
    add_two_pass_margin_argument(p)
    p.add_argument("--beam_size", type=int, default=10)
    p.add_argument("--max_sym_per_frame", type=int, default=10,
                   help="most RNN-T symbols per encoder frame")
    add_device_argument(p)
    add_geometry_arguments(p)
    return p


def read_recording(path: str, sample_rate: int, min_samples: int) -> np.ndarray:
    """The samples of a mono wav; a ValueError naming the file for anything else."""
    try:
        wav, rate = soundfile.read(path, dtype="float32")
    except (RuntimeError, OSError) as e:  # soundfile's LibsndfileError is a RuntimeError
        raise ValueError(f"{path}: cannot read audio: {e}") from e
    if rate != sample_rate:
        raise ValueError(f"{path}: sample rate {rate} Hz, the model needs {sample_rate} Hz")
    if wav.ndim != 1:
        raise ValueError(f"{path}: {wav.shape[1]} channels, expected mono")
    if wav.size < min_samples:
        raise ValueError(f"{path}: {wav.size} samples is too short (the model needs at least "
                         f"{min_samples}, one encoder frame)")
    return wav


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        rules = EndpointRules.from_args(args)
        options = dict(beam_size=args.beam_size, max_sym_per_frame=args.max_sym_per_frame,
                       device=device_of(args), **geometry_of(args))
        s2t = Speech2TextStreaming(args.asr_train_config, args.asr_model_file, **options)
        second = None
        if args.two_pass_head:
            second = shared_offline_head(s2t.model, args.asr_train_config, args.two_pass_head,
                                         **options)
        recognizer = LongFormRecognizer(s2t, rules, second, args.two_pass_margin)
        wav = read_recording(args.wav, s2t.sample_rate, recognizer.min_samples)
        step = max(1, int(round(args.chunk_ms * s2t.sample_rate / 1000)))
        for start in range(0, wav.size, step):
            for segment in recognizer(wav[start:start + step], is_final=start + step >= wav.size):
                print(json.dumps(segment.to_json(args.two_pass_head), ensure_ascii=False),
                      file=out, flush=True)

if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ValueError as e:
        sys.exit(f"error: {e}")
