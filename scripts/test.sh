#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint, and run the whole test suite against a real ComfyUI.
# Extra arguments go to pytest, e.g. scripts/test.sh -k interrupt -x
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd -- "$repo"
scripts/setup.sh
.venv/bin/ruff check src tests scripts workflows bench
.venv/bin/ruff format --check src tests scripts workflows bench
exec .venv/bin/python -m pytest "$@"
