"""Tokens/s per device, MFU and peak memory of one engine setup, through the real trainer.

One setup per launch (run it under torchrun for several processes; ``tools/bench/gpu.sh`` does
that for every setup and prints the table):

    python tools/bench/bench_engines.py --make-data DIR --vocab 32000 --tokens 3000000
    torchrun --nproc_per_node N tools/bench/bench_engines.py --setup fsdp2 --data DIR \\
        --model tinyllama-1.1b --seq 2048 --micro-batch 4 --steps 30 --json fsdp2.json
    python tools/bench/bench_engines.py --table fsdp2.json ddp.json ...

Throughput and MFU are medians over the measured steps (the first ``--warmup`` steps, which
include compilation, are left out); MFU uses the trainer's 6N + 12·L·d·T FLOPs per token and the
device's dense bf16 peak. Peak memory is the largest over ranks: ``torch.cuda.max_memory_allocated``
on GPU, the peak resident set size of the process on CPU.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SETUPS = {
    "ddp": ["dist.engine=accelerate"],
    "ddp+ac": ["dist.engine=accelerate", "model.activation_checkpointing=true"],
    "fsdp2": ["dist.engine=fsdp2"],
    "fsdp2+compile": ["dist.engine=fsdp2", "dist.compile=true"],
    "fsdp2+ac": ["dist.engine=fsdp2", "model.activation_checkpointing=true"],
    "zero2": ["dist.engine=deepspeed", f"dist.deepspeed_config={ROOT / 'configs/deepspeed/zero2.json'}"],
}
# ~50M parameters with a 32k vocabulary: the CPU activation-checkpointing benchmark's model
MODELS = {"50m": {"family": "llama", "vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1376,
                  "num_layers": 6, "num_heads": 8, "num_kv_heads": 8, "max_seq_len": 2048}}


def make_data(out: Path, vocab: int, tokens: int) -> Path:
    from conftest import write_manifest  # the tests' synthetic shard writer (seeded token stream)

    return write_manifest(out, train_tokens=tokens, val_tokens=max(8192, tokens // 100), vocab=vocab, tag="bench")


def peak_memory_gib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_setup(args) -> dict | None:
    import torch
    import torch.distributed as dist

    from pretrain.config import load_config
    from pretrain.engines.base import world_info
    from pretrain.metrics import read_metrics
    from pretrain.trainer import Trainer

    world = world_info()[2]
    model = MODELS.get(args.model, args.model)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "bench.yaml"
        cfg_path.write_text(yaml.safe_dump({
            "run_dir": str(Path(args.run_dir or tmp) / args.setup), "model": model,
            "data": {"manifest": str(Path(args.data) / "manifest.json"), "seq_len": args.seq},
            "optim": {"lr": 3e-4}, "schedule": {"name": "constant"},
            "budget": {"steps": args.warmup + args.steps, "global_batch_size": args.micro_batch * world,
                       "micro_batch_size": args.micro_batch},
            "checkpoint": {"every": 0, "save_final": False}, "eval": {"every": 0, "batches": 1},
            "logging": {"wandb_mode": "disabled", "progress": False},
        }))
        cfg = load_config(cfg_path, [f"model.max_seq_len={max(args.seq, 2)}", *SETUPS[args.setup], *args.overrides])
        trainer = Trainer(cfg)
        trainer.fit()
        trainer.engine.close()
        engine = trainer.engine
        peak = torch.tensor([peak_memory_gib(engine.device)], device=engine.device)
        if dist.is_initialized():
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        if engine.rank != 0:
            return None
        steps = [r for r in read_metrics(Path(cfg.run_dir) / "metrics.jsonl", "train") if r["step"] > args.warmup]
        mfu = [r["mfu"] for r in steps if r.get("mfu") is not None]
        return {"setup": args.setup, "model": args.model, "params": trainer.n_params, "world_size": world,
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "precision": engine.precision, "seq_len": args.seq, "micro_batch": args.micro_batch,
                "measured_steps": len(steps),
                "tokens_per_s_per_device": statistics.median(r["tokens_per_s"] for r in steps) / world,
                "step_time_s": statistics.median(r["time"] for r in steps),
                "mfu": statistics.median(mfu) if mfu else None,
                "peak_memory_gib": float(peak[0])}


def table(paths: list[Path]) -> str:
    """Markdown table of results; a setup whose JSON is missing (its run failed) gets a row saying so."""
    rows = [json.loads(p.read_text()) if p.is_file() else {"setup": p.stem} for p in paths]
    done = [r for r in rows if "params" in r]
    if not done:
        return "no setup finished"
    first = done[0]
    lines = [f"{first['model']} ({first['params']:,} parameters), sequence {first['seq_len']}, micro-batch "
             f"{first['micro_batch']} per device, {first['precision']}, {first['world_size']} x {first['device']}, "
             f"median of {first['measured_steps']} measured steps", "",
             "| setup | tokens/s per device | step time (s) | MFU | peak memory (GiB) |", "|---|---|---|---|---|"]
    for r in rows:
        if "params" not in r:
            lines.append(f"| {r['setup']} | failed (see its log) | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['setup']} | {r['tokens_per_s_per_device']:,.0f} | {r['step_time_s']:.3f} | {mfu} | "
                     f"{r['peak_memory_gib']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--make-data", metavar="DIR", help="write a synthetic token manifest here and exit")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tokens", type=int, default=3_000_000)
    p.add_argument("--table", nargs="+", metavar="JSON", help="print the table of these results and exit")
    p.add_argument("--setup", choices=sorted(SETUPS))
    p.add_argument("--data", help="directory written by --make-data")
    p.add_argument("--model", default="tinyllama-1.1b", help="preset under configs/model/ or one of: " + ", ".join(MODELS))
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=30, help="measured steps")
    p.add_argument("--warmup", type=int, default=5, help="steps run first and not measured")
    p.add_argument("--run-dir", help="keep the run directories here (default: a temporary directory)")
    p.add_argument("--json", help="write the result here (rank 0)")
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides, e.g. dist.precision=fp32")
    args = p.parse_args()
    if args.make_data:
        print(make_data(Path(args.make_data), args.vocab, args.tokens))
        return
    if args.table:
        print(table([Path(f) for f in args.table]))
        return
    if not (args.setup and args.data):
        p.error("--setup and --data are needed to run a setup")
    from pretrain.engines.base import shutdown_distributed

    try:
        result = run_setup(args)
    finally:
        shutdown_distributed()
    if result is not None:
        print(json.dumps(result), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
