#!/usr/bin/env bash
# CSJ, the paper's setup: train on subset A (academic lectures, train_nodup), validate on
# train_dev, test on eval1-3; characters; speed perturbation 0.9/1.0/1.1; beam 10.
# Set CSJDATATOP/CSJVER in db.sh. Other models: --asr_config conf/train_<name>.yaml, with
# --decode_heads "streaming" for train_st1_context_t and "rnnt" for train_nst1_conformer_t.
set -euo pipefail
# shellcheck disable=SC1091
. ./db.sh

local_data_opts="--subset A"
if [ -n "${CSJDATATOP}" ]; then
    local_data_opts+=" --csj_root ${CSJDATATOP} --csj_version ${CSJVER}"
fi

./dualmode_asr.sh \
    --ngpu 1 \
    --nj 8 \
    --train_set train_nodup \
    --valid_set train_dev \
    --test_sets "eval1 eval2 eval3" \
    --local_data_opts "${local_data_opts}" \
    --speed_perturb_factors "0.9 1.0 1.1" \
    --token_type char \
    --asr_config conf/train_joint_sp_ed.yaml \
    --inference_config conf/decode_asr.yaml \
    --decode_heads "streaming rnnt ctc attention maskctc" \
    "$@"
