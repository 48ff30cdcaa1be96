"""The recipe toolkit's entry point: ``python -m dualmode_recipe <command> [options]``.

Commands, in the order of the stages of ``egs2/TEMPLATE/asr1/dualmode_asr.sh``:

  prep_csj, prep_librispeech, make_demo_ja   stage 1: corpus -> Kaldi data dirs
  speed_perturb, format, filter, bpe         stages 2-5
  rate, config_value, merge_config           option and config plumbing of the script
  split, merge                               parallel jobs of stages 10 and 12
  score, results, check_empty                stage 13: CER/WER, RESULTS.md, non-speech check
  sweep_geometry, sweep_report               stage 14: block-size sweep of one model
  compare                                    several experiments: Tables 1-2, Figure 2

``python -m dualmode_recipe <command> --help`` shows a command's options. A data or file
problem exits with status 1 and ``dualmode_recipe <command>: error: <message>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, List, Optional

from espnet2.utils.types import str2bool

from dualmode_recipe.audio import AUDIO_FORMATS
from dualmode_recipe.corpora.csj import CSJ_VERSIONS, SUBSETS
from dualmode_recipe.corpora.demo_ja import TEST_VOICES, TRAIN_VOICES
from dualmode_recipe.scoring.scorer import BACKENDS, MARKDOWN_HEADER, TITLE
from dualmode_recipe.scoring.text import UNITS

PROG = "python -m dualmode_recipe"
LOG_FORMAT = "%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s"


def parse_rate(text: str) -> int:
    """``"16k"`` / ``"16000"`` -> 16000 (ESPnet's ``--fs`` spelling).

    Raises:
        ValueError: not a positive number, optionally followed by ``k``.
    """
    value = text.strip().lower()
    scale = 1000 if value.endswith("k") else 1
    try:
        rate = int(float(value[:-1] if scale == 1000 else value) * scale)
    except ValueError:
        raise ValueError(f"sample rate {text!r} is not a number (e.g. 16k or 16000)") from None
    if rate <= 0:
        raise ValueError(f"sample rate {text!r} must be > 0")
    return rate


def _run(args: argparse.Namespace, body: Callable[[], None]) -> None:
    """Run ``body`` with logging set up; a data or file problem exits with status 1 and
    ``dualmode_recipe <command>: error: <message>`` (the recipe prints it from the log)."""
    logging.basicConfig(level=getattr(args, "log_level", "INFO"), format=LOG_FORMAT)
    try:
        body()
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        sys.exit(f"dualmode_recipe {args.command}: error: {err}")


# ---------------------------------------------------------------------------------------
# Stage 1: corpora
# ---------------------------------------------------------------------------------------
def _prep_csj(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.corpora.csj import prepare_csj

    _run(args, lambda: prepare_csj(args.csj_root, args.csj_version, args.out,
                                   subset=args.subset, train_dev_size=args.train_dev_size,
                                   dup_cap=args.dup_cap))


def _add_prep_csj(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csj_root", required=True,
                   help="top folder of the CSJ copy (the one holding MORPH/ and WAV/ for usb, "
                   "dvd3..dvd17 for dvd, CSJ2004/ for merl)")
    p.add_argument("--csj_version", required=True, choices=CSJ_VERSIONS,
                   help="distribution layout of --csj_root")
    p.add_argument("--out", required=True, help="folder receiving the data dirs")
    p.add_argument("--subset", required=True, choices=SUBSETS,
                   help="training talks: A = academic lectures only, all = every talk that "
                   "is not held out (dialogues included)")
    p.add_argument("--train_dev_size", type=int, default=4000,
                   help="first N training utterances (sorted by id) form train_dev")
    p.add_argument("--dup_cap", type=int, default=300,
                   help="about this many utterances per identical text stay in train_nodup "
                   "(Kaldi remove_dup_utts.sh)")


def _prep_librispeech(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.corpora.librispeech import prepare_librispeech

    _run(args, lambda: prepare_librispeech(args.corpus_root, args.out, download=args.download))


def _add_prep_librispeech(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus_root", required=True,
                   help="folder holding LibriSpeech/<part>/ (and the .tar.gz files)")
    p.add_argument("--out", required=True, help="folder receiving the data dirs")
    p.add_argument("--download", action="store_true",
                   help="fetch missing parts from openslr.org (resource 12), check their "
                   "SHA-256 and extract them into --corpus_root")


def _make_demo_ja(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.corpora.demo_ja import CorpusConfig, make_corpus, make_non_speech_set

    try:
        config = CorpusConfig(out_dir=args.out_dir, wav_dir=args.wav_dir,
                              num_train=args.num_train, num_dev=args.num_dev,
                              num_test=args.num_test, seed=args.seed,
                              noise_snr_db=args.noise_snr_db,
                              noise_fraction=args.noise_fraction,
                              pad_seconds=args.pad_seconds, empty_fraction=args.empty_fraction)
        if args.nj < 1:
            raise ValueError(f"--nj must be >= 1, got {args.nj}")
    except ValueError as e:
        parser.error(str(e))
    _run(args, lambda: make_corpus(config, nj=args.nj))
    if args.non_speech_seconds > 0:
        _run(args, lambda: make_non_speech_set(
            Path(args.out_dir) / "non_speech", Path(args.wav_dir) / "non_speech",
            args.non_speech_seconds, args.non_speech_dbfs, args.seed))


def _add_make_demo_ja(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out_dir", required=True,
                   help="where the Kaldi data dirs train/dev/test are written")
    p.add_argument("--wav_dir", required=True, help="where the WAV files are written")
    p.add_argument("--num_train", type=int, default=3000, help="training utterances")
    p.add_argument("--num_dev", type=int, default=200, help="development utterances")
    p.add_argument("--num_test", type=int, default=200, help="test utterances")
    p.add_argument("--seed", type=int, default=0, help="seed of the sentences and the noise (>= 0)")
    p.add_argument("--nj", type=int, default=2,
                   help="worker processes (the output does not depend on it)")
    p.add_argument("--noise_snr_db", type=float, default=None,
                   help="add white Gaussian noise at this SNR in dB (default: none)")
    p.add_argument("--noise_fraction", type=float, default=1.0,
                   help="share of the speech utterances that get the noise")
    p.add_argument("--pad_seconds", type=float, default=0.0,
                   help="leading and trailing silence, each uniform in [0, this] seconds")
    p.add_argument("--empty_fraction", type=float, default=0.0,
                   help="non-speech clips (silence, noise; empty transcript) added to train "
                   "and dev, as a share of their utterances")
    p.add_argument("--non_speech_seconds", type=float, default=0.0,
                   help="also write the test set OUT_DIR/non_speech: digital silence and white "
                   "noise of this length, empty transcripts (0: none)")
    p.add_argument("--non_speech_dbfs", type=float, default=-50.0,
                   help="RMS level of that noise in dB full scale")
    p.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


# ---------------------------------------------------------------------------------------
# Stages 2-5
# ---------------------------------------------------------------------------------------
def _speed_perturb(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.speed_perturb import perturb_data_dir

    _run(args, lambda: perturb_data_dir(args.src, args.dst, args.factors, nj=args.nj))


def _add_speed_perturb(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True, help="input Kaldi data directory")
    p.add_argument("--dst", required=True, help="output data directory (audio goes to DST/audio/)")
    p.add_argument("--factors", nargs="+", required=True,
                   help="speed factors, e.g. 0.9 1.0 1.1 (ids get the prefix sp<f>-)")
    p.add_argument("--nj", type=int, default=1, help="worker processes")


def _format(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.format import format_data_dir

    _run(args, lambda: format_data_dir(args.src, args.dst, args.fs, args.audio_format, args.nj))


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True, help="input Kaldi data directory")
    p.add_argument("--dst", required=True, help="output dump directory")
    p.add_argument("--fs", type=parse_rate, default=16000, help="output sample rate (16k or 16000)")
    p.add_argument("--audio_format", choices=sorted(AUDIO_FORMATS), default="wav")
    p.add_argument("--nj", type=int, default=1, help="worker processes")


def _filter(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.filter import filter_dump_dir

    _run(args, lambda: filter_dump_dir(args.src, args.dst, args.fs, args.min_duration,
                                       args.max_duration, args.keep_empty_text))


def _add_filter(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True, help="dump directory with utt2num_samples")
    p.add_argument("--dst", required=True, help="output dump directory")
    p.add_argument("--fs", type=parse_rate, default=16000,
                   help="sample rate of the dump (16k or 16000)")
    p.add_argument("--min_duration", type=float, default=0.1, help="seconds")
    p.add_argument("--max_duration", type=float, default=20.0, help="seconds")
    p.add_argument("--keep_empty_text", type=str2bool, default=False,
                   help="keep utterances with an empty transcript (silence/noise clips)")


def _bpe(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.bpe import train_bpe
    from dualmode_recipe.scoring.text import read_nlsyms

    _run(args, lambda: train_bpe(args.text, args.model_prefix, args.vocab_size, args.model_type,
                                 args.character_coverage,
                                 read_nlsyms(args.nlsyms) if args.nlsyms else ()))


def _add_bpe(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", required=True, help="Kaldi text file (uttid text...)")
    p.add_argument("--model_prefix", required=True, help="output prefix (.model and .vocab)")
    p.add_argument("--vocab_size", type=int, required=True)
    p.add_argument("--model_type", default="unigram", choices=("unigram", "bpe", "char", "word"))
    p.add_argument("--character_coverage", type=float, default=1.0)
    p.add_argument("--nlsyms", help="non-linguistic symbols (one per line), kept whole")


# ---------------------------------------------------------------------------------------
# Option and config plumbing of the stage script
# ---------------------------------------------------------------------------------------
def _rate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    _run(args, lambda: print(parse_rate(args.rate)))


def _add_rate(p: argparse.ArgumentParser) -> None:
    p.add_argument("rate", help="a sample rate such as 16k or 16000")


def _config_value(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.config import config_value, load_mapping

    def body() -> None:
        try:
            value = config_value(load_mapping(args.config), args.key)
        except KeyError:
            value = None
        print("" if value is None else value)

    _run(args, body)


def _add_config_value(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config")
    p.add_argument("--key", required=True,
                   help="a key, dotted for nested ones (null and a missing key print an "
                   "empty line)")


def _merge_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.config import write_merged_config

    _run(args, lambda: write_merged_config(args.config, args.overrides, args.output))


def _add_merge_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="base YAML config")
    p.add_argument("--output", required=True, help="merged config to write")
    p.add_argument("overrides", nargs="*",
                   help="YAMLs holding only the keys they change, merged in order (nested "
                   "mappings key by key)")


# ---------------------------------------------------------------------------------------
# Parallel jobs (stages 10 and 12)
# ---------------------------------------------------------------------------------------
def _split(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.jobs import split_scp

    _run(args, lambda: print(len(split_scp(args.scp, args.num_splits, args.out_dir, args.name))))


def _add_split(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scp", required=True, help="key file to split (key ...)")
    p.add_argument("--num_splits", type=int, required=True,
                   help="wanted parts (fewer when there are fewer lines)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--name", default="keys", help="file name stem of the parts")


def _merge(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.jobs import merge_decode_outputs

    _run(args, lambda: merge_decode_outputs(args.job_dirs, args.keys, args.out_dir))


def _add_merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", required=True, help="every key that was to be decoded")
    p.add_argument("--out_dir", required=True)
    p.add_argument("job_dirs", nargs="+", help="the --output_dir of each job")


# ---------------------------------------------------------------------------------------
# Stage 13 and comparisons
# ---------------------------------------------------------------------------------------
def _score(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.scoring.scorer import score_sets
    from dualmode_recipe.scoring.text import read_nlsyms

    if args.set and (args.ref_text or args.hyp_text):
        parser.error("use either --set or --ref_text/--hyp_text")
    if args.set:
        names = [name for name, _, _ in args.set]
        if len(set(names)) != len(names):
            parser.error(f"--set names must be unique: {names}")
        sets = [tuple(s) for s in args.set]
    elif args.ref_text and args.hyp_text:
        sets = [(args.name or Path(args.hyp_text).resolve().parent.name,
                 args.ref_text, args.hyp_text)]
    else:
        parser.error("give --ref_text and --hyp_text, or at least one --set")
    units = list(dict.fromkeys(args.unit or ["char"]))

    def body() -> None:
        nlsyms = read_nlsyms(args.nlsyms) if args.nlsyms else []
        scored = score_sets(sets, units, args.output_dir, args.backend, nlsyms)
        if args.json:
            for name, score_dir, counts in scored:
                print(json.dumps({"dataset": name, "score_dir": str(score_dir),
                                  **counts.to_dict()}, ensure_ascii=False))
            return
        for unit in units:
            rows = [c.markdown_row(name) for name, _, c in scored if c.unit == unit]
            print(f"### {TITLE[unit]}\n\n{MARKDOWN_HEADER}\n" + "\n".join(rows) + "\n")

    _run(args, body)


def _add_score(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Score recognition output (CER/WER) as ESPnet's asr.sh stage 13 does. For every "
        "set and unit, writes ref.trn, hyp.trn and result.txt into OUTPUT_DIR/score_cer "
        "(char) or OUTPUT_DIR/score_wer (word) -- with several sets, OUTPUT_DIR/<set "
        "name>/score_{cer,wer} -- and prints one RESULTS.md-style Markdown table per unit "
        "(or, with --json, one JSON object per set and unit). sclite is used when found "
        "($SCLITE, PATH, /usr/lib/sctk/bin/sclite), otherwise a Python scorer with "
        "identical counts. A utt2spk file next to a reference text gives the speaker "
        "labels of the .trn files, as in ESPnet.")
    p.add_argument("--ref_text", help="reference Kaldi text (uttid text...)")
    p.add_argument("--hyp_text", help="hypothesis Kaldi text (uttid text...)")
    p.add_argument("--name", help="dataset name in the table for --ref_text/--hyp_text "
                   "(default: the folder name of --hyp_text)")
    p.add_argument("--set", nargs=3, action="append", default=[], metavar=("NAME", "REF", "HYP"),
                   help="a named set to score; may be repeated (instead of "
                   "--ref_text/--hyp_text)")
    p.add_argument("--unit", action="append", choices=UNITS,
                   help="token unit, may be repeated (default: char)")
    p.add_argument("--output_dir", required=True, help="folder receiving score_cer/ and score_wer/")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="sclite, the Python scorer, or sclite when available")
    p.add_argument("--nlsyms", help="non-linguistic symbols to remove (one per line)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per set and unit instead of Markdown")


def _results(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.results import results_markdown

    def body() -> None:
        text = results_markdown(args.decode_dir, args.heads, args.test_sets, args.units,
                                args.title, args.latency_set)
        Path(args.output).write_text(text, encoding="utf-8")
        print(text)

    _run(args, body)


def _check_empty(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.empty_check import empty_check_markdown

    def body() -> None:
        report, ok = empty_check_markdown(args.decode_dir, args.heads, args.test_set)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(report, encoding="utf-8")
        if not ok:
            raise RuntimeError(f"non-empty output on the non-speech set {args.test_set} "
                               f"(see {args.output}):\n{report}")

    _run(args, body)


def _add_check_empty(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decode_dir", required=True, help="holds <head>/<test_set>/text")
    p.add_argument("--heads", nargs="+", required=True)
    p.add_argument("--test_set", required=True, help="a set whose transcripts are all empty")
    p.add_argument("--output", required=True, help="Markdown report")


def _add_results(p: argparse.ArgumentParser) -> None:
    p.description = ("Write RESULTS.md from DECODE_DIR/<head>/<set>/scores.json and "
                     "DECODE_DIR/latency/latency.json, and print it.")
    p.add_argument("--decode_dir", required=True)
    p.add_argument("--heads", nargs="+", required=True, help="table rows")
    p.add_argument("--test_sets", nargs="+", required=True, help="table columns")
    p.add_argument("--units", nargs="+", choices=sorted(TITLE), default=["char"])
    p.add_argument("--title", required=True, help="heading of the report")
    p.add_argument("--latency_set", default="", help="test set the latency was measured on")
    p.add_argument("--output", required=True, help="RESULTS.md to write")


def _learning_curve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.learning_curve import write_learning_curve

    _run(args, lambda: print(write_learning_curve(args.checkpoint, args.output_dir,
                                                  args.title)))


def _add_learning_curve(p: argparse.ArgumentParser) -> None:
    p.description = ("Write OUTPUT_DIR/learning_curve.md (a row per epoch: cumulative minutes "
                     "of the training and validation loops, validation greedy CER of every "
                     "head that reports one) and OUTPUT_DIR/learning_curve.png (CER against "
                     "minutes) from the reporter saved in an ESPnet checkpoint.pth, and print "
                     "the Markdown.")
    p.add_argument("--checkpoint", required=True, help="<exp dir>/checkpoint.pth")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--title", required=True, help="heading of the table and the plot")


def _sweep_geometry(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.sweep import geometry_name, geometry_options, sweep_geometry

    def body() -> None:
        lines = []
        for block in args.block_sizes:
            g = sweep_geometry(block, args.hop_ratio, args.look_ahead_ratio)
            lines.append(" ".join([geometry_name(g), *geometry_options(g)]) + "\n")
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text("".join(lines), encoding="utf-8")
        else:
            print("".join(lines), end="")

    if len(set(args.block_sizes)) != len(args.block_sizes):
        parser.error(f"--block_sizes must be unique: {args.block_sizes}")
    _run(args, body)


def _add_sweep_geometry(p: argparse.ArgumentParser) -> None:
    p.description = ("For each block size, one line: the folder name of its geometry and the "
                     "decoding options --block_size N --hop_size N --look_ahead N, with hop "
                     "and look-ahead as ratios of the block rounded half up (the rule of "
                     "dynamic-block training).")
    p.add_argument("--block_sizes", type=int, nargs="+", required=True,
                   help="in subsampled frames")
    p.add_argument("--hop_ratio", type=float, default=0.4)
    p.add_argument("--look_ahead_ratio", type=float, default=0.4)
    p.add_argument("--output", help="file to write the lines to (default: print them)")


def _sweep_report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.sweep import write_sweep_report

    _run(args, lambda: print(write_sweep_report(
        args.sweep_dir, args.block_sizes, args.hop_ratio, args.look_ahead_ratio, args.heads,
        args.test_sets, args.units, args.title, args.latency_set)))


def _add_sweep_report(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Gather a block-size sweep of one model (stage 14: SWEEP_DIR/<geometry>/<head>/<set>/"
        "scores.json and SWEEP_DIR/<geometry>/latency/latency.json) into SWEEP_DIR/sweep.md "
        "(a row per geometry: block, hop, look-ahead, algorithmic latency, error rate per "
        "head and set, RTF, emission delay P50/P90), SWEEP_DIR/sweep.png (error rate "
        "against algorithmic latency, first unit) and SWEEP_DIR/sweep.json (read by "
        "compare --sweep); print the Markdown.")
    p.add_argument("--sweep_dir", required=True)
    p.add_argument("--block_sizes", type=int, nargs="+", required=True)
    p.add_argument("--hop_ratio", type=float, default=0.4)
    p.add_argument("--look_ahead_ratio", type=float, default=0.4)
    p.add_argument("--heads", nargs="+", required=True, help="decoding heads, table columns")
    p.add_argument("--test_sets", nargs="+", required=True)
    p.add_argument("--units", nargs="+", choices=sorted(TITLE), default=["char"])
    p.add_argument("--title", required=True, help="heading of the report")
    p.add_argument("--latency_set", required=True, help="test set the latency was measured on")


def _compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from dualmode_recipe.compare import write_comparison, write_sweep_comparison

    names = args.names or [Path(d).name.removeprefix("asr_") for d in args.exp_dirs]
    if len(names) != len(args.exp_dirs):
        parser.error(f"--names has {len(names)} names for {len(args.exp_dirs)} --exp_dirs")
    if len(set(names)) != len(names):
        parser.error(f"experiment names must be unique: {names}")
    if args.offline_head == "streaming":
        parser.error("--offline_head must be a full-context head, not streaming")
    if args.sweep:
        if args.figure_x or args.baseline:
            parser.error("--sweep does not take --figure_x or --baseline")
        _run(args, lambda: print(write_sweep_comparison(
            args.exp_dirs, names, args.test_sets, args.unit, args.output_dir,
            args.offline_head, args.inference_tag)))
        return
    _run(args, lambda: print(write_comparison(
        args.exp_dirs, names, args.test_sets, args.unit, args.output_dir, args.offline_head,
        args.inference_tag, args.baseline, args.table2_block_size, args.table2_baseline,
        args.figure_x)))


def _add_compare(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Compare scored recipe experiments in the layouts of the paper's Tables 1-2 and "
        "Figure 2. Each experiment's streaming row comes from decoding head 'streaming' and "
        "its full-context row from --offline_head, for the modes its model has "
        "(config.yaml). Writes OUTPUT_DIR/comparison.md (Table 1 layout: a row per "
        "experiment; Table 2 layout: a row per distillation method at --table2_block_size) "
        "and prints it; with --figure_x, also OUTPUT_DIR/figure_<key>.png (Figure 2 layout: "
        "error rate against the config value, a line per method and mode, a panel per "
        "test set). With --sweep, instead: the block-size sweeps of one model per experiment "
        "(stage 14, <decode dir>/sweep/sweep.json) side by side, OUTPUT_DIR/sweeps.md and "
        "OUTPUT_DIR/figure_sweeps.png (error rate against algorithmic latency, a colour per "
        "experiment, streaming solid and --offline_head dashed).")
    p.add_argument("--exp_dirs", nargs="+", required=True,
                   help="experiment folders exp/asr_<tag>, in row order")
    p.add_argument("--names", nargs="+",
                   help="a name per experiment (default: folder name without asr_)")
    p.add_argument("--baseline", nargs="+", default=[],
                   help="experiment name(s) of the Table 1 baselines: per mode, the first that "
                   "has a row of that mode (default: the first row of each mode)")
    p.add_argument("--test_sets", nargs="+", required=True, help="table columns")
    p.add_argument("--unit", choices=sorted(TITLE), default="char", help="char (CER) or word (WER)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--offline_head", default="rnnt",
                   help="decoding head of the full-context rows (rnnt, ctc, attention, "
                   "maskctc, joint)")
    p.add_argument("--inference_tag",
                   help="decoding folder inside each experiment (default: the only one)")
    p.add_argument("--table2_block_size", type=int, default=40,
                   help="block size of the experiments in the Table 2 layout")
    p.add_argument("--table2_baseline", default="mse-ED",
                   help="distillation method of the Table 2 baselines, when present "
                   "(otherwise the first row of each mode)")
    p.add_argument("--figure_x",
                   help="draw the Figure 2 layout against this config.yaml value: a dotted "
                   "key, or a key of stream_encoder_conf such as block_size")
    p.add_argument("--sweep", action="store_true",
                   help="compare the experiments' stage-14 block-size sweeps instead")


COMMANDS = {
    "prep_csj": (_add_prep_csj, _prep_csj,
                 "CSJ -> data dirs train_nodup, train_nodev, train_dev, eval1-3"),
    "prep_librispeech": (_add_prep_librispeech, _prep_librispeech,
                         "LibriSpeech-100 -> data dirs train_clean_100, dev_clean, dev_other, "
                         "test_clean, test_other and dev (downloads missing parts on request)"),
    "make_demo_ja": (_add_make_demo_ja, _make_demo_ja,
                     "synthesize the offline Japanese demo corpus with pyopenjtalk (16 kHz "
                     "WAVs and data dirs train/dev/test; a re-run with the same arguments "
                     "does nothing). Train/dev voices: "
                     + ", ".join(v.speaker_id for v in TRAIN_VOICES) + "; test voices "
                     "(unseen in training): " + ", ".join(v.speaker_id for v in TEST_VOICES)),
    "speed_perturb": (_add_speed_perturb, _speed_perturb,
                      "speed-perturb a training data dir (stage 2)"),
    "format": (_add_format, _format,
               "dump a data dir as one audio file per utterance: cut segments, resample "
               "(stage 3)"),
    "filter": (_add_filter, _filter,
               "remove too short, too long and empty-text utterances of a dump dir (stage 4)"),
    "bpe": (_add_bpe, _bpe, "train the sentencepiece model of a BPE recipe (stage 5)"),
    "rate": (_add_rate, _rate, "print a sample rate in Hz (16k -> 16000)"),
    "config_value": (_add_config_value, _config_value,
                     "print one value of a YAML config"),
    "merge_config": (_add_merge_config, _merge_config,
                     "write a config with override YAMLs deep-merged onto it"),
    "split": (_add_split, _split,
              "split a key list into OUT_DIR/NAME.<i>.scp; print the number of parts"),
    "merge": (_add_merge, _merge, "merge the decoding outputs of parallel jobs into OUT_DIR"),
    "score": (_add_score, _score, "score recognition output (CER/WER) as ESPnet's stage 13"),
    "results": (_add_results, _results, "write RESULTS.md of a decoding directory"),
    "check_empty": (_add_check_empty, _check_empty,
                    "fail unless every head decoded a non-speech test set to empty text"),
    "learning_curve": (_add_learning_curve, _learning_curve,
                       "write the learning curve (validation CER against training minutes) "
                       "of a trained model"),
    "sweep_geometry": (_add_sweep_geometry, _sweep_geometry,
                       "print the geometry of a block size in the sweep (stage 14)"),
    "sweep_report": (_add_sweep_report, _sweep_report,
                     "write the table and plot of a block-size sweep of one model (stage 14)"),
    "compare": (_add_compare, _compare,
                "compare scored experiments (paper's Tables 1-2 and Figure 2 layouts), or with "
                "--sweep their one-model block-size sweeps side by side"),
}


def get_parser() -> argparse.ArgumentParser:
    """The parser with one sub-parser per command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, handler, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_arguments(p)
        p.set_defaults(handler=handler, command_parser=p)
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    """Parse ``cmd`` (default: sys.argv) and run its command."""
    args = get_parser().parse_args(cmd)
    args.handler(args, args.command_parser)


if __name__ == "__main__":
    main()
