"""Score recognition output (CER/WER) as ESPnet's asr.sh stage 13 does.

For every set and unit, writes ref.trn, hyp.trn and result.txt into
OUTPUT_DIR/score_cer (char) or OUTPUT_DIR/score_wer (word) -- with several sets,
OUTPUT_DIR/<set name>/score_{cer,wer} -- and prints one ESPnet RESULTS.md-style
Markdown table per unit (or, with --json, one JSON object per set and unit).
sclite is used when found ($SCLITE, PATH, /usr/lib/sctk/bin/sclite), otherwise a
pure-Python scorer with identical counts. A `utt2spk` file next to a reference text
supplies the speaker labels of the .trn files, as in ESPnet.

Usage:
    python -m espnet2_dualmode.bin.score --ref_text data/test/text \
        --hyp_text exp/x/decode/test/text --unit char --unit word \
        --output_dir exp/x/decode/test
    python -m espnet2_dualmode.bin.score --unit char --output_dir exp/x/decode \
        --set eval1 data/eval1/text exp/x/decode/eval1/text \
        --set eval2 data/eval2/text exp/x/decode/eval2/text --json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from espnet2_dualmode.datasets.kaldi_dir import read_kaldi_map
from espnet2_dualmode.scoring.scorer import BACKENDS, MARKDOWN_HEADER, score
from espnet2_dualmode.scoring.text import UNITS, read_nlsyms, read_text

SCORE_DIR = {"char": "score_cer", "word": "score_wer"}
TITLE = {"char": "CER", "word": "WER"}


def get_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref_text", help="reference Kaldi text (uttid text...)")
    parser.add_argument("--hyp_text", help="hypothesis Kaldi text (uttid text...)")
    parser.add_argument("--name", help="dataset name in the table for --ref_text/--hyp_text "
                        "(default: the folder name of --hyp_text)")
    parser.add_argument("--set", nargs=3, action="append", default=[],
                        metavar=("NAME", "REF", "HYP"),
                        help="a named set to score; may be repeated (instead of "
                        "--ref_text/--hyp_text)")
    parser.add_argument("--unit", action="append", choices=UNITS,
                        help="token unit, may be repeated (default: char)")
    parser.add_argument("--output_dir", required=True,
                        help="folder receiving score_cer/ and score_wer/")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="sclite, the Python scorer, or sclite when available")
    parser.add_argument("--nlsyms", help="non-linguistic symbols to remove (one per line)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per set and unit instead of Markdown")
    return parser


def _sets(args: argparse.Namespace, parser: argparse.ArgumentParser
          ) -> List[Tuple[str, str, str]]:
    if args.set and (args.ref_text or args.hyp_text):
        parser.error("use either --set or --ref_text/--hyp_text")
    if args.set:
        names = [name for name, _, _ in args.set]
        if len(set(names)) != len(names):
            parser.error(f"--set names must be unique: {names}")
        return [tuple(s) for s in args.set]
    if not (args.ref_text and args.hyp_text):
        parser.error("give --ref_text and --hyp_text, or at least one --set")
    return [(args.name or Path(args.hyp_text).resolve().parent.name,
             args.ref_text, args.hyp_text)]


def main(cmd: Optional[List[str]] = None) -> None:
    """Score every set and unit; bad input exits with status 1 and its message."""
    parser = get_parser()
    args = parser.parse_args(cmd)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    sets = _sets(args, parser)
    units = list(dict.fromkeys(args.unit or ["char"]))
    out = Path(args.output_dir)
    rows = {u: [] for u in units}
    try:
        nlsyms = read_nlsyms(args.nlsyms) if args.nlsyms else []
        for name, ref_path, hyp_path in sets:
            ref, hyp = read_text(ref_path), read_text(hyp_path)
            spk_file = Path(ref_path).parent / "utt2spk"
            utt2spk = read_kaldi_map(spk_file) if spk_file.is_file() else None
            set_dir = out if len(sets) == 1 else out / name
            for unit in units:
                score_dir = set_dir / SCORE_DIR[unit]
                try:
                    counts = score(ref, hyp, unit, backend=args.backend,
                                   non_linguistic_symbols=nlsyms, utt2spk=utt2spk,
                                   output_dir=score_dir)
                except ValueError as err:
                    raise ValueError(f"{hyp_path} against {ref_path}: {err}") from None
                logging.info("%s %s (%s): %s", name, TITLE[unit], counts.backend,
                             counts.markdown_row(name))
                if args.json:
                    print(json.dumps({"dataset": name, "score_dir": str(score_dir),
                                      **counts.to_dict()}, ensure_ascii=False))
                else:
                    rows[unit].append(counts.markdown_row(name))
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        sys.exit(f"score: error: {err}")
    if not args.json:
        for unit in units:
            print(f"### {TITLE[unit]}\n\n{MARKDOWN_HEADER}\n" + "\n".join(rows[unit]) + "\n")


if __name__ == "__main__":
    main()
