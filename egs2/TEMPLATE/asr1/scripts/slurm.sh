#!/usr/bin/env bash
# Run a command as Slurm jobs, called the way ESPnet's stage scripts call run.pl/slurm.pl:
#   slurm.sh [options] [JOB=1:N] LOG COMMAND...
# With JOB=1:N, one array job of N tasks is submitted with sbatch; "JOB" in LOG and in
# every argument of COMMAND becomes the task's index. The script waits for the jobs
# (polling squeue) and exits non-zero when any failed, naming each failed job's log.
#
# Each log starts with "# <command>" and a line with SLURM_JOB_ID, and ends with
# "# ended ... exit status <rc>". A job whose log holds the same command and ended with
# status 0 is not submitted again: re-running the same call resubmits only what failed.
#
# Options (a --config file holds the defaults; an option given here wins):
#   --config FILE          KEY=VALUE lines: partition, gpu_partition, mem, time, extra
#   --gpu N                GPUs per node (--gres=gpu:N; jobs go to gpu_partition if set) [0]
#   --num_threads N        CPUs per task (--cpus-per-task) [1]
#   --num_nodes N          nodes of the job (--nodes) [1]
#   --tasks_per_node N     tasks per node (--ntasks-per-node; srun in COMMAND starts them) [1]
#   --mem SIZE             memory per CPU (--mem-per-cpu), e.g. 4G
#   --time TIME            time limit (--time), e.g. 24:00:00
#   --partition NAME       partition (--partition)
#   --name NAME            job name [the log's file name up to the first dot]
# Environment: the submitting shell's (sbatch --export=ALL), so path.sh's settings hold.
set -euo pipefail

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

config= gpu=0 num_threads=1 num_nodes=1 tasks_per_node=1 name=
declare -A given=()
while [ $# -gt 0 ] && [[ "$1" == --* ]]; do
    [ $# -ge 2 ] || die "$1 needs a value"
    case "$1" in
        --config) config=$2 ;;
        --gpu) gpu=$2 ;;
        --num_threads) num_threads=$2 ;;
        --num_nodes) num_nodes=$2 ;;
        --tasks_per_node) tasks_per_node=$2 ;;
        --name) name=$2 ;;
        --mem|--time|--partition) given[${1#--}]=$2 ;;
        *) die "unknown option $1" ;;
    esac
    shift 2
done
for value in gpu num_threads num_nodes tasks_per_node; do
    [[ "${!value}" =~ ^[0-9]+$ ]] || die "--${value} must be a non-negative integer, got '${!value}'"
done

# Resources: the config file, then the options.
declare -A conf=([partition]= [gpu_partition]= [mem]= [time]= [extra]=)
if [ -n "${config}" ]; then
    [ -f "${config}" ] || die "--config ${config}: no such file"
    lineno=0
    while IFS= read -r line || [ -n "${line}" ]; do
        lineno=$((lineno + 1))
        line=${line%%#*}
        line=$(echo "${line}" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
        [ -n "${line}" ] || continue
        key=${line%%=*}
        [[ "${line}" == *=* ]] && [ -n "${conf[${key}]+set}" ] \
            || die "${config}:${lineno}: expected KEY=VALUE with KEY one of ${!conf[*]}, got '${line}'"
        conf[${key}]=${line#*=}
    done < "${config}"
fi
for key in "${!given[@]}"; do conf[${key}]=${given[${key}]}; done

# JOB=1:N (optional), LOG, COMMAND.
first=1 last=1 jobvar=
if [[ "${1:-}" =~ ^([A-Za-z_]+)=([0-9]+):([0-9]+)$ ]]; then
    jobvar=${BASH_REMATCH[1]} first=${BASH_REMATCH[2]} last=${BASH_REMATCH[3]}
    shift
    [ "${first}" -ge 1 ] && [ "${last}" -ge "${first}" ] || die "bad job range ${jobvar}=${first}:${last}"
fi
[ $# -ge 2 ] || die "usage: $(basename "$0") [options] [JOB=1:N] LOG COMMAND..."
log_pattern=$1
shift
command=("$@")
if [ -n "${jobvar}" ] && [[ "${log_pattern}" != *"${jobvar}"* ]]; then
    die "the log ${log_pattern} must contain ${jobvar} (one log per job)"
fi

# job_log I / job_command I: the log and the command of job I.
job_log() {
    if [ -n "${jobvar}" ]; then echo "${log_pattern//${jobvar}/$1}"; else echo "${log_pattern}"; fi
}
job_command() {
    local -a cmd=("${command[@]}")
    if [ -n "${jobvar}" ]; then cmd=("${cmd[@]//${jobvar}/$1}"); fi
    echo "# ${cmd[*]}"
}
succeeded() {
    local log
    log=$(job_log "$1")
    [ -f "${log}" ] && [ "$(head -n 1 "${log}")" = "$(job_command "$1")" ] \
        && [[ "$(tail -n 1 "${log}")" =~ exit\ status\ 0$ ]]
}

todo=()
for i in $(seq "${first}" "${last}"); do
    if succeeded "${i}"; then
        echo "job ${i} already finished ($(job_log "${i}")): not submitted again"
    else
        todo+=("${i}")
    fi
done
[ ${#todo[@]} -gt 0 ] || exit 0

log_dir=$(dirname "$(job_log "${first}")")
qdir=${log_dir}/q
mkdir -p "${qdir}"
base=$(basename "${log_pattern}")
name=${name:-${base%%.*}}
script=${qdir}/${name}.sh
# The job script: the log's first lines name the command and the Slurm job, its last line
# the exit status (what a re-run reads to skip finished jobs).
{
    echo '#!/usr/bin/env bash'
    printf 'jobvar=%q log_pattern=%q\n' "${jobvar}" "${log_pattern}"
    printf 'command=(%s)\n' "$(printf '%q ' "${command[@]}")"
    cat <<'EOF'
i=${SLURM_ARRAY_TASK_ID}
log=${log_pattern}
if [ -n "${jobvar}" ]; then
    log=${log_pattern//${jobvar}/${i}}
    command=("${command[@]//${jobvar}/${i}}")
fi
mkdir -p "$(dirname "${log}")"
{
    echo "# ${command[*]}"
    echo "# SLURM_JOB_ID=${SLURM_JOB_ID} (array ${SLURM_ARRAY_JOB_ID}_${i}) on $(hostname), started $(date '+%Y-%m-%dT%H:%M:%S')"
} > "${log}"
rc=0
"${command[@]}" >> "${log}" 2>&1 || rc=$?
echo "# ended $(date '+%Y-%m-%dT%H:%M:%S') exit status ${rc}" >> "${log}"
exit "${rc}"
EOF
} > "${script}"
chmod +x "${script}"

partition=${conf[partition]}
if [ "${gpu}" -gt 0 ] && [ -n "${conf[gpu_partition]}" ]; then partition=${conf[gpu_partition]}; fi
sbatch_opts=(--parsable --job-name "${name}" --chdir "$(pwd)" --export ALL
             --array "$(IFS=,; echo "${todo[*]}")" --output "${qdir}/${name}.%A_%a.out"
             --nodes "${num_nodes}" --ntasks-per-node "${tasks_per_node}"
             --cpus-per-task "${num_threads}")
if [ -n "${partition}" ]; then sbatch_opts+=(--partition "${partition}"); fi
if [ -n "${conf[mem]}" ]; then sbatch_opts+=(--mem-per-cpu "${conf[mem]}"); fi
if [ -n "${conf[time]}" ]; then sbatch_opts+=(--time "${conf[time]}"); fi
if [ "${gpu}" -gt 0 ]; then sbatch_opts+=(--gres "gpu:${gpu}"); fi
# shellcheck disable=SC2206  # extra: sbatch options, split as words
if [ -n "${conf[extra]}" ]; then sbatch_opts+=(${conf[extra]}); fi

# Earlier logs of the jobs to run go, so that a log read below is this attempt's.
for i in "${todo[@]}"; do rm -f "$(job_log "${i}")"; done
job_id=$(sbatch "${sbatch_opts[@]}" "${script}") || die "sbatch failed: sbatch ${sbatch_opts[*]} ${script}"
job_id=${job_id%%;*}
echo "submitted ${#todo[@]} job(s) of ${name} as Slurm job ${job_id} (array ${todo[*]})"
trap 'scancel "${job_id}" 2>/dev/null; echo "cancelled Slurm job ${job_id}" >&2; exit 130' INT TERM
misses=0
while true; do
    if queued=$(squeue --noheader --jobs "${job_id}" --format %i 2>/dev/null); then
        misses=0
        [ -n "${queued}" ] || break
    else
        # squeue also fails for a job that has left the controller's memory.
        misses=$((misses + 1))
        [ "${misses}" -lt 60 ] || break
    fi
    sleep 0.5
done
trap - INT TERM

failed=()
for i in "${todo[@]}"; do succeeded "${i}" || failed+=("${i}"); done
if [ ${#failed[@]} -gt 0 ]; then
    for i in "${failed[@]}"; do
        log=$(job_log "${i}")
        echo "job ${i} (Slurm job ${job_id}_${i}) failed; log: ${log}" >&2
        if [ -f "${log}" ]; then
            tail -n 30 "${log}" >&2
        else
            echo "  (no log: the job did not start; see ${qdir}/${name}.${job_id}_${i}.out)" >&2
        fi
    done
    exit 1
fi
