"""Speed-perturb a training data directory (stage 2 of ``dualmode_asr.sh``).

Usage:
    python -m espnet2_dualmode.bin.recipe_speed_perturb --src data/train_nodup \
        --dst data/train_nodup_sp --factors 0.9 1.0 1.1 --nj 4

See :mod:`espnet2_dualmode.recipe.speed_perturb` for the ids and the audio written.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from espnet2_dualmode.recipe.cli import run
from espnet2_dualmode.recipe.speed_perturb import perturb_data_dir


def get_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="input Kaldi data directory")
    parser.add_argument("--dst", required=True,
                        help="output data directory (audio goes to DST/audio/)")
    parser.add_argument("--factors", nargs="+", required=True,
                        help="speed factors, e.g. 0.9 1.0 1.1 (ids get the prefix sp<f>-)")
    parser.add_argument("--nj", type=int, default=1, help="worker processes")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    """Parse ``cmd`` (default: sys.argv) and write the perturbed directory."""
    args = get_parser().parse_args(cmd)
    run("recipe_speed_perturb",
        lambda: perturb_data_dir(args.src, args.dst, args.factors, nj=args.nj))


if __name__ == "__main__":
    main()
