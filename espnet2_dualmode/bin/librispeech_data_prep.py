r"""Prepare LibriSpeech-100 as Kaldi data directories, downloading missing parts on request.

Writes train_clean_100, dev_clean, dev_other, test_clean, test_other and dev
(= dev_clean + dev_other) from CORPUS_ROOT/LibriSpeech/<part>/.

Usage:
    python -m espnet2_dualmode.bin.librispeech_data_prep --corpus_root /db --out data \
        --download
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from espnet2_dualmode.recipe.cli import run
from espnet2_dualmode.datasets.librispeech import prepare_librispeech


def get_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_root", required=True,
                        help="folder holding LibriSpeech/<part>/ (and the .tar.gz files)")
    parser.add_argument("--out", required=True, help="folder receiving the data dirs")
    parser.add_argument("--download", action="store_true",
                        help="fetch missing parts from openslr.org (resource 12), check "
                        "their SHA-256 and extract them into --corpus_root")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    """Run the preparation; a corpus problem exits with status 1 and its message."""
    args = get_parser().parse_args(cmd)
    run("librispeech_data_prep", lambda: prepare_librispeech(
        args.corpus_root, args.out, download=args.download))


if __name__ == "__main__":
    main()
