"""Atomic checkpoints, integrity checks and RNG capture for exact resume.

Layout of ``RUN/checkpoints/step-NNNNNNNN/``: the engine's model and optimizer files (full
``model.safetensors`` + optimizer state, or FSDP2's per-rank ``dcp/`` shards; see
``pretrain/engines/weights.py``), ``trainer.json`` (step, loader state, budget, engine),
``rng/rank-NNNNN.pt`` and ``config.yaml``, all listed with sizes, sha256 and the rank that wrote
them in ``checkpoint.json``, which is written last. The directory is built under a temporary name
and renamed; ``latest`` is updated after the rename. A directory without a matching
``checkpoint.json`` is never loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

CKPT_PREFIX = "step-"
MANIFEST = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, partial or corrupt; the message names it."""


def step_dir_name(step: int) -> str:
    return f"{CKPT_PREFIX}{step:08d}"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- writing


def begin(ckpt_root: Path, step: int) -> Path:
    """Fresh temporary directory for step ``step`` (rank 0 calls this, then all ranks write into it)."""
    tmp = ckpt_root / f".tmp-{step_dir_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "rng").mkdir(parents=True)
    return tmp


def write_rng(tmp: Path, rank: int) -> str:
    rel = f"rng/rank-{rank:05d}.pt"
    torch.save(rng_state(), tmp / rel)
    return rel


def finalize(ckpt_root: Path, tmp: Path, step: int, keep_last: int, pinned: tuple[int, ...] = (),
             writers: list[list[str]] | None = None) -> Path:
    """Hash every file, write checkpoint.json, rename into place, move ``latest``, prune (rank 0).

    ``writers[r]`` lists the files rank ``r`` wrote; each entry records its rank, so a damaged
    shard names the process (and node) that wrote it. Files no rank claims were written by rank 0.
    """
    rank_of = {path: r for r, paths in enumerate(writers or []) for path in paths}
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    listing = [{"path": p.relative_to(tmp).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p),
                "rank": rank_of.get(p.relative_to(tmp).as_posix(), 0)} for p in files]
    atomic_write_text(tmp / MANIFEST, json.dumps({"step": step, "files": listing}, indent=1))
    final = ckpt_root / step_dir_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(ckpt_root / "latest", final.name + "\n")
    if keep_last > 0:
        keep = {step_dir_name(s) for s in pinned}
        # only older checkpoints are pruned: never the one just written, nor any later one
        done = sorted(p for p in ckpt_root.glob(f"{CKPT_PREFIX}*")
                      if p.is_dir() and p.name not in keep and p.name < final.name)
        for old in done[:max(0, len(done) - (keep_last - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- reading


def verify(ckpt: Path) -> dict:
    """Check that every listed file is present and intact; return the checkpoint.json content."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint {ckpt} does not exist")
    man = ckpt / MANIFEST
    if not man.is_file():
        raise CheckpointError(f"checkpoint {ckpt} is partial or corrupt: no {MANIFEST} (interrupted while writing?)")
    try:
        info = json.loads(man.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: {MANIFEST} is not valid JSON") from None
    for entry in info["files"]:
        f = ckpt / entry["path"]
        if not f.is_file():
            raise CheckpointError(f"checkpoint {ckpt} is partial: {entry['path']} is missing")
        if f.stat().st_size != entry["bytes"] or sha256_file(f) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {ckpt} is corrupt: {entry['path']} (written by rank "
                                  f"{entry.get('rank', 0)}) does not match its recorded sha256")
    return info


def latest(ckpt_root: Path) -> Path | None:
    pointer = Path(ckpt_root) / "latest"
    if not pointer.is_file():
        return None
    target = Path(ckpt_root) / pointer.read_text().strip()
    if not target.is_dir():
        raise CheckpointError(f"{pointer} points to {target}, which does not exist")
    return target


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, a ``checkpoints/`` directory or a run directory -> a checkpoint."""
    p = Path(path)
    if (p / MANIFEST).is_file() or p.name.startswith(CKPT_PREFIX):
        return p
    for root in (p / "checkpoints", p):
        found = latest(root) if root.is_dir() else None
        if found is not None:
            return found
    raise CheckpointError(f"no checkpoint found at {p} (expected RUN/, RUN/checkpoints/ or a step-NNNNNNNN directory)")


def read_trainer_state(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / "trainer.json").read_text())


def load_rng(ckpt: Path, rank: int) -> None:
    f = Path(ckpt) / "rng" / f"rank-{rank:05d}.pt"
    if not f.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no RNG state for rank {rank} (saved with fewer ranks?)")
    set_rng_state(torch.load(f, weights_only=False))
