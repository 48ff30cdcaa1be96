#!/usr/bin/env bash
# Stage 1 of the demo: synthesize the Japanese corpus (data/{train,dev,test}) offline with
# pyopenjtalk. Re-running with the same options does nothing; other options regenerate it.
set -euo pipefail

num_train=3000
num_dev=200
num_test=200
seed=0
nj=2
noise_snr_db=          # e.g. 20 (empty: clean speech)
noise_fraction=1.0     # share of the speech utterances that get that noise
pad_seconds=0          # leading / trailing silence, each up to this many seconds
empty_fraction=0       # non-speech clips with empty text added to train and dev (share)
non_speech_seconds=0   # > 0: also data/non_speech, 60-s silence and noise (empty text)
wav_dir=downloads/demo_ja

# shellcheck disable=SC2034  # read by parse_options.sh
help_message="Usage: $0 [--num_train N] [--num_dev N] [--num_test N] [--seed S] [--nj J] [--noise_snr_db DB] [--noise_fraction P] [--pad_seconds S] [--empty_fraction P] [--non_speech_seconds S] [--wav_dir DIR]"

# shellcheck disable=SC1091
. ./path.sh
# shellcheck disable=SC1091
. "${MAIN_ROOT}/egs2/TEMPLATE/asr1/parse_options.sh"

noise_opts=()
if [ -n "${noise_snr_db}" ]; then noise_opts=(--noise_snr_db "${noise_snr_db}"); fi
"${PYTHON}" -m dualmode_recipe make_demo_ja --out_dir data --wav_dir "${wav_dir}" \
    --num_train "${num_train}" --num_dev "${num_dev}" --num_test "${num_test}" \
    --seed "${seed}" --nj "${nj}" --noise_fraction "${noise_fraction}" \
    --pad_seconds "${pad_seconds}" --empty_fraction "${empty_fraction}" \
    --non_speech_seconds "${non_speech_seconds}" "${noise_opts[@]}"
