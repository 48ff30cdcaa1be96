"""Make the synthetic Japanese demo corpus (stage 1 of ``egs2/demo_ja/asr1``).

Usage:
    python -m espnet2_dualmode.bin.make_demo_ja_corpus --out_dir data \\
        --wav_dir downloads/demo_ja --num_train 3000 --num_dev 200 --num_test 200 \\
        --seed 0 --nj 2 [--noise_snr_db 20]

Writes 16 kHz 16-bit WAVs under ``<wav_dir>/{train,dev,test}/`` and Kaldi data dirs
``<out_dir>/{train,dev,test}`` (wav.scp with absolute paths). Re-running with the same
arguments does nothing; other arguments regenerate the corpus. See
:mod:`espnet2_dualmode.datasets.demo_ja` for the voices, splits and layout.
"""

from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from espnet2_dualmode.datasets.demo_ja import (TEST_VOICES, TRAIN_VOICES, CorpusConfig,
                                               make_corpus)


def get_parser() -> argparse.ArgumentParser:
    """Command-line options of the corpus generator."""
    voices = ", ".join(v.speaker_id for v in TRAIN_VOICES)
    parser = argparse.ArgumentParser(
        description="Synthesize the offline Japanese demo corpus with pyopenjtalk. "
        f"train/dev voices: {voices}; test voices (unseen in training): "
        f"{', '.join(v.speaker_id for v in TEST_VOICES)} (s<speed*100>h<semitones*10>).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out_dir", required=True,
                        help="where the Kaldi data dirs train/dev/test are written")
    parser.add_argument("--wav_dir", required=True, help="where the WAV files are written")
    parser.add_argument("--num_train", type=int, default=3000, help="training utterances")
    parser.add_argument("--num_dev", type=int, default=200, help="development utterances")
    parser.add_argument("--num_test", type=int, default=200, help="test utterances")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the sentences and the noise (>= 0)")
    parser.add_argument("--nj", type=int, default=2,
                        help="worker processes (the output does not depend on it)")
    parser.add_argument("--noise_snr_db", type=float, default=None,
                        help="add white Gaussian noise at this SNR in dB (default: none)")
    parser.add_argument("--log_level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    """Parse ``cmd`` (default: sys.argv) and make the corpus."""
    parser = get_parser()
    args = parser.parse_args(cmd)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    try:
        config = CorpusConfig(out_dir=args.out_dir, wav_dir=args.wav_dir,
                              num_train=args.num_train, num_dev=args.num_dev,
                              num_test=args.num_test, seed=args.seed,
                              noise_snr_db=args.noise_snr_db)
        if args.nj < 1:
            raise ValueError(f"--nj must be >= 1, got {args.nj}")
    except ValueError as e:
        parser.error(str(e))
    make_corpus(config, nj=args.nj)


if __name__ == "__main__":
    main()
