"""Split key lists for parallel jobs and merge decoding outputs (stages 10 and 12).

Usage:
    python -m espnet2_dualmode.bin.recipe_jobs split --scp dump/raw/eval1/wav.scp \
        --num_splits 8 --out_dir exp/x/decode/eval1/logdir      # prints the part count
    python -m espnet2_dualmode.bin.recipe_jobs merge --keys dump/raw/eval1/wav.scp \
        --out_dir exp/x/decode/eval1 exp/x/decode/eval1/logdir/output.*

See :mod:`espnet2_dualmode.recipe.jobs`.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from espnet2_dualmode.recipe.cli import run
from espnet2_dualmode.recipe.jobs import merge_decode_outputs, split_scp


def get_parser() -> argparse.ArgumentParser:
    """Command-line options (sub-commands ``split`` and ``merge``)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    split = sub.add_parser("split", help="write OUT_DIR/NAME.<i>.scp, print their number")
    split.add_argument("--scp", required=True, help="key file to split (key ...)")
    split.add_argument("--num_splits", type=int, required=True,
                       help="wanted parts (fewer when there are fewer lines)")
    split.add_argument("--out_dir", required=True)
    split.add_argument("--name", default="keys", help="file name stem of the parts")
    merge = sub.add_parser("merge", help="merge job outputs into OUT_DIR")
    merge.add_argument("--keys", required=True, help="every key that was to be decoded")
    merge.add_argument("--out_dir", required=True)
    merge.add_argument("job_dirs", nargs="+", help="the --output_dir of each job")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    """Parse ``cmd`` (default: sys.argv) and run the sub-command."""
    args = get_parser().parse_args(cmd)
    if args.command == "split":
        run("recipe_jobs split", lambda: print(
            len(split_scp(args.scp, args.num_splits, args.out_dir, args.name))))
    else:
        run("recipe_jobs merge",
            lambda: merge_decode_outputs(args.job_dirs, args.keys, args.out_dir))


if __name__ == "__main__":
    main()
