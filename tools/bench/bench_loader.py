"""One-epoch loader throughput against what training consumes.

Reads global batches from a memory-mapped multi-shard token set (50M tokens, 4 shards) the
way the trainer does (permuted sequences, per-rank slices, tensors), and compares its tokens/s
with the training throughput of the benchmark model of bench_trainer.py measured in the same
run. The goal is a ratio >= 50: the loader must never be what a step waits on.

    python tools/bench/bench_loader.py [--seconds 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pretrain.data import OneEpochLoader, TokenData  # noqa: E402


def loader_rate(manifest: Path, seconds: float, seq: int, batch: int, micro: int, world: int) -> float:
    data = TokenData(manifest)
    loaders = [OneEpochLoader(data, seq_len=seq, global_batch_size=batch, micro_batch_size=micro, rank=r,
                              world_size=world, seed=0) for r in range(world)]
    tokens, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if loaders[0].sequences_consumed + batch > loaders[0].num_sequences:
            for ld in loaders:  # epoch done: start over (the trainer never would; this is a benchmark)
                ld.sequences_consumed = 0
        for ld in loaders:
            for mb in ld.next_batch():
                tokens += mb.numel()
    return tokens / (time.perf_counter() - t0)


def main() -> dict:
    from bench_trainer import SEQ, BATCH, make_data, time_bare
    from conftest import write_manifest  # the tests' synthetic shard writer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--json")
    args = p.parse_args()
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
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
