#!/usr/bin/env bash
# Fetch the wheels the GPU machine lacks into .whl/ (git-ignored; carried to it with `carry: [".whl"]`),
# on a machine with the package registries: scripts/gpu_wheels.py says which and why.
#   scripts/gpu-wheels.sh [--dry-run]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" scripts/gpu_wheels.py --out .whl "$@"
