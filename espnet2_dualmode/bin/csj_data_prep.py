r"""Prepare CSJ as Kaldi data directories (train_nodup, train_nodev, train_dev, eval1-3).

Usage:
    python -m espnet2_dualmode.bin.csj_data_prep --csj_root /db/CSJ --csj_version usb \
        --out data --subset A
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from espnet2_dualmode.recipe.cli import run
from espnet2_dualmode.datasets.csj import CSJ_VERSIONS, SUBSETS, prepare_csj


def get_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csj_root", required=True,
                        help="top folder of the CSJ copy (the one holding MORPH/ and WAV/ "
                        "for usb, dvd3..dvd17 for dvd, CSJ2004/ for merl)")
    parser.add_argument("--csj_version", required=True, choices=CSJ_VERSIONS,
                        help="distribution layout of --csj_root")
    parser.add_argument("--out", required=True, help="folder receiving the data dirs")
    parser.add_argument("--subset", required=True, choices=SUBSETS,
                        help="training talks: A = academic lectures only, all = every "
                        "talk that is not held out (dialogues included)")
    parser.add_argument("--train_dev_size", type=int, default=4000,
                        help="first N training utterances (sorted by id) form train_dev")
    parser.add_argument("--dup_cap", type=int, default=300,
                        help="about this many utterances per identical text stay in "
                        "train_nodup (Kaldi remove_dup_utts.sh)")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    """Run the preparation; a corpus problem exits with status 1 and its message."""
    args = get_parser().parse_args(cmd)
    run("csj_data_prep", lambda: prepare_csj(
        args.csj_root, args.csj_version, args.out, subset=args.subset,
        train_dev_size=args.train_dev_size, dup_cap=args.dup_cap))


if __name__ == "__main__":
    main()
