#!/usr/bin/env bash
# Offline Japanese demo: a synthetic corpus (pyopenjtalk voices; test voices unseen in
# training), the joint model with encoder-side sp-KD (ST5/NST5) at a size that trains on a
# 2-core CPU, CER of every head and mode, then RTF and emission delay of the streaming mode.
#   ./run.sh [--corpus_size tiny|small|full] [dualmode_asr.sh options, e.g. --stage 11]
set -euo pipefail

corpus_size=small      # tiny: 24/4/4 utterances (CI), small: 2000/100/100, full: 3000/200/200
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --corpus_size) [ $# -ge 2 ] || { echo "$0: --corpus_size needs a value" >&2; exit 2; }
                       corpus_size=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
case "${corpus_size}" in
    tiny) sizes="--num_train 24 --num_dev 4 --num_test 4" ;;
    small) sizes="--num_train 2000 --num_dev 100 --num_test 100" ;;
    full) sizes="--num_train 3000 --num_dev 200 --num_test 200" ;;
    *) echo "$0: --corpus_size must be tiny, small or full, got '${corpus_size}'" >&2; exit 2 ;;
esac

./dualmode_asr.sh \
    --ngpu 0 \
    --cpu_train_procs 2 \
    --nj 2 \
    --train_set train \
    --valid_set dev \
    --test_sets test \
    --local_data_opts "${sizes} --nj 2" \
    --token_type char \
    --asr_config conf/train_joint_sp_ed_small.yaml \
    --inference_config conf/decode_asr.yaml \
    --decode_heads "streaming rnnt ctc attention maskctc joint" \
    "${args[@]}"
