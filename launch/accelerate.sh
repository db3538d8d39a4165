#!/usr/bin/env bash
# Training under `accelerate launch` with a config from configs/accelerate/.
#   launch/accelerate.sh ACCEL_YAML CONFIG [key=value ...]
# On a CPU-only machine use configs/accelerate/cpu-2proc.yaml: accelerate's own MULTI_CPU mode runs a
# single process here, so this script sets ACCELERATE_USE_CPU=true with the MULTI_GPU launcher instead.
set -euo pipefail
acc=${1:?usage: launch/accelerate.sh ACCEL_YAML CONFIG [key=value ...]}; shift
if ! python -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  export ACCELERATE_USE_CPU=true
fi
exec accelerate launch --config_file "$acc" -m pretrain train "$@"
