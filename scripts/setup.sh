#!/usr/bin/env bash
# Create (or reuse) .venv and install fedmtl into it.
#   scripts/setup.sh            -> the package and its runtime dependencies
#   scripts/setup.sh dev,flower -> plus those extras (pyproject.toml lists them; `all` = every feature)
# torch==2.13.0 is installed first: it is the CPU build on this machine's disk, and the package's own
# requirement (torch>=2.3) is then already satisfied, so pip never downloads a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.13.0"
if [ -n "$extras" ]; then
    .venv/bin/python -m pip install -q -e ".[$extras]"
else
    .venv/bin/python -m pip install -q -e .
fi
