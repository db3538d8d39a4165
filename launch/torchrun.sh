#!/usr/bin/env bash
# Data-parallel training with torchrun (DDP; gloo on CPU, nccl on GPU).
#   launch/torchrun.sh NPROC CONFIG [key=value ...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on every node.
set -euo pipefail
nproc=${1:?usage: launch/torchrun.sh NPROC CONFIG [key=value ...]}; shift
exec torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$nproc" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  -m pretrain train "$@"
