"""Dump a Kaldi data directory as one audio file per utterance (stage 3 of ``dualmode_asr.sh``).

Usage:
    python -m espnet2_dualmode.bin.recipe_format --src data/eval1 --dst dump/raw/eval1 \
        --fs 16k --audio_format wav --nj 4

Cuts segments, resamples to --fs and writes DST/{wav.scp,text,utt2spk,spk2utt,
utt2num_samples} with the audio under DST/data/ (see
:mod:`espnet2_dualmode.recipe.format`).
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from espnet2_dualmode.recipe.audio import AUDIO_FORMATS
from espnet2_dualmode.recipe.cli import run, sample_rate
from espnet2_dualmode.recipe.format import format_data_dir


def get_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="input Kaldi data directory")
    parser.add_argument("--dst", required=True, help="output dump directory")
    parser.add_argument("--fs", type=sample_rate, default=16000,
                        help="output sample rate (16k or 16000)")
    parser.add_argument("--audio_format", choices=sorted(AUDIO_FORMATS), default="wav")
    parser.add_argument("--nj", type=int, default=1, help="worker processes")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    """Parse ``cmd`` (default: sys.argv) and dump the directory."""
    args = get_parser().parse_args(cmd)
    run("recipe_format", lambda: format_data_dir(args.src, args.dst, args.fs,
                                                 args.audio_format, args.nj))


if __name__ == "__main__":
    main()
