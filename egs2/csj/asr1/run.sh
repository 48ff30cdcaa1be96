#!/usr/bin/env bash
# CSJ, the paper's setup: train on subset A (academic lectures, train_nodup), validate on
# train_dev, test on eval1-3; characters; speed perturbation 0.9/1.0/1.1; beam 10.
# Set CSJDATATOP/CSJVER in db.sh. Other models: --asr_config conf/train_<name>.yaml, with
# --decode_heads "streaming" for train_st1_context_t and "rnnt" for train_nst1_conformer_t.
# Figure 2 from one model: train with dynamic blocks (block 10-60, conf/dynamic_blocks.yaml),
# then stage 14 decodes it at each block size (streaming and full-context RNN-T, scored,
# RTF and emission delay) into exp/asr_<tag>/<decode dir>/sweep/sweep.{md,png}:
#   ./run.sh --asr_config conf/train_joint_sp_ed.yaml --asr_config_overrides conf/dynamic_blocks.yaml \
#       --sweep_block_sizes "10 20 30 40 50 60"      (likewise train_joint_mse_ed.yaml), then
#   python -m dualmode_recipe compare --sweep --names sp-ED mse-ED --test_sets eval1 eval2 eval3 \
#       --exp_dirs exp/asr_train_joint_{sp_ed,mse_ed}_dynamic_blocks_raw_char_sp --output_dir exp/compare_sweeps
# The Dual-mode variant (one Conformer with shared weights; conf/paper/dualmode/README.md) with
# and without in-place KD and FastEmit, next to the cascade in Table 1/2 layouts with
# parameters and latency columns:
#   ./run.sh --asr_config conf/train_dualmode_shared.yaml \
#       [--asr_config_overrides "conf/no_inplace_kd.yaml conf/fastemit.yaml"]   (each combination), then
#   python -m dualmode_recipe compare --test_sets eval1 eval2 eval3 --output_dir exp/compare_dualmode \
#       --exp_dirs exp/asr_train_joint_sp_ed_raw_char_sp \
#       exp/asr_train_dualmode_shared{,_fastemit,_no_inplace_kd,_no_inplace_kd_fastemit}_raw_char_sp
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
