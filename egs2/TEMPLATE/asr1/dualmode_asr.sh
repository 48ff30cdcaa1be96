#!/usr/bin/env bash
# Stage script shared by the espnet2-dualmode recipes (egs2/*/asr1 symlink it).
# Stage numbers and directory layout follow ESPnet's egs2/TEMPLATE/asr1/asr.sh:
#   1 data preparation   2 speed perturbation   3 format (dump)   4 filtering
#   5 token list        10 statistics          11 training       12 decoding
#  13 scoring and RESULTS.md (with the learning curve: validation CER against minutes)
#  14 block-size sweep of the trained model (only with --sweep_block_sizes): Figure 2 from
#     one model, <decode dir>/sweep/sweep.{md,png}
# Every stage leaves a marker (.done_stageN) recording the arguments that shape its
# output; a re-run skips a stage whose marker matches and re-runs it otherwise (a changed
# upstream stage changes the markers downstream, so they re-run too).
set -E -e -u -o pipefail

log() {
    local source=${BASH_SOURCE[1]:-$0}
    local where="${source##*/}:${BASH_LINENO[0]}:${FUNCNAME[1]:-main}"
    local line
    line="$(date '+%Y-%m-%dT%H:%M:%S') (${where}) $*"
    echo "${line}"
    if [ -n "${stage_log:-}" ]; then echo "${line}" >> "${stage_log}"; fi
}

# ---------------------------------------------------------------------------------------
# Options (each one is settable as --name value)
# ---------------------------------------------------------------------------------------
stage=1                  # first stage to run
stop_stage=14            # last stage to run (14 does nothing without --sweep_block_sizes)
ngpu=1                   # GPUs for training (0: CPU); > 1 trains with one process per GPU
cpu_train_procs=1        # with --ngpu 0: training processes (gloo), one thread each
num_nodes=1              # nodes for training (> 1: one srun task per node, needs --cmd_backend slurm)
nj=4                     # parallel jobs for stages 2-3, 10 and (by default) 12
inference_nj=            # parallel decoding jobs per test set (default: --nj)
gpu_inference=false      # decode on GPU (one per job)
dumpdir=dump             # where stage 3-4 write the audio dumps
expdir=exp               # where statistics, models, decodings and logs go
cmd_backend=local        # local: jobs run here; slurm: jobs go to sbatch (./cmd.sh, conf/slurm.conf)
cpu_cmd=                 # job command of data preparation, format, statistics, scoring (./cmd.sh)
train_cmd=               # job command of training (./cmd.sh)
decode_cmd=              # job command of decoding and the latency measurement (./cmd.sh)

# Data
train_set=               # training data dir under data/ (required)
valid_set=               # validation data dir under data/ (required)
test_sets=               # test data dirs under data/, space-separated (required)
empty_test_sets=         # test data dirs of non-speech audio (silence, noise) with empty
                         # transcripts: stage 12 decodes them with every head, stage 13
                         # checks that every output is empty
non_speech_check=strict  # strict: stage 13 fails on a non-empty output; report: only
                         # reports it in RESULTS.md (a model too small to learn silence)
local_data_opts=         # options of local/data.sh
speed_perturb_factors=   # e.g. "0.9 1.0 1.1" (empty: no speed perturbation)
fs=16k                   # sample rate of the dump
audio_format=wav         # wav or flac
min_wav_duration=0.1     # stage 4 removes shorter training/validation utterances (s)
max_wav_duration=20      # ... and longer ones (s)
keep_empty_text=false    # stage 4 keeps utterances with an empty transcript (silence/noise
                         # clips); training then learns from them (--keep_empty_text)

# Tokens
token_type=char          # char or bpe
nbpe=30                  # sentencepiece vocabulary size (token_type=bpe)
bpemode=unigram          # sentencepiece model type: unigram or bpe
bpe_char_cover=1.0       # sentencepiece character coverage
nlsyms_txt=none          # non-linguistic symbols, one per line (none: no such file)
blank="<blank>"          # token 0
oov="<unk>"              # token 1
sos_eos="<sos/eos>"      # last token
token_listdir=data/token_list

# Training
asr_config=              # training config (required)
asr_config_overrides=    # YAMLs holding only changed keys, deep-merged onto --asr_config in
                         # order, "a.yaml b.yaml"; the merged config goes to the experiment
asr_args=                # extra training options, e.g. "--max_epoch 1"
preflight_batches=2      # before epoch 1, forward+backward on the K largest training batches:
                         # peak memory is logged, an out-of-memory names the batch (0: off)
tag=                     # experiment name: exp/asr_<tag> (default: from config and tokens)
asr_stats_dir=           # default: exp/asr_stats_raw_<token_type>[<nbpe>][_sp]

# Decoding and scoring
decode_heads="streaming rnnt ctc attention maskctc"  # streaming = chunk-wise binary
inference_config=        # decoding config of every head (empty: the binaries' defaults)
inference_head_configs=  # per-head overrides, "head=conf.yaml head2=conf2.yaml"
tune_joint=false         # stage 12 tunes the joint head's rescoring weights on --valid_set
                         # (n-best of --joint_nbest_heads pooled) before decoding the tests
joint_nbest_heads=rnnt+attention  # heads whose n-best lists joint pools, with --tune_joint
inference_args=          # extra decoding options
inference_tag=           # default: <config name>_asr_model_<model name>
inference_asr_model=valid.loss.ave.pth
sim_chunk_length=640     # samples per chunk fed to the streaming binary
measure_latency=true     # measure RTF / emission delay on the first test set (stage 12)
latency_max_utts=100     # utterances used for the latency measurement
score_units=             # char and/or word (default: char for char tokens, else word)

# Block-size sweep of one model (stage 14)
sweep_block_sizes=       # e.g. "10 20 30 40 50 60" (empty: no stage 14)
sweep_hop_ratio=0.4      # hop = ratio x block rounded half up (a hop of 0 is an error)
sweep_look_ahead_ratio=0.4  # look-ahead = ratio x block rounded half up
sweep_heads="streaming rnnt"  # streaming path and the full-context heads to decode per geometry

# shellcheck disable=SC2034  # read by parse_options.sh
help_message=$(cat <<EOF
Usage: $0 --train_set <name> --valid_set <name> --test_sets "<names>" --asr_config <yaml> [options]

Runs the stages of an espnet2-dualmode recipe from its directory (egs2/<corpus>/asr1).
  1 local/data.sh          2 speed perturbation    3 dump audio (cut, resample)
  4 filter utterances      5 token list           10 feature statistics
 11 training (resumes)    12 decoding per head    13 scoring, RESULTS.md
 14 block-size sweep of the trained model (with --sweep_block_sizes)
Finished stages are skipped when re-run with the same arguments.

Options (default in brackets):
  --stage, --stop_stage     stages to run [${stage}, ${stop_stage}]
  --ngpu                    GPUs for training, 0 = CPU [${ngpu}]
  --cpu_train_procs         with --ngpu 0, training processes of one thread each [${cpu_train_procs}]
  --num_nodes               training nodes; > 1 needs a scheduler [${num_nodes}]
  --nj                      parallel jobs [${nj}]
  --inference_nj            parallel decoding jobs per test set [--nj]
  --gpu_inference           decode on GPU [${gpu_inference}]
  --dumpdir, --expdir       output folders [${dumpdir}, ${expdir}]
  --cmd_backend             local (background processes) or slurm (sbatch) [${cmd_backend}]
  --cpu_cmd, --train_cmd, --decode_cmd
                            job commands replacing those of ./cmd.sh: "local", or a command
                            called as ESPnet calls slurm.pl: CMD [--gpu N] [--num_threads N]
                            [--num_nodes N] [--tasks_per_node N] [JOB=1:N] LOG COMMAND...
  --train_set, --valid_set  data dirs under data/ (required)
  --test_sets               data dirs under data/, space-separated (required)
  --empty_test_sets         non-speech data dirs that must decode to empty text [${empty_test_sets}]
  --non_speech_check        strict (fail on text) or report [${non_speech_check}]
  --local_data_opts         options of local/data.sh [${local_data_opts}]
  --speed_perturb_factors   e.g. "0.9 1.0 1.1"; empty = none [${speed_perturb_factors}]
  --fs                      sample rate of the dump [${fs}]
  --audio_format            wav or flac [${audio_format}]
  --min_wav_duration, --max_wav_duration  stage 4 limits in seconds [${min_wav_duration}, ${max_wav_duration}]
  --keep_empty_text         stage 4 keeps, and training uses, empty-transcript utterances [${keep_empty_text}]
  --token_type              char or bpe [${token_type}]
  --nbpe, --bpemode, --bpe_char_cover  sentencepiece settings [${nbpe}, ${bpemode}, ${bpe_char_cover}]
  --nlsyms_txt              non-linguistic symbols file [${nlsyms_txt}]
  --blank, --oov, --sos_eos special tokens [${blank} ${oov} ${sos_eos}]
  --token_listdir           [${token_listdir}]
  --asr_config              training config (required)
  --asr_config_overrides    YAMLs of changed keys merged onto it (nested keys one by one),
                            "conf/a.yaml conf/b.yaml"; the experiment trains on the merged
                            exp/asr_<tag>/merged_asr_config.yaml and its default tag gets
                            _<override name> per file [${asr_config_overrides}]
  --asr_args                extra training options [${asr_args}]
  --preflight_batches       largest batches tried before training, 0 = off [${preflight_batches}]
  --tag                     experiment name, exp/asr_<tag> [from config and tokens]
  --asr_stats_dir           statistics folder [exp/asr_stats_raw_<tokens>]
  --decode_heads            heads/modes to decode; "streaming" runs the chunk-wise
                            binary, others are --decode_head of the offline one
                            [${decode_heads}]
  --inference_config        decoding config for every head [${inference_config}]
  --inference_head_configs  per-head configs, "ctc=conf/a.yaml maskctc=conf/b.yaml"
  --tune_joint              tune the joint weights on the valid set in stage 12 [${tune_joint}]
  --joint_nbest_heads       n-best heads pooled by the tuned joint decoding [${joint_nbest_heads}]
  --inference_args          extra decoding options [${inference_args}]
  --inference_tag           decoding folder name [<config name>_asr_model_<model name>]
  --inference_asr_model     checkpoint under the experiment [${inference_asr_model}]
  --sim_chunk_length        samples per chunk of the streaming binary [${sim_chunk_length}]
  --measure_latency         RTF and emission delay on the first test set [${measure_latency}]
  --latency_max_utts        utterances for the latency measurement [${latency_max_utts}]
  --score_units             "char", "word" or both [char for char tokens, else word]
  --sweep_block_sizes       stage 14: decode, score and time the trained model at each of
                            these block sizes (subsampled frames), e.g. "10 20 40"; writes
                            <decode dir>/sweep/sweep.md and sweep.png (error rate against
                            algorithmic latency) [${sweep_block_sizes:-none: no stage 14}]
  --sweep_hop_ratio, --sweep_look_ahead_ratio
                            hop and look-ahead of each block size as ratios of it, rounded
                            half up [${sweep_hop_ratio}, ${sweep_look_ahead_ratio}]
  --sweep_heads             heads decoded at each geometry; the full-context heads change
                            with it too (cascaded on the streaming encoder) [${sweep_heads}]
EOF
)

# ---------------------------------------------------------------------------------------
# Argument parsing: every variable defined above is an option.
# ---------------------------------------------------------------------------------------
run_args=$(printf '%q ' "$0" "$@")
[ -f ./path.sh ] || { echo "$0: run me from a recipe directory (egs2/<corpus>/asr1): no ./path.sh" >&2; exit 1; }
# shellcheck disable=SC1091
. ./path.sh
# shellcheck disable=SC1091
. "${MAIN_ROOT}/egs2/TEMPLATE/asr1/parse_options.sh"
python=${PYTHON:?path.sh sets PYTHON}

for name in train_set valid_set test_sets asr_config; do
    [ -n "${!name}" ] || usage_error "--${name} is required"
done
for name in stage stop_stage ngpu nj nbpe sim_chunk_length latency_max_utts preflight_batches \
        cpu_train_procs num_nodes; do
    [[ "${!name}" =~ ^[0-9]+$ ]] || usage_error "--${name} must be a non-negative integer, got '${!name}'"
done
for block in ${sweep_block_sizes}; do
    [[ "${block}" =~ ^[1-9][0-9]*$ ]] || usage_error "--sweep_block_sizes takes positive integers, got '${block}'"
done
for name in sweep_hop_ratio sweep_look_ahead_ratio; do
    [[ "${!name}" =~ ^(0(\.[0-9]*)?|1(\.0*)?|\.[0-9]+)$ ]] || usage_error "--${name} must be a number in [0, 1], got '${!name}'"
done
if [ -n "${sweep_block_sizes}" ] && [ -z "${sweep_heads}" ]; then
    usage_error "--sweep_heads is empty"
fi
[ "${nj}" -ge 1 ] || usage_error "--nj must be >= 1"
[ "${num_nodes}" -ge 1 ] || usage_error "--num_nodes must be >= 1"
case "${cmd_backend}" in local|slurm) ;; *) usage_error "--cmd_backend must be local or slurm" ;; esac
case "${keep_empty_text}" in true|false) ;; *) usage_error "--keep_empty_text must be true or false" ;; esac
case "${tune_joint}" in true|false) ;; *) usage_error "--tune_joint must be true or false" ;; esac
case "${non_speech_check}" in strict|report) ;; *) usage_error "--non_speech_check must be strict or report" ;; esac
# The job commands of the backend (ESPnet's cmd.sh); --cpu_cmd/--train_cmd/--decode_cmd win.
if [ -f ./cmd.sh ]; then
    # shellcheck disable=SC1091
    . ./cmd.sh
fi
for name in cpu_cmd train_cmd decode_cmd; do
    [ -n "${!name}" ] || usage_error "--${name} is empty and ./cmd.sh does not set it for --cmd_backend ${cmd_backend}"
done
if [ "${num_nodes}" -gt 1 ] && [ "${train_cmd%% *}" = local ]; then
    usage_error "--num_nodes ${num_nodes} needs a scheduler: --cmd_backend slurm or a --train_cmd"
fi
inference_nj=${inference_nj:-${nj}}
[[ "${inference_nj}" =~ ^[1-9][0-9]*$ ]] || usage_error "--inference_nj must be >= 1"
case "${token_type}" in char|bpe) ;; *) usage_error "--token_type must be char or bpe" ;; esac
case "${audio_format}" in wav|flac) ;; *) usage_error "--audio_format must be wav or flac" ;; esac
case "${gpu_inference}" in true|false) ;; *) usage_error "--gpu_inference must be true or false" ;; esac
case "${measure_latency}" in true|false) ;; *) usage_error "--measure_latency must be true or false" ;; esac
if [ -z "${score_units}" ]; then
    if [ "${token_type}" = char ]; then score_units=char; else score_units=word; fi
fi
for unit in ${score_units}; do
    case "${unit}" in char|word) ;; *) usage_error "--score_units takes char and/or word, got '${unit}'" ;; esac
done

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
stage_log=
on_error() {
    local rc=$? line=$1
    echo "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[0]##*/}:${line}) error: a command failed with exit status ${rc}" >&2
    if [ -n "${stage_log}" ] && [ -f "${stage_log}" ]; then
        echo "---- last lines of ${stage_log} ----" >&2
        tail -n 40 "${stage_log}" >&2
        echo "----" >&2
    fi
    exit "${rc}"
}
trap 'on_error ${LINENO}' ERR

# begin_stage N LOGDIR DESCRIPTION: start the stage log LOGDIR/stageN.log (appended).
begin_stage() {
    local n=$1 logdir=$2
    shift 2
    mkdir -p "${logdir}"
    stage_log=${logdir}/stage${n}.log
    echo "===== $(date '+%Y-%m-%dT%H:%M:%S') stage ${n}: $* =====" >> "${stage_log}"
    log "Stage ${n}: $* (log: ${stage_log})"
}

# run_logged COMMAND...: run COMMAND with its output appended to the stage log.
run_logged() {
    echo "# $*" >> "${stage_log}"
    "$@" >> "${stage_log}" 2>&1
}

# run_step JOBCMD LOG COMMAND...: run COMMAND through the job command JOBCMD (cmd.sh):
# with "local" here, its output appended to the stage log; otherwise as one job logging
# to LOG, whose log is then appended to the stage log.
run_step() {
    local -a jobcmd
    read -r -a jobcmd <<< "$1"
    local job_log=$2
    shift 2
    if [ "${jobcmd[0]}" = local ]; then
        run_logged "$@"
        return
    fi
    echo "# $* (job log: ${job_log})" >> "${stage_log}"
    rm -f "${job_log}"  # the stage markers decided to run it: never skipped as finished
    local rc=0
    run_job_command "${jobcmd[@]}" "${job_log}" "$@" || rc=$?
    if [ -f "${job_log}" ]; then cat "${job_log}" >> "${stage_log}"; fi
    return "${rc}"
}

# run_job_command JOBCMD... ARGS...: a scheduler's job command; what it prints goes to the
# stage log, and to stderr as well when it fails (it names the failed jobs' logs).
run_job_command() {
    local rc=0 out
    out=$("$@" 2>&1) || rc=$?
    printf '%s\n' "${out}" >> "${stage_log}"
    if [ "${rc}" -ne 0 ]; then printf '%s\n' "${out}" >&2; fi
    return "${rc}"
}

# run_jobs JOBCMD NJ LOGDIR NAME COMMAND...: run COMMAND NJ times, JOB replaced by 1..NJ in
# every argument, job i logging to LOGDIR/NAME.i.log. With the job command "local" the jobs
# run side by side here (__RANK__ replaced by 0..NJ-1) and the tail of each failed job's log
# is printed; otherwise JOBCMD runs them (and names the log of each failed job).
run_jobs() {
    local -a jobcmd
    read -r -a jobcmd <<< "$1"
    local nj=$2 logdir=$3 name=$4
    shift 4
    local -a pids=() failed=()
    local i
    mkdir -p "${logdir}"
    if [ "${jobcmd[0]}" != local ]; then
        run_job_command "${jobcmd[@]}" "JOB=1:${nj}" "${logdir}/${name}.JOB.log" "$@"
        return
    fi
    for i in $(seq 1 "${nj}"); do
        local -a cmd=("${@//JOB/${i}}")
        cmd=("${cmd[@]//__RANK__/$((i - 1))}")
        echo "# ${cmd[*]}" > "${logdir}/${name}.${i}.log"
        ( trap - ERR; "${cmd[@]}" ) >> "${logdir}/${name}.${i}.log" 2>&1 &
        pids+=($!)
    done
    for i in $(seq 1 "${nj}"); do
        wait "${pids[$((i - 1))]}" || failed+=("${i}")
    done
    echo "# ${nj} job(s) of ${name}, logs ${logdir}/${name}.*.log, failed: ${failed[*]:-none}" >> "${stage_log}"
    if [ ${#failed[@]} -gt 0 ]; then
        for i in "${failed[@]}"; do
            log "job ${i}/${nj} failed; last lines of ${logdir}/${name}.${i}.log:"
            tail -n 30 "${logdir}/${name}.${i}.log" >&2
        done
        return 1
    fi
}

# hash_of FILE: short content hash ("none" when FILE does not exist).
hash_of() {
    if [ -f "$1" ]; then sha256sum < "$1" | cut -c1-16; else echo none; fi
}

# already_done MARKER SIGNATURE: true (and logged) when MARKER holds SIGNATURE; otherwise
# the stale marker is removed so that an interrupted re-run is never taken as finished.
already_done() {
    local marker=$1 signature=$2
    if [ -f "${marker}" ] && [ "$(cat "${marker}")" = "${signature}" ]; then
        log "skipped: already done with the same arguments (${marker})"
        return 0
    fi
    if [ -f "${marker}" ]; then
        log "arguments or inputs changed since ${marker}; running again"
        rm -f "${marker}"
    fi
    return 1
}

mark_done() {
    mkdir -p "$(dirname "$1")"
    printf '%s\n' "$2" > "$1"
}

# fresh_logdir JOBCMD DIR SIGNATURE: an empty DIR for the jobs of a step. With a scheduler's
# job command, a DIR left by a failed or interrupted attempt with the same SIGNATURE is kept
# instead: its finished jobs are not submitted again.
fresh_logdir() {
    local jobcmd=$1 dir=$2 signature=$3
    if [ "${jobcmd%% *}" != local ] && [ -f "${dir}/.attempt" ] \
            && [ "$(cat "${dir}/.attempt")" = "${signature}" ]; then
        log "resuming the jobs in ${dir}: finished jobs are not submitted again"
        return
    fi
    rm -rf "${dir}"
    if [ "${jobcmd%% *}" != local ]; then mark_done "${dir}/.attempt" "${signature}"; fi
}

min() {
    if [ "$1" -le "$2" ]; then echo "$1"; else echo "$2"; fi
}

num_lines() {
    wc -l < "$1" | tr -d ' '
}

config_value() {
    "${python}" -m dualmode_recipe config_value --config "$1" --key "$2"
}

# ---------------------------------------------------------------------------------------
# Derived names (ESPnet's layout)
# ---------------------------------------------------------------------------------------
fs_hz=$("${python}" -m dualmode_recipe rate "${fs}" 2>/dev/null) \
    || usage_error "--fs must be a rate such as 16k or 16000, got '${fs}'"
data_feats=${dumpdir}/raw
orig_train_set=${train_set}
if [ -n "${speed_perturb_factors}" ]; then
    train_set=${train_set}_sp
fi
if [ "${token_type}" = bpe ]; then
    tokendir=${token_listdir}/bpe_${bpemode}${nbpe}
    bpeprefix=${tokendir}/bpe
    bpemodel=${bpeprefix}.model
    tokenizer_opts=(--token_type bpe --bpemodel "${bpemodel}")
    token_suffix=bpe${nbpe}
else
    tokendir=${token_listdir}/char
    tokenizer_opts=(--token_type char)
    token_suffix=char
fi
token_list=${tokendir}/tokens.txt
# Options of the training binary (stages 10 and 11).
token_opts=("${tokenizer_opts[@]}" --token_list "${token_list}"
            --non_linguistic_symbols "${nlsyms_txt}" --cleaner none --g2p none)
sp_suffix=${speed_perturb_factors:+_sp}
if [ -z "${tag}" ]; then
    tag=$(basename "${asr_config}" .yaml)
    for override in ${asr_config_overrides}; do tag+="_$(basename "${override}" .yaml)"; done
    tag+="_raw_${token_suffix}${sp_suffix}"
    if [ -n "${asr_args}" ]; then
        tag+="$(echo "${asr_args}" | sed -e 's/--/_/g' -e 's/[ |=/]//g')"
    fi
fi
asr_exp=${expdir}/asr_${tag}
# The config that stages 10-11 read: --asr_config itself, or the experiment's own merge of
# it with --asr_config_overrides (written below, before stage 10).
if [ -n "${asr_config_overrides}" ]; then
    train_config=${asr_exp}/merged_asr_config.yaml
else
    train_config=${asr_config}
fi
asr_stats_dir=${asr_stats_dir:-${expdir}/asr_stats_raw_${token_suffix}${sp_suffix}}
if [ -z "${inference_tag}" ]; then
    inference_tag="$(basename "${inference_config:-decode_default}" .yaml)_asr_model_$(echo "${inference_asr_model}" | sed -e 's#/#_#g' -e 's/\.[^.]*$//')"
fi
decode_root=${asr_exp}/${inference_tag}
data_logdir=${expdir}/logs

# inference_config_of HEAD: the decoding config of HEAD (may be empty).
inference_config_of() {
    local item
    for item in ${inference_head_configs}; do
        if [ "${item%%=*}" = "$1" ]; then echo "${item#*=}"; return; fi
    done
    echo "${inference_config}"
}

log "$0 ${run_args#* }"

# ---------------------------------------------------------------------------------------
# Stage 1: data preparation
# ---------------------------------------------------------------------------------------
if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    begin_stage 1 "${data_logdir}" "data preparation: local/data.sh ${local_data_opts}"
    sig=$(printf '%s\n' "local_data_opts=${local_data_opts}" "data.sh=$(hash_of local/data.sh)")
    if ! already_done data/.done_stage1 "${sig}"; then
        # shellcheck disable=SC2086
        run_step "${cpu_cmd} --num_threads ${nj}" "${data_logdir}/data_prep.log" \
            local/data.sh ${local_data_opts}
        mark_done data/.done_stage1 "${sig}"
    fi
fi

# ---------------------------------------------------------------------------------------
# Stage 2: speed perturbation
# ---------------------------------------------------------------------------------------
if [ -n "${speed_perturb_factors}" ] && [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    begin_stage 2 "${data_logdir}" "speed perturbation of data/${orig_train_set}: ${speed_perturb_factors}"
    sig=$(printf '%s\n' "src=data/${orig_train_set}" "factors=${speed_perturb_factors}" \
        "upstream=$(hash_of data/.done_stage1)")
    if ! already_done "data/${train_set}/.done_stage2" "${sig}"; then
        # shellcheck disable=SC2086
        run_step "${cpu_cmd} --num_threads ${nj}" "${data_logdir}/speed_perturb.log" \
            "${python}" -m dualmode_recipe speed_perturb \
            --src "data/${orig_train_set}" --dst "data/${train_set}" \
            --factors ${speed_perturb_factors} --nj "${nj}"
        mark_done "data/${train_set}/.done_stage2" "${sig}"
    fi
fi

# dump_dir SET: where stage 3 writes SET (training and validation sets go to org/ and
# are filtered into dump/raw/<set> by stage 4; test sets are used as dumped).
dump_dir() {
    if [ "$1" = "${train_set}" ] || [ "$1" = "${valid_set}" ]; then
        echo "${data_feats}/org/$1"
    else
        echo "${data_feats}/$1"
    fi
}

# final_marker SET: the marker of the last stage that wrote dump/raw/SET (4 for the
# training and validation sets, 3 for the others).
final_marker() {
    if [ "$1" = "${train_set}" ] || [ "$1" = "${valid_set}" ]; then
        echo "${data_feats}/$1/.done_stage4"
    else
        echo "${data_feats}/$1/.done_stage3"
    fi
}

# ---------------------------------------------------------------------------------------
# Stage 3: format / dump
# ---------------------------------------------------------------------------------------
if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    begin_stage 3 "${data_logdir}" "dump ${train_set} ${valid_set} ${test_sets} ${empty_test_sets} at ${fs} (${audio_format})"
    for dset in "${train_set}" "${valid_set}" ${test_sets} ${empty_test_sets}; do
        out=$(dump_dir "${dset}")
        if [ "${dset}" = "${train_set}" ] && [ -n "${speed_perturb_factors}" ]; then
            upstream=$(hash_of "data/${train_set}/.done_stage2")
        else
            upstream=$(hash_of data/.done_stage1)
        fi
        sig=$(printf '%s\n' "src=data/${dset}" "fs=${fs_hz}" "audio_format=${audio_format}" \
            "upstream=${upstream}")
        if ! already_done "${out}/.done_stage3" "${sig}"; then
            run_step "${cpu_cmd} --num_threads ${nj}" "${data_logdir}/format.${dset}.log" \
                "${python}" -m dualmode_recipe format --src "data/${dset}" \
                --dst "${out}" --fs "${fs_hz}" --audio_format "${audio_format}" --nj "${nj}"
            mark_done "${out}/.done_stage3" "${sig}"
        fi
    done
fi

# ---------------------------------------------------------------------------------------
# Stage 4: remove short, long and empty-text utterances from training and validation
# ---------------------------------------------------------------------------------------
if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
    begin_stage 4 "${data_logdir}" "filter ${train_set} ${valid_set}: ${min_wav_duration} s .. ${max_wav_duration} s, keep empty text: ${keep_empty_text}"
    for dset in "${train_set}" "${valid_set}"; do
        sig=$(printf '%s\n' "min=${min_wav_duration}" "max=${max_wav_duration}" \
            "keep_empty_text=${keep_empty_text}" \
            "upstream=$(hash_of "${data_feats}/org/${dset}/.done_stage3")")
        if ! already_done "${data_feats}/${dset}/.done_stage4" "${sig}"; then
            run_logged "${python}" -m dualmode_recipe filter \
                --src "${data_feats}/org/${dset}" --dst "${data_feats}/${dset}" --fs "${fs_hz}" \
                --min_duration "${min_wav_duration}" --max_duration "${max_wav_duration}" \
                --keep_empty_text "${keep_empty_text}"
            grep -h "kept .* utterances" "${stage_log}" | tail -n 1 | sed 's/^.*INFO: /  /'
            mark_done "${data_feats}/${dset}/.done_stage4" "${sig}"
        fi
    done
fi

# ---------------------------------------------------------------------------------------
# Stage 5: token list (and sentencepiece model)
# ---------------------------------------------------------------------------------------
if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
    begin_stage 5 "${data_logdir}" "${token_type} token list from ${data_feats}/${train_set}/text"
    sig=$(printf '%s\n' "token_type=${token_type}" "nbpe=${nbpe}" "bpemode=${bpemode}" \
        "bpe_char_cover=${bpe_char_cover}" "nlsyms=$(hash_of "${nlsyms_txt}")" \
        "specials=${blank} ${oov} ${sos_eos}" \
        "upstream=$(hash_of "$(final_marker "${train_set}")")")
    if ! already_done "${tokendir}/.done_stage5" "${sig}"; then
        mkdir -p "${tokendir}"
        if [ "${token_type}" = bpe ]; then
            nlsyms_opts=()
            if [ "${nlsyms_txt}" != none ]; then nlsyms_opts=(--nlsyms "${nlsyms_txt}"); fi
            run_logged "${python}" -m dualmode_recipe bpe \
                --text "${data_feats}/${train_set}/text" --model_prefix "${bpeprefix}" \
                --vocab_size "${nbpe}" --model_type "${bpemode}" \
                --character_coverage "${bpe_char_cover}" "${nlsyms_opts[@]}"
        fi
        run_logged "${python}" -m espnet2.bin.tokenize_text "${tokenizer_opts[@]}" \
            --non_linguistic_symbols "${nlsyms_txt}" --cleaner none --g2p none \
            --input "${data_feats}/${train_set}/text" --output "${token_list}" --field 2- \
            --write_vocabulary true --add_symbol "${blank}:0" --add_symbol "${oov}:1" \
            --add_symbol "${sos_eos}:-1"
        log "${token_list}: $(num_lines "${token_list}") tokens"
        mark_done "${tokendir}/.done_stage5" "${sig}"
    fi
fi

# Data options of the training binary (stages 10 and 11).
data_opts=(
    --train_data_path_and_name_and_type "${data_feats}/${train_set}/wav.scp,speech,sound"
    --train_data_path_and_name_and_type "${data_feats}/${train_set}/text,text,text"
    --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/wav.scp,speech,sound"
    --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/text,text,text"
)
if [ "${stop_stage}" -ge 10 ] && [ "${stage}" -le 11 ]; then
    for f in "${asr_config}" ${asr_config_overrides}; do
        if [ ! -f "${f}" ]; then
            echo "$0: --asr_config/--asr_config_overrides ${f}: no such file" >&2
            exit 1
        fi
    done
    if [ -n "${asr_config_overrides}" ]; then
        # shellcheck disable=SC2086
        "${python}" -m dualmode_recipe merge_config --config "${asr_config}" \
            --output "${train_config}" ${asr_config_overrides}
    fi
    # global_mvn reads the statistics of stage 10: stage 10 runs without it (the features
    # it collects come before normalization) and stage 11 points it at the statistics.
    if [ "$(config_value "${train_config}" normalize)" = global_mvn ]; then
        stats_normalize_opts=(--normalize none)
        train_normalize_opts=(--normalize_conf "stats_file=${asr_stats_dir}/train/feats_stats.npz")
    else
        stats_normalize_opts=()
        train_normalize_opts=()
    fi
fi

# ---------------------------------------------------------------------------------------
# Stage 10: shapes and feature statistics (--collect_stats true), split over --nj jobs
# ---------------------------------------------------------------------------------------
if [ "${stage}" -le 10 ] && [ "${stop_stage}" -ge 10 ]; then
    begin_stage 10 "${asr_stats_dir}/logs" "statistics of ${train_set} and ${valid_set} -> ${asr_stats_dir}"
    sig=$(printf '%s\n' "frontend=$(config_value "${train_config}" frontend)" \
        "frontend_conf=$(config_value "${train_config}" frontend_conf)" "asr_args=${asr_args}" \
        "fs=${fs_hz}" "token_list=$(hash_of "${token_list}")" "keep_empty_text=${keep_empty_text}" \
        "train=$(hash_of "$(final_marker "${train_set}")")" \
        "valid=$(hash_of "$(final_marker "${valid_set}")")")
    if ! already_done "${asr_stats_dir}/.done_stage10" "${sig}"; then
        logdir=${asr_stats_dir}/logdir
        fresh_logdir "${cpu_cmd}" "${logdir}" "${sig}"
        _nj=$(min "${nj}" "$(min "$(num_lines "${data_feats}/${train_set}/wav.scp")" \
            "$(num_lines "${data_feats}/${valid_set}/wav.scp")")")
        for part in train valid; do
            if [ "${part}" = train ]; then dset=${train_set}; else dset=${valid_set}; fi
            run_logged "${python}" -m dualmode_recipe split \
                --scp "${data_feats}/${dset}/wav.scp" --num_splits "${_nj}" \
                --out_dir "${logdir}" --name "${part}"
        done
        # shellcheck disable=SC2086
        run_jobs "${cpu_cmd}" "${_nj}" "${logdir}" stats \
            "${python}" -m espnet2_dualmode.bin.dualmode_asr_train \
            --collect_stats true --use_preprocessor true "${token_opts[@]}" "${data_opts[@]}" \
            --keep_empty_text "${keep_empty_text}" \
            --train_shape_file "${logdir}/train.JOB.scp" \
            --valid_shape_file "${logdir}/valid.JOB.scp" \
            --output_dir "${logdir}/stats.JOB" --config "${train_config}" \
            --frontend_conf "fs=${fs_hz}" "${stats_normalize_opts[@]}" ${asr_args}
        stats_dirs=()
        for i in $(seq 1 "${_nj}"); do stats_dirs+=(--input_dir "${logdir}/stats.${i}"); done
        run_logged "${python}" -m espnet2.bin.aggregate_stats_dirs "${stats_dirs[@]}" \
            --output_dir "${asr_stats_dir}"
        # The vocabulary size as the last dimension of the text shapes (ESPnet's
        # text_shape.<token_type>, used to count batch bins).
        for part in train valid; do
            awk -v N="$(num_lines "${token_list}")" '{ print $0 "," N }' \
                "${asr_stats_dir}/${part}/text_shape" > "${asr_stats_dir}/${part}/text_shape.${token_type}"
        done
        mark_done "${asr_stats_dir}/.done_stage10" "${sig}"
    fi
fi

# ---------------------------------------------------------------------------------------
# Stage 11: training (a re-run resumes from the last checkpoint: --resume true)
# ---------------------------------------------------------------------------------------
if [ "${stage}" -le 11 ] && [ "${stop_stage}" -ge 11 ]; then
    begin_stage 11 "${asr_exp}/logs" "training ${asr_exp} (config ${train_config}, ngpu ${ngpu})"
    sig=$(printf '%s\n' "config=$(hash_of "${train_config}")" "asr_args=${asr_args}" \
        "fs=${fs_hz}" "stats=$(hash_of "${asr_stats_dir}/.done_stage10")")
    if ! already_done "${asr_exp}/.done_stage11" "${sig}"; then
        # A script that resumes this experiment with the same arguments.
        echo "#!/usr/bin/env bash" > "${asr_exp}/run.sh"
        echo "cd $(printf '%q' "$(pwd)") && ${run_args} --stage 11 \"\$@\"; exit \$?" >> "${asr_exp}/run.sh"
        chmod +x "${asr_exp}/run.sh"
        train_opts=("${train_normalize_opts[@]}")
        if [ "${ngpu}" -gt 1 ]; then
            train_opts+=(--multiprocessing_distributed true)
        fi
        # shellcheck disable=SC2086
        trainer=("${python}" -m espnet2_dualmode.bin.dualmode_asr_train \
            --use_preprocessor true "${token_opts[@]}" "${data_opts[@]}" \
            --train_shape_file "${asr_stats_dir}/train/speech_shape" \
            --train_shape_file "${asr_stats_dir}/train/text_shape.${token_type}" \
            --valid_shape_file "${asr_stats_dir}/valid/speech_shape" \
            --valid_shape_file "${asr_stats_dir}/valid/text_shape.${token_type}" \
            --fold_length 80000 --fold_length 150 --resume true \
            --output_dir "${asr_exp}" --config "${train_config}" --ngpu "${ngpu}" \
            --preflight_batches "${preflight_batches}" --keep_empty_text "${keep_empty_text}" \
            --frontend_conf "fs=${fs_hz}" "${train_opts[@]}" ${asr_args})
        rendezvous=$(cd "${asr_exp}" && pwd)/.rendezvous
        rm -f "${rendezvous}"
        # With --ngpu 0, several single-threaded CPU processes (DDP over gloo): OpenMP
        # threads of one process slow down by an order of magnitude when other processes
        # share the cores. With GPUs, one process per node spawns one per GPU.
        if [ "${ngpu}" -eq 0 ]; then tasks_per_node=${cpu_train_procs}; else tasks_per_node=1; fi
        if [ "${train_cmd%% *}" = local ] && [ "${tasks_per_node}" -gt 1 ]; then
            OMP_NUM_THREADS=1 run_jobs local "${cpu_train_procs}" "${asr_exp}/logs" train \
                "${trainer[@]}" --multiprocessing_distributed false --dist_backend gloo \
                --dist_world_size "${cpu_train_procs}" --dist_init_method "file://${rendezvous}" \
                --dist_rank __RANK__ --local_rank __RANK__
            cat "${asr_exp}/logs/train.1.log" >> "${stage_log}"  # rank 0 reports
        elif [ "${train_cmd%% *}" = local ]; then
            run_logged "${trainer[@]}"
        else
            # Under a scheduler, srun starts the tasks of every node and ESPnet's trainer
            # takes world size and local rank from Slurm (--dist_launcher slurm). The rank
            # is given as SLURM_PROCID: ESPnet would read the node's, which is the rank only
            # with one task per node (its CPU processes are several tasks per node).
            launcher=()
            resources="--gpu ${ngpu} --num_threads $(( ngpu > 1 ? ngpu : 1 ))"
            if [ "${num_nodes}" -gt 1 ] || [ "${tasks_per_node}" -gt 1 ]; then
                resources+=" --num_nodes ${num_nodes} --tasks_per_node ${tasks_per_node}"
                # shellcheck disable=SC2016  # expanded in each task
                launcher=(srun --kill-on-bad-exit=1 bash -c 'exec "$@" --dist_rank "${SLURM_PROCID}"' task)
                trainer+=(--dist_launcher slurm --dist_init_method "file://${rendezvous}")
                if [ "${ngpu}" -eq 0 ]; then
                    trainer+=(--multiprocessing_distributed false --dist_backend gloo)
                elif [ "${ngpu}" -eq 1 ]; then
                    trainer+=(--multiprocessing_distributed true)
                fi
            fi
            run_step "${train_cmd} ${resources}" "${asr_exp}/logs/train.log" \
                "${launcher[@]}" "${trainer[@]}"
        fi
        mark_done "${asr_exp}/.done_stage11" "${sig}"
    fi
fi

# ---------------------------------------------------------------------------------------
# Decoding, latency and scoring of one model: stage 12-13 at the training geometry, and
# stage 14 once per geometry of the block-size sweep.
# ---------------------------------------------------------------------------------------
if [ "${gpu_inference}" = true ]; then inference_ngpu=1; else inference_ngpu=0; fi
model_sig=$(hash_of "${asr_exp}/.done_stage11")
model_file=${asr_exp}/${inference_asr_model}

# require_model: stop unless training left the config and the checkpoint to decode.
require_model() {
    local f
    for f in "${asr_exp}/config.yaml" "${model_file}"; do
        [ -e "${f}" ] || { log "error: ${f} does not exist (train first: stage 11)"; exit 1; }
    done
}

# decode_sets N ROOT "HEADS" [GEOMETRY...]: decode every test set with every head of HEADS
# into ROOT/<head>/<set> (marker .done_stageN), in --inference_nj jobs per set. GEOMETRY
# (--block_size B --hop_size H --look_ahead L) goes to the decoder; none: the training one.
decode_sets() {
    local n=$1 root=$2 heads=$3 sets=$4
    shift 4
    local -a geometry=("$@") config_opts decoder job_dirs
    local head head_config dset dir sig logdir _nj i
    for head in ${heads}; do
        head_config=$(inference_config_of "${head}")
        if [ -n "${head_config}" ] && [ ! -f "${head_config}" ]; then
            log "error: decoding config ${head_config} of head ${head} does not exist"
            exit 1
        fi
        config_opts=()
        if [ -n "${head_config}" ]; then config_opts=(--config "${head_config}"); fi
        if [ "${head}" = streaming ]; then
            decoder=(-m espnet2_dualmode.bin.dualmode_asr_inference_streaming
                     --sim_chunk_length "${sim_chunk_length}")
        else
            decoder=(-m espnet2_dualmode.bin.dualmode_asr_inference --decode_head "${head}")
        fi
        for dset in ${sets}; do
            dir=${root}/${head}/${dset}
            sig=$(printf '%s\n' "command=${decoder[*]}" "config=$(hash_of "${head_config}")" \
                "inference_args=${inference_args}" "model=${inference_asr_model}" \
                "trained=${model_sig}" "data=$(hash_of "$(final_marker "${dset}")")")
            if [ ${#geometry[@]} -gt 0 ]; then sig+=$'\n'"geometry=${geometry[*]}"; fi
            log "${head} on ${dset} -> ${dir}"
            if already_done "${dir}/.done_stage${n}" "${sig}"; then continue; fi
            logdir=${dir}/logdir
            fresh_logdir "${decode_cmd}" "${logdir}" "${sig}"
            _nj=$("${python}" -m dualmode_recipe split \
                --scp "${data_feats}/${dset}/wav.scp" --num_splits "${inference_nj}" \
                --out_dir "${logdir}" --name keys 2>> "${stage_log}")
            # shellcheck disable=SC2086
            run_jobs "${decode_cmd} --gpu ${inference_ngpu}" "${_nj}" "${logdir}" decode \
                "${python}" "${decoder[@]}" \
                --asr_train_config "${asr_exp}/config.yaml" --asr_model_file "${model_file}" \
                --data_path_and_name_and_type "${data_feats}/${dset}/wav.scp,speech,sound" \
                --key_file "${logdir}/keys.JOB.scp" --output_dir "${logdir}/output.JOB" \
                --ngpu "${inference_ngpu}" "${config_opts[@]}" "${geometry[@]}" ${inference_args}
            job_dirs=()
            for i in $(seq 1 "${_nj}"); do job_dirs+=("${logdir}/output.${i}"); done
            run_logged "${python}" -m dualmode_recipe merge \
                --keys "${data_feats}/${dset}/wav.scp" --out_dir "${dir}" "${job_dirs[@]}"
            if [ -s "${dir}/failed" ]; then
                log "warning: $(num_lines "${dir}/failed") utterance(s) of ${dset} failed to decode with ${head}: see ${dir}/failed"
            fi
            mark_done "${dir}/.done_stage${n}" "${sig}"
        done
    done
}

# measure_streaming_latency N DIR [GEOMETRY...]: RTF, algorithmic latency and emission
# delay of the streaming path on the first test set into DIR/latency.json (marker
# DIR/.done_stageN), at GEOMETRY (none: the training one).
# tune_joint_weights DIR: the joint head's weights tuned on the validation set (never on
# a test set) -> DIR/joint_decode.yaml (the joint head's decoding config) and DIR/tuning.md.
tune_joint_weights() {
    local dir=$1 sig base_config
    base_config=$(inference_config_of joint)
    sig=$(printf '%s\n' "model=${inference_asr_model}" "trained=${model_sig}" \
        "config=$(hash_of "${base_config}")" "nbest_heads=${joint_nbest_heads}" \
        "inference_args=${inference_args}" "data=$(hash_of "$(final_marker "${valid_set}")")")
    log "joint weights tuned on ${valid_set} -> ${dir}/joint_decode.yaml"
    if already_done "${dir}/.done_stage12" "${sig}"; then return; fi
    local -a config_opts=()
    if [ -n "${base_config}" ]; then config_opts=(--config "${base_config}"); fi
    # shellcheck disable=SC2086
    run_step "${decode_cmd} --gpu ${inference_ngpu}" "${dir}/tune.log" \
        "${python}" -m espnet2_dualmode.bin.dualmode_asr_tune_joint \
        --asr_train_config "${asr_exp}/config.yaml" --asr_model_file "${model_file}" \
        --data_path_and_name_and_type "${data_feats}/${valid_set}/wav.scp,speech,sound" \
        --text "${data_feats}/${valid_set}/text" --joint_nbest_head "${joint_nbest_heads}" \
        --output_dir "${dir}" --ngpu "${inference_ngpu}" "${config_opts[@]}" ${inference_args}
    mark_done "${dir}/.done_stage12" "${sig}"
}

measure_streaming_latency() {
    local n=$1 dir=$2
    shift 2
    local -a geometry=("$@") beam_opts=()
    local latency_set=${test_sets%% *} sig streaming_config beam
    # The speech's position in each file, when the corpus knows it (the demo's synthesis):
    # the model-independent reference of Latency@50/@90.
    local segments=data/${latency_set}/speech_segments
    local -a segment_opts=()
    if [ -f "${segments}" ]; then segment_opts=(--speech_segments "${segments}"); fi
    sig=$(printf '%s\n' "set=${latency_set}" "max_utts=${latency_max_utts}" \
        "model=${inference_asr_model}" "trained=${model_sig}" \
        "data=$(hash_of "$(final_marker "${latency_set}")")" "segments=$(hash_of "${segments}")")
    # The streaming decoding's beam, when its config sets one.
    streaming_config=$(inference_config_of streaming)
    if [ -n "${streaming_config}" ]; then
        beam=$(config_value "${streaming_config}" beam_size)
        if [ -n "${beam}" ]; then beam_opts=(--beam_size "${beam}"); fi
    fi
    sig+=$'\n'"chunk=${sim_chunk_length} ${beam_opts[*]}"
    if [ ${#geometry[@]} -gt 0 ]; then sig+=$'\n'"geometry=${geometry[*]}"; fi
    log "latency of the streaming mode on ${latency_set} -> ${dir}/latency.json"
    if already_done "${dir}/.done_stage${n}" "${sig}"; then return; fi
    run_step "${decode_cmd} --gpu ${inference_ngpu}" "${dir}/latency.log" \
        "${python}" -m espnet2_dualmode.bin.measure_latency \
        --asr_train_config "${asr_exp}/config.yaml" --asr_model_file "${model_file}" \
        --data_path_and_name_and_type "${data_feats}/${latency_set}/wav.scp,speech,sound" \
        --output_dir "${dir}" --max_utts "${latency_max_utts}" \
        --chunk_length "${sim_chunk_length}" "${beam_opts[@]}" "${segment_opts[@]}" "${geometry[@]}"
    mark_done "${dir}/.done_stage${n}" "${sig}"
}

unit_opts=()
for unit in ${score_units}; do unit_opts+=(--unit "${unit}"); done
nlsyms_opts=()
if [ "${nlsyms_txt}" != none ]; then nlsyms_opts=(--nlsyms "${nlsyms_txt}"); fi

# scoring_signature N ROOT "HEADS" [LATENCY_DIR]: the inputs of scoring ROOT: the decodings'
# markers .done_stageN (and that of LATENCY_DIR), units, heads, sets and symbols.
scoring_signature() {
    local n=$1 root=$2 heads=$3 latency_dir=${4:-} upstream= head dset
    for head in ${heads}; do
        for dset in ${test_sets}; do
            upstream+=" ${head}/${dset}=$(hash_of "${root}/${head}/${dset}/.done_stage${n}")"
        done
    done
    if [ -n "${latency_dir}" ]; then
        upstream+=" latency=$(hash_of "${latency_dir}/.done_stage${n}")"
    fi
    printf '%s\n' "units=${score_units}" "heads=${heads}" "sets=${test_sets}" \
        "nlsyms=$(hash_of "${nlsyms_txt}")" "upstream=${upstream}"
}

# score_decodings ROOT "HEADS": ROOT/<head>/<set>/scores.json of every head and test set.
score_decodings() {
    local root=$1 heads=$2 head dset dir
    for head in ${heads}; do
        for dset in ${test_sets}; do
            dir=${root}/${head}/${dset}
            [ -f "${dir}/text" ] || { log "error: ${dir}/text does not exist (decode it first)"; exit 1; }
            # shellcheck disable=SC2016  # expanded by the job's shell
            run_step "${cpu_cmd}" "${dir}/score.log" bash -c '"$@" > "$0"' "${dir}/scores.json" \
                "${python}" -m dualmode_recipe score --ref_text "${data_feats}/${dset}/text" \
                --hyp_text "${dir}/text" --name "${dset}" "${unit_opts[@]}" \
                "${nlsyms_opts[@]}" --output_dir "${dir}" --json
        done
    done
}

# ---------------------------------------------------------------------------------------
# Stage 12: decoding of every test set with every head (+ latency of the streaming mode)
# ---------------------------------------------------------------------------------------
if [ "${stage}" -le 12 ] && [ "${stop_stage}" -ge 12 ]; then
    begin_stage 12 "${asr_exp}/logs" "decoding ${test_sets} with ${decode_heads} -> ${decode_root}"
    require_model
    if [ "${tune_joint}" = true ] && [[ " ${decode_heads} " == *" joint "* ]]; then
        tune_joint_weights "${decode_root}/joint_tuning"
        inference_head_configs+=" joint=${decode_root}/joint_tuning/joint_decode.yaml"
    fi
    decode_sets 12 "${decode_root}" "${decode_heads}" "${test_sets} ${empty_test_sets}"
    if [ "${measure_latency}" = true ]; then
        measure_streaming_latency 12 "${decode_root}/latency"
    fi
fi

# ---------------------------------------------------------------------------------------
# Stage 13: scoring (sclite when available) and RESULTS.md
# ---------------------------------------------------------------------------------------
if [ "${stage}" -le 13 ] && [ "${stop_stage}" -ge 13 ]; then
    begin_stage 13 "${asr_exp}/logs" "scoring (${score_units}) -> ${asr_exp}/RESULTS.md"
    latency_opts=()
    latency_dir=
    if [ "${measure_latency}" = true ]; then
        latency_opts=(--latency_set "${test_sets%% *}")
        latency_dir=${decode_root}/latency
    fi
    sig=$(scoring_signature 12 "${decode_root}" "${decode_heads}" "${latency_dir}")
    for dset in ${empty_test_sets}; do
        for head in ${decode_heads}; do
            sig+=$'\n'"${head}/${dset}=$(hash_of "${decode_root}/${head}/${dset}/.done_stage12")"
        done
    done
    if ! already_done "${decode_root}/.done_stage13" "${sig}"; then
        score_decodings "${decode_root}" "${decode_heads}"
        # shellcheck disable=SC2086
        run_logged "${python}" -m dualmode_recipe results --decode_dir "${decode_root}" \
            --heads ${decode_heads} --test_sets ${test_sets} --units ${score_units} \
            --title "${asr_exp} (${inference_tag}, ${inference_asr_model})" \
            "${latency_opts[@]}" --output "${asr_exp}/RESULTS.md"
        non_speech_ok=true
        for dset in ${empty_test_sets}; do
            # shellcheck disable=SC2086
            if ! run_logged "${python}" -m dualmode_recipe check_empty --decode_dir "${decode_root}" \
                    --heads ${decode_heads} --test_set "${dset}" \
                    --output "${decode_root}/non_speech_${dset}.md"; then
                non_speech_ok=false
            fi
            { echo; cat "${decode_root}/non_speech_${dset}.md"; } >> "${asr_exp}/RESULTS.md"
        done
        if [ -f "${asr_exp}/checkpoint.pth" ]; then  # absent for a model trained elsewhere
            run_logged "${python}" -m dualmode_recipe learning_curve \
                --checkpoint "${asr_exp}/checkpoint.pth" --output_dir "${asr_exp}" \
                --title "Learning curve of ${asr_exp}"
            { echo; cat "${asr_exp}/learning_curve.md"; } >> "${asr_exp}/RESULTS.md"
        fi
        if [ "${non_speech_ok}" = true ] || [ "${non_speech_check}" = report ]; then
            mark_done "${decode_root}/.done_stage13" "${sig}"
        fi
    fi
    cat "${asr_exp}/RESULTS.md"
    if [ "${non_speech_ok:-true}" = false ]; then
        log "$([ "${non_speech_check}" = strict ] && echo error || echo warning): a head decoded non-speech audio (${empty_test_sets}) to text: see ${asr_exp}/RESULTS.md"
        if [ "${non_speech_check}" = strict ]; then exit 1; fi
    fi
fi

# ---------------------------------------------------------------------------------------
# Stage 14 (only with --sweep_block_sizes): Figure 2 from one model. Per block size, the
# test sets decoded with --sweep_heads at that geometry, the streaming latency measured on
# the first one, everything scored; then the sweep's table and plot.
# ---------------------------------------------------------------------------------------
if [ -n "${sweep_block_sizes}" ] && [ "${stage}" -le 14 ] && [ "${stop_stage}" -ge 14 ]; then
    sweep_root=${decode_root}/sweep
    begin_stage 14 "${asr_exp}/logs" "block-size sweep ${sweep_block_sizes} with ${sweep_heads} -> ${sweep_root}"
    require_model
    ratio_opts=(--hop_ratio "${sweep_hop_ratio}" --look_ahead_ratio "${sweep_look_ahead_ratio}")
    # One line per block size: its folder name and decoding options.
    # shellcheck disable=SC2086
    run_logged "${python}" -m dualmode_recipe sweep_geometry --block_sizes ${sweep_block_sizes} \
        "${ratio_opts[@]}" --output "${sweep_root}/geometries"
    mapfile -t sweep_geometries < "${sweep_root}/geometries"
    for line in "${sweep_geometries[@]}"; do
        read -r -a geometry <<< "${line}"
        root=${sweep_root}/${geometry[0]}
        log "${geometry[*]:1} -> ${root}"
        decode_sets 14 "${root}" "${sweep_heads}" "${test_sets}" "${geometry[@]:1}"
        measure_streaming_latency 14 "${root}/latency" "${geometry[@]:1}"
        sig=$(scoring_signature 14 "${root}" "${sweep_heads}" "${root}/latency")
        if ! already_done "${root}/.done_stage14" "${sig}"; then
            score_decodings "${root}" "${sweep_heads}"
            mark_done "${root}/.done_stage14" "${sig}"
        fi
    done
    # shellcheck disable=SC2086
    run_logged "${python}" -m dualmode_recipe sweep_report --sweep_dir "${sweep_root}" \
        --block_sizes ${sweep_block_sizes} "${ratio_opts[@]}" --heads ${sweep_heads} \
        --test_sets ${test_sets} --units ${score_units} --latency_set "${test_sets%% *}" \
        --title "${asr_exp} (${inference_tag}, ${inference_asr_model})"
    cat "${sweep_root}/sweep.md"
fi
log "Successfully finished stages ${stage}-${stop_stage}"
