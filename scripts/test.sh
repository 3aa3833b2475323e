#!/usr/bin/env bash
# Set everything up (with every optional extra, so their tests run too) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "dev,all"
# Fashion-MNIST comes from Debian; its real-data test is skipped when the package is absent.
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || echo "note: could not install dataset-fashion-mnist; its test will be skipped"
fi
# The report's browser check screenshots report.html headlessly; skipped without a browser.
if ! command -v chromium-headless-shell >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -q >/dev/null 2>&1 || true; apt-get install -y -q --no-install-recommends chromium-headless-shell >/dev/null 2>&1; } || echo "note: could not install chromium-headless-shell; the report screenshot test will be skipped"
fi
# Flower starts its helper processes (flower-superexec, flwr-clientapp) by name from PATH
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy src/fedmtl
workers="${PYTEST_WORKERS:-2}"
exec .venv/bin/python -m pytest -n "$workers" -p no:cacheprovider "$@"
