#!/usr/bin/env bash
# LibriSpeech-100 as ESPnet's egs2/librispeech_100 recipe: train_clean_100, validation on
# dev (= dev_clean + dev_other), BPE 5000 (unigram), speed perturbation 0.9/1.0/1.1,
# utterances up to 30 s, FLAC dumps, WER. Missing corpus parts are downloaded into
# LIBRISPEECH (db.sh); point it at a local copy to skip the download.
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
