"""Compare scored recipe experiments in the layouts of the paper's Tables 1-2 and Figure 2.

Usage (from a recipe folder, after stages 12-13 of every experiment):
    python -m espnet2_dualmode.bin.compare_experiments \
        --exp_dirs exp/asr_train_st1_context_t_raw_char_sp \
            exp/asr_train_nst1_conformer_t_raw_char_sp exp/asr_train_joint_sp_ed_raw_char_sp \
        --names Context-T Conformer-T "Joint + sp-ED" --baseline Context-T Conformer-T \
        --test_sets eval1 eval2 eval3 --unit char --output_dir exp/compare
    python -m espnet2_dualmode.bin.compare_experiments --exp_dirs exp/asr_*_block*_raw_bpe5000_sp \
        --test_sets test_clean test_other --unit word --output_dir exp/compare_blocks \
        --figure_x block_size

Each experiment's streaming row comes from decoding head ``streaming`` and its
full-context row from --offline_head, for the modes its model has (config.yaml). Writes
OUTPUT_DIR/comparison.md (Table 1 layout: a row per experiment; Table 2 layout: a row per
distillation method at --table2_block_size) and prints it; with --figure_x, also
OUTPUT_DIR/figure_<key>.png (Figure 2 layout: error rate against the config value, a line
per distillation method and mode, a panel per test set). See
:mod:`espnet2_dualmode.recipe.compare`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from espnet2_dualmode.recipe.cli import run
from espnet2_dualmode.recipe.compare import comparison_markdown, load_experiment, plot_figure
from espnet2_dualmode.recipe.results import TITLE


def get_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp_dirs", nargs="+", required=True,
                        help="experiment folders exp/asr_<tag>, in row order")
    parser.add_argument("--names", nargs="+",
                        help="a name per experiment (default: folder name without asr_)")
    parser.add_argument("--baseline", nargs="+", default=[],
                        help="experiment name(s) of the Table 1 baselines: per mode, the first "
                        "that has a row of that mode (default: the first row of each mode)")
    parser.add_argument("--test_sets", nargs="+", required=True, help="table columns")
    parser.add_argument("--unit", choices=sorted(TITLE), default="char",
                        help="char (CER) or word (WER)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--offline_head", default="rnnt",
                        help="decoding head of the full-context rows (rnnt, ctc, attention, "
                        "maskctc, joint)")
    parser.add_argument("--inference_tag",
                        help="decoding folder inside each experiment (default: the only one)")
    parser.add_argument("--table2_block_size", type=int, default=40,
                        help="block size of the experiments in the Table 2 layout")
    parser.add_argument("--table2_baseline", default="mse-ED",
                        help="distillation method of the Table 2 baselines, when present "
                        "(otherwise the first row of each mode)")
    parser.add_argument("--figure_x",
                        help="draw the Figure 2 layout against this config.yaml value: a dotted "
                        "key, or a key of stream_encoder_conf such as block_size")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    """Parse ``cmd`` (default: sys.argv), write and print the comparison."""
    parser = get_parser()
    args = parser.parse_args(cmd)
    names = args.names or [Path(d).name.removeprefix("asr_") for d in args.exp_dirs]
    if len(names) != len(args.exp_dirs):
        parser.error(f"--names has {len(names)} names for {len(args.exp_dirs)} --exp_dirs")
    if len(set(names)) != len(names):
        parser.error(f"experiment names must be unique: {names}")
    if args.offline_head == "streaming":
        parser.error("--offline_head must be a full-context head, not streaming")

    def body() -> None:
        experiments = [load_experiment(d, n, args.test_sets, args.unit, args.offline_head,
                                       args.inference_tag)
                       for d, n in zip(args.exp_dirs, names)]
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = comparison_markdown(experiments, args.test_sets, args.unit, args.baseline,
                                   args.table2_block_size, args.table2_baseline)
        if args.figure_x:
            key = args.figure_x if "." in args.figure_x else f"stream_encoder_conf.{args.figure_x}"
            figure = out / f"figure_{key.rsplit('.', 1)[-1]}.png"
            plot_figure(experiments, args.test_sets, args.unit, key, figure)
            text += f"\nFigure: {figure.name}\n"
        (out / "comparison.md").write_text(text, encoding="utf-8")
        print(text)

    run("compare_experiments", body)


if __name__ == "__main__":
    main()
