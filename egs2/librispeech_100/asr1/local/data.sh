#!/usr/bin/env bash
# Stage 1 of LibriSpeech-100: data dirs train_clean_100, dev_clean, dev_other, test_clean,
# test_other and dev (= dev_clean + dev_other), from a local copy or downloaded.
set -euo pipefail

# shellcheck disable=SC1091
. ./db.sh
corpus_root=${LIBRISPEECH}   # holds LibriSpeech/<part>/ (default: LIBRISPEECH of db.sh)
download=false               # true: fetch missing parts from openslr.org into corpus_root

# shellcheck disable=SC2034  # read by parse_options.sh
help_message="Usage: $0 [--corpus_root DIR] [--download true|false]"

# shellcheck disable=SC1091
. ./path.sh
# shellcheck disable=SC1091
. "${MAIN_ROOT}/egs2/TEMPLATE/asr1/parse_options.sh"

download_opts=()
case "${download}" in
    true) download_opts=(--download) ;;
    false) ;;
    *) echo "$0: --download must be true or false, got '${download}'" >&2; exit 2 ;;
esac
"${PYTHON}" -m dualmode_recipe prep_librispeech --corpus_root "${corpus_root}" \
    --out data "${download_opts[@]}"
