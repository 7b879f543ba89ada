#!/usr/bin/env bash
# Set everything up and run the whole test suite (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec .venv/bin/python -m pytest -q "$@"
