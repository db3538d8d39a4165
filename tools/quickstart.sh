#!/usr/bin/env bash
# The whole mission on the built-in default data, end to end:
#   corpus (Debian packages, ~6 MB, 8 domains) -> MiniLM features -> dedup + DiSF -> token shards
#   -> tiny Llama, one WSD main run decayed into a model for each of 2 budgets -> HF exports -> summary.
# Everything lands in work/ and runs/quickstart/; re-running skips finished steps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
start=$(date +%s)
$PY -m data_select corpus --out work/corpus "$@"
$PY -m data_select run configs/data/quickstart.yaml
$PY -m pretrain schedule configs/train/quickstart.yaml --plot runs/quickstart/schedule.png
$PY -m pretrain plan configs/train/quickstart.yaml run_dir=runs/quickstart
$PY tools/summary.py --data work/quickstart --plan runs/quickstart --seconds $(( $(date +%s) - start ))
