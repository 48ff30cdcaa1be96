"""Remove too short, too long and empty-text utterances (stage 4 of ``dualmode_asr.sh``).

Usage:
    python -m espnet2_dualmode.bin.recipe_filter --src dump/raw/org/train_nodup_sp \
        --dst dump/raw/train_nodup_sp --fs 16k --min_duration 0.1 --max_duration 20

The removals are logged with their count per reason.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from espnet2_dualmode.recipe.cli import run, sample_rate
from espnet2_dualmode.recipe.filter import filter_dump_dir


def get_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="dump directory with utt2num_samples")
    parser.add_argument("--dst", required=True, help="output dump directory")
    parser.add_argument("--fs", type=sample_rate, default=16000,
                        help="sample rate of the dump (16k or 16000)")
    parser.add_argument("--min_duration", type=float, default=0.1, help="seconds")
    parser.add_argument("--max_duration", type=float, default=20.0, help="seconds")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    """Parse ``cmd`` (default: sys.argv) and write the filtered directory."""
    args = get_parser().parse_args(cmd)
    run("recipe_filter", lambda: filter_dump_dir(args.src, args.dst, args.fs,
                                                 args.min_duration, args.max_duration))


if __name__ == "__main__":
    main()
