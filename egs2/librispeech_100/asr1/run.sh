#!/usr/bin/env bash
# LibriSpeech-100 as ESPnet's egs2/librispeech_100 recipe: train_clean_100, validation on
# dev (= dev_clean + dev_other), BPE 5000 (unigram), speed perturbation 0.9/1.0/1.1,
# utterances up to 30 s, FLAC dumps, WER. Missing corpus parts are downloaded into
# LIBRISPEECH (db.sh); point it at a local copy to skip the download.
# Figure 2 from one model: train with dynamic blocks (block 10-60, conf/dynamic_blocks.yaml),
# then stage 14 decodes it at each block size (streaming and full-context RNN-T, scored,
# RTF and emission delay) into exp/asr_<tag>/<decode dir>/sweep/sweep.{md,png}:
#   ./run.sh --asr_config conf/train_joint_sp_ed.yaml --asr_config_overrides conf/dynamic_blocks.yaml \
#       --sweep_block_sizes "10 20 30 40 50 60"      (likewise train_joint_mse_ed.yaml), then
#   python -m dualmode_recipe compare --sweep --names sp-ED mse-ED --test_sets test_clean test_other \
#       --exp_dirs exp/asr_train_joint_{sp_ed,mse_ed}_dynamic_blocks_raw_bpe5000_sp --output_dir exp/compare_sweeps
# The Dual-mode variant (one Conformer with shared weights; conf/paper/dualmode/README.md) with
# and without in-place KD and FastEmit, next to the cascade in Table 1/2 layouts with
# parameters and latency columns:
#   ./run.sh --asr_config conf/train_dualmode_shared.yaml \
#       [--asr_config_overrides "conf/no_inplace_kd.yaml conf/fastemit.yaml"]   (each combination), then
#   python -m dualmode_recipe compare --test_sets test_clean test_other --output_dir exp/compare_dualmode \
#       --exp_dirs exp/asr_train_joint_sp_ed_raw_bpe5000_sp \
#       exp/asr_train_dualmode_shared{,_fastemit,_no_inplace_kd,_no_inplace_kd_fastemit}_raw_bpe5000_sp
set -euo pipefail
# shellcheck disable=SC1091
. ./db.sh

./dualmode_asr.sh \
    --ngpu 1 \
    --nj 8 \
    --train_set train_clean_100 \
    --valid_set dev \
    --test_sets "test_clean test_other dev_clean dev_other" \
    --local_data_opts "--corpus_root ${LIBRISPEECH} --download true" \
    --speed_perturb_factors "0.9 1.0 1.1" \
    --max_wav_duration 30 \
    --audio_format flac \
    --token_type bpe \
    --nbpe 5000 \
    --bpemode unigram \
    --asr_config conf/train_joint_sp_ed.yaml \
    --inference_config conf/decode_asr.yaml \
    --decode_heads "streaming rnnt ctc attention maskctc" \
    --score_units word \
    "$@"
