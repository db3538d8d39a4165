#!/usr/bin/env bash
# The whole mission on the built-in default data, end to end:
#   corpus (Debian packages, ~6 MB, 8 domains; on a machine that cannot build it completely, e.g. without
#   apt-get/dpkg-deb, the committed 8-domain sample tests/fixtures/corpus, said in one line)
#   -> MiniLM features -> dedup + DiSF -> token shards -> tiny Llama, one WSD main run decayed into a model
#   for each of 2 budgets (fractions of one epoch of the selection) -> HF exports -> summary.
# Everything lands in work/ and runs/quickstart/; re-running skips finished steps. Arguments go to
# `data-select corpus` (e.g. --full). Knobs, for tests and quick looks:
#   BUDGETLM_PYTHON=PATH   an interpreter that has this project installed (no .venv setup)
#   QUICKSTART_DATA_ARGS / QUICKSTART_TRAIN_ARGS   extra key=value overrides for `data-select run` / `pretrain plan`
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${BUDGETLM_PYTHON:-}" ]; then
  PY=$BUDGETLM_PYTHON
else
  bash tools/setup.sh
  PY=.venv/bin/python
fi
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
start=$(date +%s)
$PY -m data_select corpus --out work/corpus --fallback tests/fixtures/corpus "$@"
# shellcheck disable=SC2086  # the override lists are meant to split into words
$PY -m data_select run configs/data/quickstart.yaml ${QUICKSTART_DATA_ARGS:-}
$PY -m pretrain schedule configs/train/quickstart.yaml --plot runs/quickstart/schedule.png
# shellcheck disable=SC2086
$PY -m pretrain plan configs/train/quickstart.yaml run_dir=runs/quickstart ${QUICKSTART_TRAIN_ARGS:-}
$PY tools/summary.py --corpus work/corpus --data work/quickstart --plan runs/quickstart --seconds $(( $(date +%s) - start ))
