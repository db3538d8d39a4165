#!/usr/bin/env bash
# Data-parallel training with torchrun (DDP; gloo on CPU, nccl on GPU).
#   launch/torchrun.sh NPROC CONFIG [key=value ...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on every node.
# SIGTERM or SIGUSR1 to torchrun reaches every worker: each saves its current step and exits (status 75);
# torchrun waits SAVE_TIMEOUT seconds (default 300) for them before SIGKILL.
set -euo pipefail
nproc=${1:?usage: launch/torchrun.sh NPROC CONFIG [key=value ...]}; shift
exec torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$nproc" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout "${SAVE_TIMEOUT:-300}" \
  -m pretrain train "$@"
