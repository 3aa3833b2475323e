#!/bin/bash
# The GPU figures the engine issue (#15) asks for, in one prepared run: W3 (vectorised engine and bare loop on
# the GPU, the sequential engine on the CPU as the reference), one round of 2,500 / 5,000 / 10,000 clients, and
# W1 and W2-10k (vectorised engine and bare loop on the GPU). About 5 minutes on one GPU.
#
#   bash benchmarks/gpu.sh                  # python3 with a CUDA build of torch and fedmtl's dependencies
#   PYTHON=.venv/bin/python DEVICE=cuda:1 RESULTS=/tmp/out bash benchmarks/gpu.sh
#
# Writes general_engine_gpu.json and engines_gpu.json to $RESULTS (default benchmarks/results) and prints the
# tables; a machine without that GPU stops at once with runtime.device's error.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
RESULTS=${RESULTS:-benchmarks/results}
mkdir -p "$RESULTS"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
"$PY" benchmarks/general_engine.py --device "$DEVICE" --only "W3,scale" --rounds 5 --out "$RESULTS/general_engine_gpu.json"
"$PY" benchmarks/engines.py --device "$DEVICE" --workloads W1,W2-10k --skip-sweep --threads 4 --out "$RESULTS/engines_gpu.json"
