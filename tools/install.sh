#!/usr/bin/env bash
# Install espnet2-dualmode into ./.venv (Python 3.11) from this checkout's setup.py.
# Idempotent: re-running only installs what changed. Installs Debian's sctk (sclite),
# slurm-wlm and munge for tests/test_slurm.py's single-node cluster, and chromium +
# chromium-driver for tests/test_serve_browser.py, when run as root with apt-get
# available; scoring falls back to an exact Python port otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "install.sh: Python 3.11 is required (espnet 202511 + torch 2.11); got $("$python" --version)" >&2
    exit 2
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
# Newer pip rejects a direct-URL extra of one of ESPnet's dependencies (ci_sdr); 23.2.1 is known good.
.venv/bin/python -m pip install -q "pip==23.2.1"
.venv/bin/python -m pip install -q -e ".[test]"

# missing NAME PATH: NAME is neither on PATH nor at PATH (Debian puts some off PATH).
missing() { ! command -v "$1" >/dev/null 2>&1 && [ ! -x "$2" ]; }
if missing sclite /usr/lib/sctk/bin/sclite || missing slurmctld /usr/sbin/slurmctld \
        || missing chromedriver /usr/lib/chromium/chromedriver; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sctk slurm-wlm munge \
            chromium chromium-driver >/dev/null) \
            || echo "install.sh: could not install sctk, slurm-wlm, munge, chromium and chromium-driver;" \
                "scoring uses the Python sclite port and tests/test_slurm.py and" \
                "tests/test_serve_browser.py are skipped" >&2
    else
        echo "install.sh: sclite, Slurm or chromium not found (apt-get install sctk slurm-wlm munge" \
            "chromium chromium-driver); scoring uses the Python port and tests/test_slurm.py and" \
            "tests/test_serve_browser.py are skipped" >&2
    fi
fi
echo "install.sh: ready (.venv/bin/python)"
