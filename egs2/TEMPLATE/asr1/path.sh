# shellcheck shell=bash
# Environment of the espnet2-dualmode recipes (sourced by dualmode_asr.sh and local/*.sh).
# Each recipe symlinks this file; MAIN_ROOT is found through the link.
MAIN_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)
export MAIN_ROOT

# The project's virtualenv when there is one; override with PYTHON=/path/to/python.
if [ -z "${PYTHON:-}" ]; then
    if [ -x "${MAIN_ROOT}/.venv/bin/python" ]; then
        PYTHON=${MAIN_ROOT}/.venv/bin/python
    else
        PYTHON=python3
    fi
fi
export PYTHON
export PYTHONPATH=${MAIN_ROOT}${PYTHONPATH:+:${PYTHONPATH}}
export PYTHONIOENCODING=UTF-8
# Debian's sctk installs sclite here, off PATH.
export PATH=${PATH}:/usr/lib/sctk/bin
# One thread per process, as ESPnet's path.sh (jobs run side by side); override to train
# on CPU with more threads.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
