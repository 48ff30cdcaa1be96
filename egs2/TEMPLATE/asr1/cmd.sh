# shellcheck shell=bash
# Job commands of the stages (ESPnet's cmd.sh), sourced by dualmode_asr.sh after its
# options: --cmd_backend picks a set below, and --cpu_cmd / --train_cmd / --decode_cmd on
# the command line replace one of them.
#   cpu_cmd     data preparation, speed perturbation, format, statistics, scoring
#   train_cmd   training (the stage script adds --gpu, --num_threads, --num_nodes and
#               --tasks_per_node; several tasks or nodes are started with srun)
#   decode_cmd  decoding and the latency measurement (adds --gpu 1 with --gpu_inference true)
# "local" runs the jobs on this machine as background processes. Any other value is a
# command called as ESPnet's stage scripts call run.pl/slurm.pl:
#   CMD [--gpu N] [--num_threads N] [--num_nodes N] [--tasks_per_node N] [JOB=1:N] LOG COMMAND...
# scripts/slurm.sh submits with sbatch and waits; the resources (partition, memory per CPU,
# time limit, other sbatch options) come from conf/slurm.conf, and --mem, --time or
# --partition added to the command win, e.g. --train_cmd "../../TEMPLATE/asr1/scripts/slurm.sh
# --config conf/slurm.conf --time 96:00:00". A failed job names its log; running the same
# command again resubmits only the jobs that failed. Examples:
#   ./run.sh --cmd_backend slurm
#   ./run.sh --cmd_backend slurm --ngpu 4 --num_nodes 2    # 8 GPUs, srun + ESPnet's DDP
# Each recipe links this file; MAIN_ROOT comes from path.sh.
case "${cmd_backend}" in
    local)
        : "${cpu_cmd:=local}" "${train_cmd:=local}" "${decode_cmd:=local}"
        ;;
    slurm)
        slurm_cmd="${MAIN_ROOT}/egs2/TEMPLATE/asr1/scripts/slurm.sh --config conf/slurm.conf"
        : "${cpu_cmd:=${slurm_cmd}}" "${train_cmd:=${slurm_cmd}}" "${decode_cmd:=${slurm_cmd}}"
        ;;
esac
