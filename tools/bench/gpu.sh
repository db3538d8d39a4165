#!/usr/bin/env bash
# The GPU benchmark, prepared for the day a GPU machine is available: TinyLlama-1.1B at sequence 2048,
# bf16, synthetic tokens, 30 measured steps (after 5 warm-up steps) under DDP, FSDP2, FSDP2 + torch.compile,
# FSDP2 + activation checkpointing and DeepSpeed ZeRO-2, each on all local GPUs, through the real trainer.
# Prints tokens/s per GPU, MFU and peak memory per setup as a markdown table (also OUT/table.md); every
# setup's log and JSON stay in OUT. Expected to take well under 10 minutes on one H100/H200.
#
#   bash tools/bench/gpu.sh [--smoke] [--steps N] [--micro-batch B] [--out DIR]
#
# --smoke runs the same path on CPU (tiny model, one process, 3 steps, torch.compile disabled so that
# the fsdp2+compile row measures the uncompiled model); tests/test_bench_gpu.py runs it so it cannot rot.
set -euo pipefail
cd "$(dirname "$0")/../.."
smoke=0; steps=30; warmup=5; micro=4; out=runs/bench-gpu
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --steps) steps=$2; shift ;;
    --micro-batch) micro=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "gpu.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
if [ "$smoke" = 1 ]; then
  export CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 TORCH_COMPILE_DISABLE=1
  nproc=1; model=tiny; seq=128; steps=3; warmup=1; micro=2; vocab=512
else
  nproc=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)
  if [ "$nproc" -lt 1 ]; then echo "gpu.sh: no GPU found (nvidia-smi -L); on CPU use --smoke" >&2; exit 2; fi
  model=tinyllama-1.1b; seq=2048; vocab=32000
fi
setups=(ddp fsdp2 fsdp2+compile fsdp2+ac zero2)
mkdir -p "$out"
start=$SECONDS
$py tools/bench/bench_engines.py --make-data "$out/data" --vocab "$vocab" \
  --tokens $(( (steps + warmup + 2) * micro * nproc * seq ))
failed=0
for setup in "${setups[@]}"; do
  rm -f "$out/$setup.json"
  echo "gpu.sh: $setup on $nproc process(es) ($(( SECONDS - start )) s so far)"
  if ! $py -m torch.distributed.run --standalone --nproc_per_node "$nproc" tools/bench/bench_engines.py \
      --setup "$setup" --data "$out/data" --model "$model" --seq "$seq" --micro-batch "$micro" \
      --steps "$steps" --warmup "$warmup" --json "$out/$setup.json" > "$out/$setup.log" 2>&1; then
    echo "gpu.sh: $setup failed; last lines of $out/$setup.log:" >&2
    tail -n 15 "$out/$setup.log" >&2
    failed=1
  fi
done
$py tools/bench/bench_engines.py --table $(printf "$out/%s.json " "${setups[@]}") | tee "$out/table.md"
echo "gpu.sh: done in $(( SECONDS - start )) s"
exit $failed
