"""Train the sentencepiece model of a BPE recipe (stage 5 of ``dualmode_asr.sh``).

Usage:
    python -m espnet2_dualmode.bin.recipe_bpe --text dump/raw/train_clean_100_sp/text \
        --model_prefix data/token_list/bpe_unigram5000/bpe --vocab_size 5000

Writes MODEL_PREFIX.model and .vocab (see :mod:`espnet2_dualmode.recipe.bpe`).
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from espnet2_dualmode.recipe.bpe import train_bpe
from espnet2_dualmode.recipe.cli import run
from espnet2_dualmode.scoring.text import read_nlsyms


def get_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", required=True, help="Kaldi text file (uttid text...)")
    parser.add_argument("--model_prefix", required=True, help="output prefix")
    parser.add_argument("--vocab_size", type=int, required=True)
    parser.add_argument("--model_type", default="unigram",
                        choices=("unigram", "bpe", "char", "word"))
    parser.add_argument("--character_coverage", type=float, default=1.0)
    parser.add_argument("--nlsyms", help="non-linguistic symbols (one per line), kept whole")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    """Parse ``cmd`` (default: sys.argv) and train the model."""
    args = get_parser().parse_args(cmd)
    run("recipe_bpe", lambda: train_bpe(
        args.text, args.model_prefix, args.vocab_size, args.model_type,
        args.character_coverage, read_nlsyms(args.nlsyms) if args.nlsyms else ()))


if __name__ == "__main__":
    main()
