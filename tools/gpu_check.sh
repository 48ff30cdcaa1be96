#!/usr/bin/env bash
# One command that verifies the CUDA path on a GPU machine (after tools/install.sh):
#   1. installs the `cuda` extra (warp-rnnt, which builds only where a GPU is visible);
#   2. runs the `cuda` tests (pytest -m cuda): every decoding head and streaming on CUDA equal
#      to the CPU, the latency tool, a training step of every debug config in fp32 and under
#      autocast, warp-rnnt against torchaudio, the demo recipe's tiny run with --ngpu 1
#      --use_amp true, and, where 2 GPUs are visible, a 2-GPU DDP epoch of that recipe;
#   3. prints step time and peak torch.cuda.max_memory_allocated of one paper-size joint+sp-ED
#      training step (full and pruned RNN-T loss, fp32 and AMP) at the recipes' batch_bins.
# Every step has a time limit (60 + 300 + 2 x 120 s): the whole check ends within 10 minutes. It never
# resets or reconfigures a GPU. Exit status: 0 when every step passed.
#   tools/gpu_check.sh            (env: PYTHON=interpreter, BATCH_BINS="N ...": other sizes,
#                                  PYTEST_ADDOPTS: more pytest options, e.g. -k)
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
python=${PYTHON:-.venv/bin/python}
if ! "${python}" -c "import torch" 2>/dev/null; then
    echo "$0: ${python} cannot import torch: run tools/install.sh first" >&2
    exit 2
fi
gpus=$("${python}" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "${gpus}" -lt 1 ]; then
    echo "$0: needs a CUDA GPU: torch.cuda.is_available() is False on this machine" >&2
    echo "$0: (the CUDA tests are skipped here; run this script on a machine with a GPU)" >&2
    exit 1
fi
"${python}" -c "import torch; print('GPUs:', ', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())), '| torch', torch.__version__, 'CUDA', torch.version.cuda)"

declare -a summary
failed=0
step() {  # step NAME SECONDS CMD...: run CMD under a time limit and record the outcome
    local name=$1 limit=$2 start=${SECONDS} rc
    shift 2
    echo "== ${name} (limit ${limit} s)"
    timeout --kill-after=10 "${limit}" "$@"
    rc=$?
    local spent=$((SECONDS - start)) outcome=ok
    if [ "${rc}" -eq 124 ] || [ "${rc}" -eq 137 ]; then
        outcome="TIMED OUT"
    elif [ "${rc}" -ne 0 ]; then
        outcome="FAILED (exit ${rc})"
    fi
    [ "${outcome}" = ok ] || failed=1
    summary+=("$(printf '%-52s %-18s %4d s' "${name}" "${outcome}" "${spent}")")
}

# 1. The cuda extra. No build isolation: warp-rnnt compiles against the installed torch.
#    Skipped where warp_rnnt already imports (e.g. built by hand on a machine without PyPI).
if "${python}" -c "import warp_rnnt" 2>/dev/null; then
    echo "== warp-rnnt already imports: the cuda extra is not reinstalled"
else
    step "install the cuda extra (warp-rnnt)" 60 \
        "${python}" -m pip install --quiet --retries 1 --timeout 20 --no-build-isolation -e ".[cuda]"
fi

# 2. The cuda tests; with 2+ GPUs they include the 2-GPU DDP epoch of the tiny demo recipe.
if [ "${gpus}" -ge 2 ]; then echo "${gpus} GPUs visible: the cuda tests include a 2-GPU DDP epoch"
else echo "1 GPU visible: the 2-GPU DDP epoch is skipped"; fi
# Four xdist workers: on one H200 the cuda tests took 218 s so (2026-11-30).
step "pytest -m cuda" 300 "${python}" -m pytest -q -m cuda -rs -n 4 --dist loadfile tests

# 3. One paper-size joint+sp-ED step at the smallest and largest of the recipes' batch_bins
#    (paper config, recipe joint+sp-ED configs and the per-GPU-memory overrides gpu_*.yaml), full
#    and pruned loss, fp32 and AMP. Two sizes: each point is a fresh process (~25 s on an H200).
if [ -z "${BATCH_BINS:-}" ]; then
    BATCH_BINS=$("${python}" - <<'EOF'
import glob, yaml
paths = (["conf/paper/joint_sp_ed.yaml"] + sorted(glob.glob("egs2/*/asr1/conf/train_joint_sp_ed*.yaml"))
         + sorted(glob.glob("egs2/*/asr1/conf/gpu_*.yaml")))
bins = set()
for path in paths:
    with open(path, encoding="utf-8") as f:
        conf = yaml.safe_load(f) or {}
    if conf.get("batch_bins"):
        bins.add(int(conf["batch_bins"]))
print(min(bins), max(bins))
EOF
)
fi
echo "batch_bins: ${BATCH_BINS}"
# shellcheck disable=SC2086
step "memory: paper joint+sp-ED step, fp32" 120 \
    "${python}" benchmarks/memory.py --device cuda --batch_bins ${BATCH_BINS} \
    --rnnt_loss_type full pruned
# shellcheck disable=SC2086
step "memory: paper joint+sp-ED step, AMP" 120 \
    "${python}" benchmarks/memory.py --device cuda --batch_bins ${BATCH_BINS} \
    --rnnt_loss_type full pruned --amp

echo
echo "== summary (${SECONDS} s)"
printf '%s\n' "${summary[@]}"
if [ "${failed}" -ne 0 ]; then
    echo "$0: some steps failed (see above)" >&2
    exit 1
fi
echo "every GPU check passed"
