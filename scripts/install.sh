#!/usr/bin/env bash
# Creates ./.venv if missing, installs torch (the CPU build unless one is already there), the
# test and benchmark tools and the peer libraries the adapters serve (without their
# dependencies, so that pip keeps that torch), then builds lipkernels in place (editable)
# against that torch.
# Idempotent: a second run only rebuilds what changed.
#   PYTHON=python3.12 bash scripts/install.sh     choose the interpreter for a new .venv
#   LIPKERNELS_TORCH="torch==2.13.0"              the torch requirement used when none is installed
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate

if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "${LIPKERNELS_TORCH:-torch==2.13.0}"
fi
python -m pip install -q -r requirements-dev.txt
python -m pip install -q --no-deps -r requirements-peers.txt
MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q --no-build-isolation --no-deps -e .
python -c "import lipkernels, json; print(json.dumps(lipkernels.build_info(), indent=1))"
