"""One-epoch loader: throughput against what training consumes, and start-up at trillion-token scale.

Default: reads global batches from a multi-shard token set (50M tokens, 4 shards) the way the
trainer does (ordered sequences, per-rank slices, tensors), and compares its tokens/s with the
training throughput of the benchmark model of bench_trainer.py measured in the same run. The goal
is a ratio >= 50: the loader must never be what a step waits on.

``--scale``: builds manifests of 10B and 3T train tokens (``--sizes``) from sparse ``.npy`` shards
(header written, file truncated to size: no disk used) of ``--shard-tokens`` tokens each
(data_select's default, 50M: 200 and 60,000 shards), then starts the trainer in a fresh process
on each (tiny Llama, vocab 32000, seq 2048, a budget of 90% of the epoch, stopped after step 1)
and records wall times from just before the process is spawned:

- interpreter start, and the imports of torch, transformers and the HF Llama code: a fixed cost
  of the libraries, reported apart;
- start-up, what the framework controls: pretrain's imports + ``Trainer()`` (manifest, budget
  probe, model, engine) + ``fit()`` until the first batch is in hand (wall time, and the
  process's CPU time, which a loaded machine disturbs less);
- the first optimizer step (forward/backward of the tiny model on 2048 tokens).

and peak RSS (ru_maxrss, whole process) after the library imports, at the first batch and after
the first step. Goal: start-up < 2 s and peak RSS at the first batch < 500 MB, flat from 10B to 3T
tokens. Each size runs ``--repeats`` times (medians). It also reports the loader's tokens/s on the
largest manifest (8 ranks of 64 x 2048, random reads over all shards).

    python tools/bench/bench_loader.py [--seconds 5] [--json out.json]
    python tools/bench/bench_loader.py --scale [--repeats 3] [--shard-tokens 50000000] [--sizes 10e9,3e12]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SCALE_SIZES = (10_000_000_000, 3_000_000_000_000)
SCALE_SEQ = 2048


def loader_rate(manifest: Path, seconds: float, seq: int, batch: int, micro: int, world: int) -> float:
    from pretrain.data import OneEpochLoader, TokenData

    loaders = [OneEpochLoader(TokenData(manifest), seq_len=seq, global_batch_size=batch, micro_batch_size=micro,
                              rank=r, world_size=world, seed=0) for r in range(world)]
    tokens, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if loaders[0].sequences_consumed + batch > loaders[0].num_sequences:
            for ld in loaders:  # epoch done: start over (the trainer never would; this is a benchmark)
                ld.sequences_consumed = 0
        for ld in loaders:
            for mb in ld.next_batch():
                tokens += mb.numel()
    return tokens / (time.perf_counter() - t0)


def throughput(args) -> dict:
    from bench_trainer import BATCH, SEQ, make_data, time_bare
    from conftest import write_manifest  # the tests' synthetic shard writer

    with tempfile.TemporaryDirectory() as d:
        big = Path(d) / "big"
        big.mkdir()
        manifest = write_manifest(big, train_tokens=50_000_000, val_tokens=8192, vocab=32000)
        rate = loader_rate(manifest, args.seconds, SEQ, BATCH, BATCH, 1)
        rate_2 = loader_rate(manifest, args.seconds, 2048, 64, 4, 2)
        train_manifest = make_data(Path(d))
        steps = 20
        consumed = steps * SEQ * BATCH / time_bare(train_manifest, steps)
    out = {"loader_tokens_per_s": rate, "loader_tokens_per_s_seq2048_2ranks": rate_2,
           "training_tokens_per_s": consumed, "ratio": rate / consumed}
    print(f"loader {rate:,.0f} tok/s (seq {SEQ}, batch {BATCH}); {rate_2:,.0f} tok/s (seq 2048, 64 x 2 ranks); "
          f"training consumes {consumed:,.0f} tok/s: ratio {out['ratio']:,.0f}x (goal >= 50x)")
    return out


# --------------------------------------------------------------------------- --scale


def startup_child(manifest: str, tokens: int, run_dir: str, t_spawn: float) -> None:
    """Runs in a fresh process: imports, Trainer(), fit() to the first step; prints one JSON line."""
    import resource

    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    t_start = time.time()
    import torch  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401  (the HF model code: most of the fixed cost)

    t_libs, rss_libs, cpu_libs = time.time(), peak_mb(), time.process_time()
    from pretrain.config import from_dict
    from pretrain.trainer import Trainer

    t_import = time.time()
    cfg = from_dict({  # configs/model/tiny.yaml, with room for sequences of 2048
        "run_dir": run_dir, "data": {"manifest": manifest, "seq_len": SCALE_SEQ},
        "model": {"family": "llama", "hidden_size": 128, "intermediate_size": 352, "num_layers": 2, "num_heads": 4,
                  "num_kv_heads": 2, "max_seq_len": SCALE_SEQ},
        "schedule": {"name": "wsd", "warmup_steps": 2000, "decay_fraction": 0.2},
        "budget": {"tokens": int(tokens * 0.9), "global_batch_size": 1, "micro_batch_size": 1, "stop_at": 1},
        "checkpoint": {"every": 0, "save_final": False}, "eval": {"every": 0, "batches": 1},
        "logging": {"wandb_mode": "disabled", "progress": False},
    })
    trainer = Trainer(cfg)
    t_ctor, rss_ctor = time.time(), peak_mb()
    marks: dict = {}

    def first_call(fn, tag):
        def wrapped(*a, **k):
            out = fn(*a, **k)
            marks.setdefault(tag, (time.time(), peak_mb(), time.process_time()))
            return out
        return wrapped

    trainer.loader.next_batch = first_call(trainer.loader.next_batch, "batch")
    trainer.engine.optimizer_step = first_call(trainer.engine.optimizer_step, "step")
    try:
        trainer.fit()
    finally:
        trainer.engine.close()
    (t_batch, rss_batch, cpu_batch), (t_step, rss_step, _) = marks["batch"], marks["step"]
    print(json.dumps({"interpreter_s": t_start - t_spawn, "libraries_s": t_libs - t_start,
                      "pretrain_imports_s": t_import - t_libs, "construct_s": t_ctor - t_import,
                      "to_first_batch_s": t_batch - t_ctor, "startup_s": t_batch - t_libs,
                      "startup_cpu_s": cpu_batch - cpu_libs,
                      "first_step_s": t_step - t_batch, "total_s": t_step - t_spawn,
                      "rss_libraries_mb": rss_libs, "rss_constructed_mb": rss_ctor, "rss_first_batch_mb": rss_batch,
                      "rss_first_step_mb": rss_step, "steps_in_budget": trainer.total_steps}))


def scale(args) -> dict:
    from conftest import write_sparse_manifest
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline",
               TOKENIZERS_PARALLELISM="false", DS_ACCELERATOR="cpu")
    out: dict = {"seq_len": SCALE_SEQ, "shard_tokens": args.shard_tokens, "repeats": args.repeats, "sizes": {}}
    with tempfile.TemporaryDirectory() as d:
        for tokens in args.sizes:
            t0 = time.perf_counter()
            manifest = write_sparse_manifest(Path(d) / f"data-{tokens}", tokens, args.shard_tokens)
            n_shards = -(-tokens // args.shard_tokens)
            print(f"{tokens:,} tokens: {n_shards:,} sparse shards written in {time.perf_counter() - t0:.1f} s "
                  f"(manifest {manifest.stat().st_size / 1e6:.1f} MB)", flush=True)
            runs = []
            for r in range(args.repeats):
                cmd = [sys.executable, __file__, "--startup-child", str(manifest), str(tokens),
                       str(Path(d) / f"run-{tokens}-{r}")]
                t_spawn = time.time()
                p = subprocess.run(cmd + [repr(t_spawn)], env=env, cwd=ROOT, capture_output=True, text=True)
                if p.returncode:
                    raise SystemExit(f"start-up run failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
                runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
            row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            row["shards"] = n_shards
            out["sizes"][str(tokens)] = row
            r = row
            print(f"  interpreter {r['interpreter_s']:.2f} s + torch/transformers/Llama imports {r['libraries_s']:.2f} s"
                  f" | pretrain imports {r['pretrain_imports_s']:.2f} s + Trainer() {r['construct_s']:.2f} s + fit() to "
                  f"the first batch {r['to_first_batch_s']:.2f} s = start-up {r['startup_s']:.2f} s ("
                  f"{r['startup_cpu_s']:.2f} s CPU) | first step {r['first_step_s']:.2f} s; total {r['total_s']:.2f} s "
                  f"from spawn; peak RSS after the libraries {r['rss_libraries_mb']:.0f} MB, at the first batch "
                  f"{r['rss_first_batch_mb']:.0f} MB, after the first step {r['rss_first_step_mb']:.0f} MB "
                  f"(medians of {args.repeats})", flush=True)
        rate = loader_rate(Path(d) / f"data-{args.sizes[-1]}" / "manifest.json", args.seconds, SCALE_SEQ, 512, 8, 8)
    lo, hi = (out["sizes"][str(t)] for t in (args.sizes[0], args.sizes[-1]))
    out["loader_tokens_per_s_largest_8ranks"] = rate
    out["goal_met"] = all(r["startup_s"] < 2 and r["rss_first_batch_mb"] < 500 for r in (lo, hi))
    print(f"loader on the {args.sizes[-1]:,}-token manifest: {rate:,.0f} tok/s (8 ranks x 64 x {SCALE_SEQ}, "
          "random reads over all shards)")
    print(f"{args.sizes[0]:,} -> {args.sizes[-1]:,} tokens: start-up {lo['startup_s']:.2f} -> {hi['startup_s']:.2f} s "
          f"(CPU {lo['startup_cpu_s']:.2f} -> {hi['startup_cpu_s']:.2f} s), peak RSS at the first batch {lo['rss_first_batch_mb']:.0f} -> {hi['rss_first_batch_mb']:.0f} MB "
          f"(after step 1: {lo['rss_first_step_mb']:.0f} -> {hi['rss_first_step_mb']:.0f} MB); goal < 2 s and < 500 MB: "
          f"{'met' if out['goal_met'] else 'NOT met'}")
    return out


def main() -> dict:
    if len(sys.argv) == 6 and sys.argv[1] == "--startup-child":
        startup_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
        return {}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per loader throughput measurement")
    p.add_argument("--scale", action="store_true", help="start-up time and memory at 10B and 3T tokens")
    p.add_argument("--repeats", type=int, default=3, help="--scale: start-up runs per size (medians reported)")
    p.add_argument("--shard-tokens", type=int, default=50_000_000, help="--scale: tokens per sparse shard")
    p.add_argument("--sizes", type=lambda v: [int(float(x)) for x in v.split(",")], default=list(SCALE_SIZES),
                   help="--scale: train tokens of each manifest, comma-separated (default 10e9,3e12)")
    p.add_argument("--json")
    args = p.parse_args()
    out = scale(args) if args.scale else throughput(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
