"""Arguments and the decode loop shared by the offline and the streaming-simulation CLIs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from espnet2.fileio.datadir_writer import DatadirWriter
from tqdm import tqdm

from espnet2_dualmode.encoders.contextual_block_conformer import min_input_frames
from espnet2_dualmode.inference.decode_list import DecodeList, Failures, write_results
from espnet2_dualmode.inference.model_io import Result
from espnet2_dualmode.tasks.dualmode_asr import min_speech_samples


def common_parser(description: str) -> argparse.ArgumentParser:
    """--asr_train_config, --asr_model_file, data, output and device options."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--asr_train_config", required=True, help="the training run's config.yaml")
    p.add_argument("--asr_model_file", required=True, help="model weights (.pth)")
    p.add_argument("--data_path_and_name_and_type", required=True,
                   help="PATH,speech,TYPE with TYPE sound (wav.scp) or kaldi_ark (feats.scp)")
    p.add_argument("--key_file", default=None, help="decode only these utterance ids (--nj splits)")
    p.add_argument("--output_dir", required=True, type=Path)
    p.add_argument("--config", default=None, help="YAML whose keys set these options (decode config)")
    add_device_argument(p)
    add_geometry_arguments(p)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--beam_size", type=int, default=10)
    p.add_argument("--nbest", type=int, default=1)
    p.add_argument("--max_sym_per_frame", type=int, default=10, help="most RNN-T symbols per encoder frame")
    p.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def parse(parser: argparse.ArgumentParser, cmd: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse; values from --config are defaults that explicit arguments override."""
    args = parser.parse_args(cmd)
    if args.config:
        import yaml

        with open(args.config, encoding="utf-8") as f:
            conf = yaml.safe_load(f) or {}
        unknown = set(conf) - set(vars(args))
        if unknown:
            parser.error(f"{args.config}: unknown options {sorted(unknown)}")
        parser.set_defaults(**conf)
        args = parser.parse_args(cmd)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    return args


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--ngpu`` as in ESPnet's inference CLIs: 0 decodes on the CPU, 1 on a CUDA device."""
    parser.add_argument("--ngpu", type=int, default=0,
                        help="0: CPU, 1: the current CUDA device (set CUDA_VISIBLE_DEVICES)")


def add_geometry_arguments(parser: argparse.ArgumentParser) -> None:
    """``--block_size/--hop_size/--look_ahead``: the streaming encoder's geometry at decoding."""
    parser.add_argument("--block_size", type=int, default=None,
                        help="streaming block in encoder frames (default: the training geometry; "
                             "alone: hop and look-ahead from a dynamic-block model's ratios)")
    parser.add_argument("--hop_size", type=int, default=None, help="with --block_size and --look_ahead")
    parser.add_argument("--look_ahead", type=int, default=None, help="with --block_size and --hop_size")


def geometry_of(args: argparse.Namespace) -> Dict[str, Optional[int]]:
    """The geometry options as keyword arguments of Speech2Text / Speech2TextStreaming."""
    return {"block_size": args.block_size, "hop_size": args.hop_size, "look_ahead": args.look_ahead}


def device_of(args: argparse.Namespace) -> str:
    """The torch device named by ``--ngpu``; an error if it asks for what is not there."""
    if args.ngpu < 0:
        raise ValueError(f"--ngpu must be 0 or 1, not {args.ngpu}")
    if args.ngpu > 1:
        raise ValueError("decode with --ngpu 0 or 1; split the list with --key_file for more")
    if args.ngpu == 1 and not torch.cuda.is_available():
        raise RuntimeError("--ngpu 1 but no CUDA device is visible")
    return "cuda" if args.ngpu == 1 else "cpu"


def min_samples(train_args: argparse.Namespace, data: DecodeList) -> int:
    """The shortest input that gives one encoder frame: feature frames (kaldi_ark) or samples."""
    if data.file_type == "kaldi_ark":
        return min_input_frames()
    return min_speech_samples(train_args.frontend_conf)


def decode_list(args: argparse.Namespace, decode: Callable[[List[np.ndarray]], List[List[Result]]],
                train_args: argparse.Namespace, sample_rate: int) -> int:
    """Decode every utterance of the list into args.output_dir; returns the failure count."""
    data = DecodeList.from_triple(args.data_path_and_name_and_type, args.key_file)
    failures = Failures()
    n_min = min_samples(train_args, data)
    with DatadirWriter(args.output_dir) as writer:
        progress = tqdm(total=len(data.keys), desc="decoding", unit="utt")
        for keys, batch in data.batches(args.batch_size, sample_rate, n_min, failures):
            try:
                results = decode(batch)
            except Exception as e:  # one bad batch must not stop the list
                for key in keys:
                    failures.add(key, f"decoding failed: {e}")
                results = []
            for key, nbest in zip(keys, results):
                write_results(writer, key, nbest)
            progress.update(len(keys))
        progress.update(len(data.keys) - progress.n)
        progress.close()
    failures.write(args.output_dir, len(data.keys))
    return len(failures.items)
