#!/usr/bin/env bash
# Offline Japanese demo: a synthetic corpus (pyopenjtalk voices; test voices unseen in
# training), the joint model with encoder-side sp-KD (ST5/NST5) at a size that trains on a
# 2-core CPU, CER of every head and mode, then RTF and emission delay of the streaming mode.
#   ./run.sh [--corpus_size tiny|small|full] [dualmode_asr.sh options, e.g. --stage 11]
# The joint head's weights are tuned on dev (stage 12, --tune_joint); the non_speech test set
# must decode to empty text (stage 13). Figure 2 from this one model, after the default
# stages (a table and a PNG of CER against algorithmic latency, in exp/<model>/decode_*/sweep/):
#   ./run.sh --stage 14 --sweep_block_sizes "4 6 8 12 16" \
#       --sweep_hop_ratio 0.5 --sweep_look_ahead_ratio 0.25     # the ratios of 8/4/2
# The default model is trained at 8/4/2 only, so the other block sizes decode with a
# warning; a model trained with dynamic blocks covers them all: the same command with
# --asr_config_overrides conf/dynamic_blocks.yaml and without --stage 14.
# The Dual-mode variant (shared weights, in-place KD) at the demo's size, with and without KD and
# FastEmit (conf/train_dualmode_shared_small.yaml; not part of the default run), then the
# cascade and the variants in the Table 1/2 layouts (CER of both modes, parameters, Latency@50/@90
# against the synthesis timing, token emission delay); each combination of the overrides:
#   ./run.sh --asr_config conf/train_dualmode_shared_small.yaml --decode_heads "streaming rnnt" \
#       --tune_joint false [--asr_config_overrides "conf/no_inplace_kd.yaml conf/fastemit.yaml"]
#   python -m dualmode_recipe compare --test_sets test --output_dir exp/compare_dualmode \
#       --exp_dirs exp/asr_train_joint_sp_ed_small_raw_char \
#       exp/asr_train_dualmode_shared_small{,_fastemit,_no_inplace_kd,_no_inplace_kd_fastemit}_raw_char
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
    tiny) sizes="--num_train 24 --num_dev 4 --num_test 4 --non_speech_seconds 10"
          args=(--non_speech_check report "${args[@]}") ;;  # too little data to learn silence
    small) sizes="--num_train 2000 --num_dev 100 --num_test 100 --non_speech_seconds 60" ;;
    full) sizes="--num_train 3000 --num_dev 200 --num_test 200 --non_speech_seconds 60" ;;
    *) echo "$0: --corpus_size must be tiny, small or full, got '${corpus_size}'" >&2; exit 2 ;;
esac
# Up to 0.3 s of silence before and after the speech, white noise at 25 dB SNR on half of
# the utterances, and 10 % extra clips of silence or noise with an empty transcript: the
# model learns to emit nothing on silence and noise (local/data.sh, --keep_empty_text).
# The test set non_speech (60 s of digital silence, 60 s of white noise at -50 dBFS; 10 s
# each for tiny) must decode to empty text in every head: stage 13 fails otherwise.
corpus_opts="--pad_seconds 0.3 --noise_snr_db 25 --noise_fraction 0.5 --empty_fraction 0.1"

./dualmode_asr.sh \
    --ngpu 0 \
    --cpu_train_procs 2 \
    --nj 2 \
    --train_set train \
    --valid_set dev \
    --test_sets test \
    --empty_test_sets non_speech \
    --local_data_opts "${sizes} ${corpus_opts} --nj 2" \
    --keep_empty_text true \
    --token_type char \
    --asr_config conf/train_joint_sp_ed_small.yaml \
    --inference_config conf/decode_asr.yaml \
    --decode_heads "streaming rnnt ctc attention maskctc joint" \
    --tune_joint true \
    "${args[@]}"
