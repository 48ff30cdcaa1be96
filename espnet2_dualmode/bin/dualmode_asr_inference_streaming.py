"""Streaming recognition simulated over a data directory: each waveform is fed to
:class:`Speech2TextStreaming` in chunks of ``--sim_chunk_length`` samples.

Usage:
    python -m espnet2_dualmode.bin.dualmode_asr_inference_streaming \
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.loss.ave.pth \
        --data_path_and_name_and_type dump/raw/test/wav.scp,speech,sound \
        --output_dir exp/asr/decode_streaming/test --sim_chunk_length 640 --beam_size 10

Same output layout as dualmode_asr_inference; the final text equals its
``--decode_head streaming_rnnt`` at the same beam, whatever the chunk length.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import numpy as np

from espnet2_dualmode.inference.cli import common_parser, decode_list, device_of, geometry_of, parse
from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.inference.streaming import Speech2TextStreaming

__all__ = ["Speech2TextStreaming", "main"]


def get_parser():
    p = common_parser(__doc__.splitlines()[0])
    p.add_argument("--sim_chunk_length", type=int, default=640,
                   help="samples per simulated chunk (0: the whole utterance at once)")
    return p


def recognize(s2t: Speech2TextStreaming, wav: np.ndarray, chunk: int) -> List[Result]:
    """Feed one waveform chunk by chunk; returns the final n-best."""
    s2t.reset()
    step = chunk if chunk > 0 else max(1, wav.size)
    starts = range(0, max(1, wav.size), step)
    result: List[Result] = []
    for start in starts:
        result = s2t(wav[start:start + step], is_final=start + step >= wav.size)
    return result


def main(cmd: Optional[List[str]] = None) -> None:
    args = parse(get_parser(), cmd)
    if args.batch_size != 1:
        raise SystemExit("streaming simulation decodes one stream at a time: --batch_size 1")
    s2t = Speech2TextStreaming(args.asr_train_config, args.asr_model_file,
                               beam_size=args.beam_size, nbest=args.nbest,
                               max_sym_per_frame=args.max_sym_per_frame, device=device_of(args),
                               **geometry_of(args))
    decode_list(args, lambda batch: [recognize(s2t, batch[0], args.sim_chunk_length)],
                s2t.train_args, s2t.sample_rate)


if __name__ == "__main__":
    main(sys.argv[1:])
