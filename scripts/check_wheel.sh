#!/usr/bin/env bash
# Build the wheel and sdist, install the wheel (with the demo's extras) into a fresh venv outside the
# source tree, and run a short demo from there: what `pip install fedmtl[demo]; fedmtl demo` gives a user.
#   scripts/check_wheel.sh [WORKDIR]      (default: a new temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
python="${PYTHON:-python3}"
mkdir -p "$work"
"$python" -m venv "$work/build-venv"                          # the build tool, apart from the test venv
"$work/build-venv/bin/python" -m pip install -q build
"$work/build-venv/bin/python" -m build --outdir "$work/dist" . >"$work/build.log"
ls "$work/dist"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$work/venv/bin/python" -m pip install -q "torch==2.13.0"   # the CPU build, before pip picks a CUDA one
wheel=$(ls "$work"/dist/fedmtl-*.whl)
"$work/venv/bin/python" -m pip install -q "$wheel"          # the core alone first
cd "$work"
"$work/venv/bin/fedmtl" --version
if "$work/venv/bin/fedmtl" demo --rounds 1 --quiet --out runs-core 2>err.txt; then
    echo "expected the core install to refuse the demo (its data source is an extra)"; exit 1
fi
grep -q "pip install 'fedmtl\[mnist1d\]'" err.txt && echo "core install: the demo names the extra it needs"
"$work/venv/bin/python" -m pip install -q "$wheel[demo]"
"$work/venv/bin/fedmtl" demo --rounds 3 --quiet --out runs --set data.source.num_samples=2000
test -s runs/*/report.html && test -s runs/*/plots/task_metrics.png && echo "wheel OK: $wheel"
