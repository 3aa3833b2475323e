#!/usr/bin/env bash
# Set everything up and run the built-in demo (a federated multi-task experiment on MNIST-1D).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo   # the MNIST-1D source and the plots are extras
exec .venv/bin/fedmtl demo "$@"
