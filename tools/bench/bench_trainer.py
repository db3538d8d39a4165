"""Trainer throughput against a bare PyTorch loop over the same HF model, batch and optimizer.

Both sides train the same Llama from the same data for the same number of steps, in one
process, alternating rounds so machine noise hits both alike. The trainer's per-step cost is
taken from the difference of two run lengths (long - short), so start-up (process group,
model build, data mapping) cancels and everything inside the loop counts: schedule, loader,
logging, tqdm, metrics. The goal is a ratio >= 0.95.

    python tools/bench/bench_trainer.py [--steps 40] [--rounds 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from pretrain.config import from_dict  # noqa: E402
from pretrain.data import OneEpochLoader, TokenData  # noqa: E402
from pretrain.engines.base import param_groups  # noqa: E402
from pretrain.model import build_model, count_params  # noqa: E402
from pretrain.trainer import train  # noqa: E402

MODEL = {"family": "llama", "vocab_size": 0, "hidden_size": 256, "intermediate_size": 688, "num_layers": 4,
         "num_heads": 4, "num_kv_heads": 4, "max_seq_len": 256}
SEQ, BATCH = 256, 8


def make_data(root: Path) -> Path:
    from conftest import write_manifest  # the tests' synthetic shard writer

    return write_manifest(root / "data", train_tokens=4_000_000, val_tokens=8_192, vocab=8000)


def config(manifest: Path, run_dir: Path, steps: int) -> dict:
    return {"run_dir": str(run_dir), "model": MODEL, "data": {"manifest": str(manifest), "seq_len": SEQ},
            "optim": {"lr": 1e-3, "grad_clip": 1.0}, "schedule": {"name": "cosine", "warmup_steps": 2},
            "budget": {"steps": steps, "global_batch_size": BATCH, "micro_batch_size": BATCH},
            "checkpoint": {"every": 0, "save_final": False}, "eval": {"every": 0, "batches": 1},
            "logging": {"wandb_mode": "disabled", "progress": True, "log_every": 1}}


def time_trainer(manifest: Path, tmp: Path, steps: int, tag: str) -> float:
    t0 = time.perf_counter()
    train(from_dict(config(manifest, tmp / f"run-{tag}-{steps}", steps)))
    return time.perf_counter() - t0


def time_bare(manifest: Path, steps: int, warmup: int = 3) -> float:
    """nanoGPT-style loop: same model init, AdamW groups, clipping and batches as the trainer."""
    data = TokenData(manifest)
    torch.manual_seed(0)
    cfg = from_dict(config(manifest, Path("unused"), steps))
    model = build_model(cfg.model, -(-data.vocab_size // 64) * 64, attn_impl="sdpa")
    opt = torch.optim.AdamW(param_groups(model, 0.1, False), lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    loader = OneEpochLoader(data, seq_len=SEQ, global_batch_size=BATCH, micro_batch_size=BATCH, seed=0)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        (x,) = loader.next_batch()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    return time.perf_counter() - t0


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="measured steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0 = torch's default)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok_per_step = SEQ * BATCH
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        manifest = make_data(tmp)
        trainer_rates, bare_rates, ratios = [], [], []
        for r in range(args.rounds):
            bare = time_bare(manifest, args.steps)
            short = time_trainer(manifest, tmp, 5, f"r{r}")
            long = time_trainer(manifest, tmp, 5 + args.steps, f"r{r}")
            bare_rates.append(args.steps * tok_per_step / bare)
            trainer_rates.append(args.steps * tok_per_step / (long - short))
            ratios.append(trainer_rates[-1] / bare_rates[-1])
            print(f"round {r}: bare {bare_rates[-1]:,.0f} tok/s, trainer {trainer_rates[-1]:,.0f} tok/s, "
                  f"ratio {ratios[-1]:.3f}", flush=True)
        n_params = count_params(build_model(from_dict(config(manifest, tmp, 5)).model, 8000, device="meta"))
    out = {"model_params": n_params, "seq_len": SEQ, "batch": BATCH, "threads": torch.get_num_threads(),
           "bare_tokens_per_s": statistics.median(bare_rates), "trainer_tokens_per_s": statistics.median(trainer_rates)}
    out["ratio"] = statistics.median(ratios)  # per-round ratios: both sides of a round saw the same load
    out["ratios"] = ratios
    print(f"trainer {out['trainer_tokens_per_s']:,.0f} tok/s vs bare loop {out['bare_tokens_per_s']:,.0f} tok/s "
          f"(medians of {args.rounds} rounds): ratio {out['ratio']:.3f} (median of per-round ratios "
          f"{', '.join(f'{x:.2f}' for x in ratios)}; goal >= 0.95); {n_params:,} params")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
