#!/usr/bin/env bash
# DeepSpeed ZeRO training with the deepspeed launcher.
#   launch/deepspeed.sh NPROC ZERO_JSON CONFIG [key=value ...]
#   e.g. launch/deepspeed.sh 2 configs/deepspeed/zero2.json configs/train/quickstart.yaml
# Multi-node: HOSTFILE=launch/hostfile.example launch/deepspeed.sh 8 ...
# On CPU (no GPU) DeepSpeed needs DS_ACCELERATOR=cpu; it is set here when no GPU is visible.
set -euo pipefail
nproc=${1:?usage: launch/deepspeed.sh NPROC ZERO_JSON CONFIG [key=value ...]}; ds=${2:?zero json}; shift 2
if ! python -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  export DS_ACCELERATOR=cpu
  # the launcher counts GPUs; on CPU give it the process count explicitly
  exec deepspeed --no_local_rank --num_gpus "$nproc" --master_port "${MASTER_PORT:-29500}" --module pretrain train "$@" \
    dist.engine=deepspeed dist.deepspeed_config="$ds"
fi
hostfile_args=()
[ -n "${HOSTFILE:-}" ] && hostfile_args=(--hostfile "$HOSTFILE")
exec deepspeed --no_local_rank "${hostfile_args[@]}" --num_gpus "$nproc" --master_port "${MASTER_PORT:-29500}" \
  --module pretrain train "$@" dist.engine=deepspeed dist.deepspeed_config="$ds"
