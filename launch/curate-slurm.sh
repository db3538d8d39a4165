#!/usr/bin/env bash
# Curation on a Slurm cluster: each step of `data-select run` as a job array of N tasks (each task
# takes whole input files, or whole DiSF batches), then one merge job, chained with dependencies;
# the report last. One YAML drives everything, as `data-select run` does under torchrun.
#   launch/curate-slurm.sh configs/data/disf-paper.yaml 64 [key=value ...]
# Resources per job: SBATCH_OPTS (e.g. "--partition=gpu --gpus-per-task=1 --time=12:00:00").
# A task that fails can be resubmitted alone: finished parts are skipped, a part without its
# completion marker is redone, and a merge refuses missing or unfinished parts.
set -euo pipefail
config=${1:?usage: launch/curate-slurm.sh CONFIG N [key=value ...]}
n=${2:?usage: launch/curate-slurm.sh CONFIG N [key=value ...]}
shift 2
ds=${DATA_SELECT:-"$(pwd)/.venv/bin/data-select"}
overrides=$(printf ' %q' "$@")
read -r -a opts <<< "${SBATCH_OPTS:-}"
dep=()
for step in index embed select tokenize; do
  if [ "$step" = select ]; then  # the near-duplicate pass of a dedup method, once (a no-op otherwise)
    dedup=$(sbatch --parsable "${opts[@]}" "${dep[@]}" --job-name curate-dedup --wrap "$ds run $config$overrides --step dedup")
    dep=(--dependency "afterok:${dedup%%;*}")
  fi
  array=$(sbatch --parsable "${opts[@]}" "${dep[@]}" --job-name "curate-$step" --array "0-$((n - 1))" \
    --wrap "$ds run $config$overrides --step $step --shard \$SLURM_ARRAY_TASK_ID/$n")
  merged=$(sbatch --parsable "${opts[@]}" --dependency "afterok:${array%%;*}" --job-name "curate-$step-merge" \
    --wrap "$ds run $config$overrides --step $step --merge")
  dep=(--dependency "afterok:${merged%%;*}")
done
sbatch --parsable "${opts[@]}" "${dep[@]}" --job-name curate-report --wrap "$ds run $config$overrides --step report"
