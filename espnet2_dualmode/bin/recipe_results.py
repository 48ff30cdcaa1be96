"""Write RESULTS.md from the scores and latency of a decoding directory (stage 13).

Usage:
    python -m espnet2_dualmode.bin.recipe_results --decode_dir exp/asr_x/decode_asr \
        --heads streaming rnnt ctc --test_sets eval1 eval2 eval3 --units char \
        --title "exp/asr_x decode_asr" --output exp/asr_x/RESULTS.md

Reads DECODE_DIR/<head>/<set>/scores.json and DECODE_DIR/latency/latency.json (see
:mod:`espnet2_dualmode.recipe.results`) and prints the report as well.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from espnet2_dualmode.recipe.cli import run
from espnet2_dualmode.recipe.results import TITLE, results_markdown


def get_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decode_dir", required=True)
    parser.add_argument("--heads", nargs="+", required=True, help="table rows")
    parser.add_argument("--test_sets", nargs="+", required=True, help="table columns")
    parser.add_argument("--units", nargs="+", choices=sorted(TITLE), default=["char"])
    parser.add_argument("--title", required=True, help="heading of the report")
    parser.add_argument("--latency_set", default="", help="test set the latency was measured on")
    parser.add_argument("--output", required=True, help="RESULTS.md to write")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    """Parse ``cmd`` (default: sys.argv), write and print the report."""
    args = get_parser().parse_args(cmd)

    def body() -> None:
        text = results_markdown(args.decode_dir, args.heads, args.test_sets, args.units,
                                args.title, args.latency_set)
        Path(args.output).write_text(text, encoding="utf-8")
        print(text)

    run("recipe_results", body)


if __name__ == "__main__":
    main()
