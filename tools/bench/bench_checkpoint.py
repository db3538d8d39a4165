"""Checkpoint save and verify time of a ~100M-parameter Llama, through the real trainer, on 1 or N processes.

    python tools/bench/bench_checkpoint.py --out DIR                       # DDP and FSDP2 on 1 and 2 processes
    python tools/bench/bench_checkpoint.py --out DIR --setups ddp:2 --repeats 5

Each setup runs in a fresh launch (torchrun for N > 1): one optimizer step (so the Adam moments
exist), then ``--repeats`` saves of that step. Per save it times, with all ranks synchronised:

- ``save``: ``Trainer.save_checkpoint`` end to end (every rank writes and hashes its own files,
  rank 0 lists them and renames the directory);
- ``hash (own files)``: every rank hashing what it wrote, on its thread pool, as the save does;
  ``rank 0 serial hash``: one thread of rank 0 hashing the whole checkpoint, which is what the
  save did before (and what every rank waited for);
- ``verify``: the resume check as the trainer runs it (each rank checks a share of the files,
  balanced by size, then one gather); ``rank 0 serial verify``: rank 0 alone reading and hashing
  every file, the check before.

The files are in the page cache when hashed (they were just written), so the hashing figures are
CPU-bound: on a parallel file system reading them adds I/O time that spreads over ranks the same
way. Medians over the repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# ~106M parameters: d 768, 8 layers, vocabulary 32k (untied)
MODEL = {"family": "llama", "vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048, "num_layers": 8,
         "num_heads": 12, "num_kv_heads": 12, "max_seq_len": 128}
ENGINES = {"ddp": "accelerate", "fsdp2": "fsdp2"}


def _timed(trainer, fn) -> float:
    trainer.engine.barrier()
    t0 = time.perf_counter()
    fn()
    trainer.engine.barrier()
    return time.perf_counter() - t0


def worker(args) -> None:
    from conftest import base_config

    from pretrain import checkpoint as ckpt_io
    from pretrain.config import from_dict
    from pretrain.trainer import Trainer

    cfg = base_config(Path(args.data) / "manifest.json", Path(args.run_dir), model=MODEL, data={"seq_len": 64},
                      budget={"steps": 1, "global_batch_size": 2, "micro_batch_size": 1},
                      schedule={"warmup_steps": 0}, checkpoint={"save_final": False}, eval={"every": 0, "batches": 1},
                      dist={"engine": ENGINES[args.setup]})
    trainer = Trainer(from_dict(cfg))
    trainer.fit()
    rows = []
    for _ in range(args.repeats):
        row = {"save": _timed(trainer, trainer.save_checkpoint)}
        ckpt = trainer.ckpt_root / ckpt_io.step_dir_name(trainer.step)
        listing = ckpt_io.read_listing(ckpt)["files"]
        own = [e["path"] for e in listing if e["rank"] == trainer.rank]
        row["hash (own files)"] = _timed(trainer, lambda: ckpt_io.hash_files(ckpt, own, trainer.rank))
        row["rank 0 serial hash"] = _timed(trainer, lambda: trainer.is_main and [ckpt_io.sha256_file(ckpt / e["path"])
                                                                                  for e in listing])
        row["verify"] = _timed(trainer, lambda: trainer._problem(ckpt))
        row["rank 0 serial verify"] = _timed(trainer, lambda: trainer.is_main and _serial_verify(ckpt, listing))
        rows.append(row)
    if trainer.is_main:
        size = sum(e["bytes"] for e in ckpt_io.read_listing(trainer.ckpt_root / "step-00000001")["files"])
        result = {"setup": f"{args.setup} x{trainer.world_size}", "params": trainer.n_params, "bytes": size,
                  "files": len(listing), "hash_threads": ckpt_io.hash_threads(),
                  **{k: statistics.median(r[k] for r in rows) for k in rows[0]}}
        Path(args.json).write_text(json.dumps(result))
    trainer.engine.close()


def _serial_verify(ckpt: Path, listing: list[dict]) -> None:
    """The check before this change: one process stats and hashes every file, one after the other."""
    from pretrain import checkpoint as ckpt_io

    for e in listing:
        f = ckpt / e["path"]
        assert f.stat().st_size == e["bytes"] and ckpt_io.sha256_file(f) == e["sha256"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="working directory (data, runs, results)")
    p.add_argument("--setups", nargs="+", default=["ddp:1", "ddp:2", "fsdp2:1", "fsdp2:2"], help="ENGINE:NPROC")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--setup", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from conftest import free_port, write_manifest

    out = Path(args.out)
    data = out / "data"
    if not (data / "manifest.json").is_file():
        write_manifest(data, train_tokens=200_000, val_tokens=8192, vocab=32000, tag="bench-checkpoint")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    results = []
    for setup in args.setups:
        engine, nproc = setup.split(":")
        tag = f"{engine}-x{nproc}"
        shutil.rmtree(out / tag, ignore_errors=True)  # a fresh run each time
        cmd = [__file__, "--out", str(out), "--worker", "--setup", engine, "--data", str(data), "--run-dir", str(out / tag),
               "--json", str(out / f"{tag}.json"), "--repeats", str(args.repeats)]
        launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", nproc, "--master_port",
                   str(free_port())] if int(nproc) > 1 else [sys.executable])
        subprocess.run(launch + cmd, check=True, env=env)
        results.append(json.loads((out / f"{tag}.json").read_text()))
    keys = ["save", "hash (own files)", "rank 0 serial hash", "verify", "rank 0 serial verify"]
    print(f"| setup | params | checkpoint | {' | '.join(keys)} |")
    print("|---|---|---|" + "---|" * len(keys))
    for r in results:
        print(f"| {r['setup']} | {r['params'] / 1e6:.1f}M | {r['bytes'] / 2**30:.2f} GiB in {r['files']} files | "
              + " | ".join(f"{r[k]:.2f} s" for k in keys) + " |")


if __name__ == "__main__":
    main()
