"""Atomic checkpoints, integrity checks and RNG capture for exact resume.

Layout of ``RUN/checkpoints/step-NNNNNNNN/``: the engine's model and optimizer files (full
``model.safetensors`` + optimizer state, or FSDP2's per-rank ``dcp/`` shards; see
``pretrain/engines/weights.py``), ``trainer.json`` (step, loader state, budget, engine),
``rng/rank-NNNNN.pt`` and ``config.yaml``, all listed with sizes, sha256 and the rank that wrote
them in ``checkpoint.json``, which is written last. The directory is built under a temporary name
and renamed; ``latest`` is updated after the rename. A directory without a matching
``checkpoint.json`` is never loaded.

Integrity work is spread over the ranks: each rank hashes the files it wrote (on a thread pool:
hashlib releases the GIL) and rank 0 only writes the list; on resume each rank checks a share of
the listed files, balanced by size, so no rank reads the whole checkpoint while the others wait.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
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


def hash_threads() -> int:
    """Hashing threads per process: the cores this node's ranks share, at most 8."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, min(8, (os.cpu_count() or 1) // max(1, local_world)))


def hash_files(root: Path, paths: list[str], rank: int = 0) -> list[dict]:
    """Listing entries (path, bytes, sha256, rank) of files under ``root``, hashed in parallel."""
    with ThreadPoolExecutor(hash_threads()) as pool:
        digests = list(pool.map(lambda rel: sha256_file(root / rel), paths))
    return [{"path": rel, "bytes": (root / rel).stat().st_size, "sha256": d, "rank": rank}
            for rel, d in zip(paths, digests)]


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    """Python, numpy, torch CPU and (this rank's) CUDA generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if not isinstance(cuda, list):
            torch.cuda.set_rng_state(cuda)
        elif len(cuda) == torch.cuda.device_count():  # older checkpoints held every visible device's state
            torch.cuda.set_rng_state_all(cuda)


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
             listing: list[dict] | None = None) -> Path:
    """Write checkpoint.json from the ranks' ``listing``, rename into place, move ``latest``, prune (rank 0).

    ``listing`` holds what every rank hashed of the files it wrote (see :func:`hash_files`), so a
    damaged shard names the process (and node) that wrote it. Rank 0 hashes only the files no rank
    listed (none, when every engine reports its files).
    """
    listing = list(listing or [])
    listed = {e["path"] for e in listing}
    unclaimed = sorted(rel for rel in (p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
                       if rel not in listed)
    listing = sorted(listing + hash_files(tmp, unclaimed), key=lambda e: e["path"])
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


def read_listing(ckpt: Path) -> dict:
    """The checkpoint.json of ``ckpt``; a missing or unreadable one is a CheckpointError."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint {ckpt} does not exist")
    man = ckpt / MANIFEST
    if not man.is_file():
        raise CheckpointError(f"checkpoint {ckpt} is partial or corrupt: no {MANIFEST} (interrupted while writing?)")
    try:
        info = json.loads(man.read_text())
        valid = all({"path", "bytes", "sha256"} <= set(e) for e in info["files"])
    except (json.JSONDecodeError, KeyError, TypeError):
        valid = False
    if not valid:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: {MANIFEST} is not a valid listing")
    return info


def share(files: list[dict], rank: int, world: int) -> list[dict]:
    """The listed files rank ``rank`` of ``world`` checks: largest first, each to the least loaded rank."""
    load, mine = [0] * world, []
    for entry in sorted(files, key=lambda e: (-e["bytes"], e["path"])):
        r = min(range(world), key=lambda i: (load[i], i))
        load[r] += entry["bytes"] + 1
        if r == rank:
            mine.append(entry)
    return mine


def problems(ckpt: Path, files: list[dict]) -> list[str]:
    """What is wrong with these listed files of ``ckpt`` (missing, other size, other sha256), one line each."""
    ckpt, found, to_hash = Path(ckpt), [], []
    for entry in files:
        f = ckpt / entry["path"]
        if not f.is_file():
            found.append(f"checkpoint {ckpt} is partial: {entry['path']} is missing")
        elif f.stat().st_size != entry["bytes"]:
            found.append(_damaged(ckpt, entry, f"has {f.stat().st_size:,} bytes, not {entry['bytes']:,}"))
        else:
            to_hash.append(entry)
    for entry, got in zip(to_hash, hash_files(ckpt, [e["path"] for e in to_hash])):
        if got["sha256"] != entry["sha256"]:
            found.append(_damaged(ckpt, entry, "does not match its recorded sha256"))
    return found


def _damaged(ckpt: Path, entry: dict, what: str) -> str:
    return f"checkpoint {ckpt} is corrupt: {entry['path']} (written by rank {entry.get('rank', 0)}) {what}"


def verify(ckpt: Path) -> dict:
    """Check, in one process, that every listed file is present and intact; return the checkpoint.json
    content. (A training run spreads this over its ranks: ``share`` + ``problems``.)"""
    info = read_listing(ckpt)
    found = problems(ckpt, info["files"])
    if found:
        raise CheckpointError(found[0])
    return info


def resume_candidates(ckpt_root: Path) -> tuple[list[Path], list[str]]:
    """Checkpoints a ``resume=auto`` may continue from, newest first, and why any newer one cannot be.

    The first is the one ``latest`` names, then the older complete ones. Later directories are never
    candidates: they belong to a history that an explicit resume from an earlier step abandoned.
    """
    root = Path(ckpt_root)
    done = sorted((p for p in root.glob(f"{CKPT_PREFIX}*") if p.is_dir()), reverse=True) if root.is_dir() else []
    pointer, skipped = root / "latest", []
    if pointer.is_file():
        name = pointer.read_text().strip()
        if not (root / name).is_dir():
            skipped.append(f"{pointer} points to {name}, which does not exist")
        done = [p for p in done if p.name <= name]
    return done, skipped


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


def rng_source(rank: int, saved_world: int) -> int:
    """The saved rank whose random state rank ``rank`` continues: itself, or on another world size
    ``rank mod saved_world`` (docs/FORMATS.md, "Random state on another world size")."""
    return rank % max(1, saved_world)


def load_rng(ckpt: Path, rank: int, saved_world: int) -> None:
    src = rng_source(rank, saved_world)
    f = Path(ckpt) / "rng" / f"rank-{src:05d}.pt"
    if not f.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no RNG state for rank {src} (rng/rank-{src:05d}.pt)")
    set_rng_state(torch.load(f, weights_only=False))
