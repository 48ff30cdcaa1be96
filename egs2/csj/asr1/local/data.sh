#!/usr/bin/env bash
# Stage 1 of CSJ: Kaldi data dirs train_nodup, train_nodev, train_dev and eval1-3 from the
# SDB transcripts (python -m dualmode_recipe prep_csj). CSJ is read as distributed: per talk
# an SDB file (one word per line with its unit's start/end times) and its WAV audio, in the
# usb, dvd or merl layout of the copy (see the CSJ documentation; the expected paths of each
# layout are in dualmode_recipe/corpora/csj.py).
set -euo pipefail

# shellcheck disable=SC1091
. ./db.sh
csj_root=${CSJDATATOP}     # the CSJ copy (default: CSJDATATOP of db.sh)
csj_version=${CSJVER}      # usb, dvd or merl
subset=A                   # A: academic lectures only (the paper's "subset A"); all: every talk
train_dev_size=4000        # the first N training utterances form train_dev
dup_cap=300                # about this many utterances per identical text stay in train_nodup

# shellcheck disable=SC2034  # read by parse_options.sh
help_message="Usage: $0 [--csj_root DIR] [--csj_version usb|dvd|merl] [--subset A|all] [--train_dev_size N] [--dup_cap N]"

# shellcheck disable=SC1091
. ./path.sh
# shellcheck disable=SC1091
. "${MAIN_ROOT}/egs2/TEMPLATE/asr1/parse_options.sh"

if [ -z "${csj_root}" ]; then
    echo "$0: where is CSJ? Set CSJDATATOP in db.sh (or the environment), or pass --local_data_opts \"--csj_root DIR\"" >&2
    exit 1
fi
"${PYTHON}" -m dualmode_recipe prep_csj --csj_root "${csj_root}" \
    --csj_version "${csj_version}" --out data --subset "${subset}" \
    --train_dev_size "${train_dev_size}" --dup_cap "${dup_cap}"
