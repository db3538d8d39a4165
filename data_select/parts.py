"""A curation step split over machines: parts, completion markers, merges.

Every step that reads the corpus or runs DiSF can run as N parts: under ``torchrun`` (part =
RANK of WORLD_SIZE, any number of nodes, the ranks meet at barriers and rank 0 merges) or as N
independent tasks with ``--shard I/N`` (a Slurm job array), followed by a merge. A part takes
whole input files (index, embed, tokenize) or whole DiSF batches (select), so no part reads a
file that belongs to another.

A part is written into ``<out>/parts/<step>-IIIII-of-NNNNN/`` and is finished when its
``DONE.json`` exists; that marker is written last and holds the run's key (a digest of the
step's settings and inputs) and the settings themselves. A re-run skips finished parts of the
same run and redoes a part without a marker. A merge refuses, before any work, a missing part,
a part without marker, or parts made by different runs (naming the setting that differs).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_select.errors import DataSelectError, UsageError
from data_select.io import atomic_write_json, read_json

DONE = "DONE.json"
PARTS = "parts"
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class PartError(DataSelectError):
    """Parts that cannot be merged or reused; the message names the part and the setting."""


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"I/N"`` (``--shard``): 0 <= I < N, checked before any work."""
        m = _SHARD.match(str(text))
        if not m:
            raise UsageError(f"--shard {text!r}: expected I/N, e.g. 0/8 (part I of N, counted from 0)")
        index, count = int(m.group(1)), int(m.group(2))
        if count < 1 or not 0 <= index < count:
            raise UsageError(f"--shard {text}: part index must satisfy 0 <= I < N (got I={index}, N={count})")
        return cls(index, count)

    @property
    def name(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def env_shard() -> Shard | None:
    """The torchrun part (RANK of WORLD_SIZE) when launched with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return Shard(int(os.environ.get("RANK", "0")), world)


def run_key(settings: dict) -> str:
    """Digest of a step's settings: parts with the same key belong to the same run."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def balanced_ranges(weights, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous ranges of the items, each holding about 1/count of the total weight
    (an item goes to the range its weight's midpoint falls in); ranges may be empty."""
    w = np.asarray(weights, dtype=np.float64)
    if count < 1:
        raise UsageError(f"part count must be >= 1, got {count}")
    if w.size == 0:
        return [(0, 0)] * count
    total = w.sum()
    if total <= 0:
        w, total = np.ones_like(w), float(w.size)
    mid = np.cumsum(w) - w / 2
    owner = np.minimum((mid / total * count).astype(np.int64), count - 1)
    bounds = np.searchsorted(owner, np.arange(count + 1), side="left")
    return [(int(bounds[i]), int(bounds[i + 1])) for i in range(count)]


def part_dir(root: str | Path, step: str, shard: Shard) -> Path:
    return Path(root) / PARTS / f"{step}-{shard.name}"


def read_done(path: Path) -> dict | None:
    """The completion marker of a part (or of a step's output folder); None when unfinished."""
    return read_json(Path(path) / DONE, PartError)


def start_part(root: str | Path, step: str, shard: Shard, settings: dict) -> tuple[Path, dict | None]:
    """(part directory, its DONE record when this run already finished it). A part without a
    marker, or one from another run, is cleared to be redone."""
    path = part_dir(root, step, shard)
    done = read_done(path)
    if done is not None and done.get("key") == run_key(settings):
        return path, done
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path, None


def finish_part(path: Path, settings: dict, record: dict) -> dict:
    """Write the completion marker (last)."""
    done = {"key": run_key(settings), "settings": settings, **record,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(Path(path) / DONE, done)
    return done


def collect_parts(root: str | Path, step: str, settings: dict | None = None) -> list[tuple[Path, dict]]:
    """The finished parts of ``step`` in order, checked before any merging: one layout (same N),
    every part present with its marker, all from one run (and from ``settings`` when given)."""
    base = Path(root) / PARTS
    pattern = re.compile(rf"^{re.escape(step)}-(\d{{5}})-of-(\d{{5}})$")
    found = sorted((int(m.group(2)), int(m.group(1)), p) for p in (base.iterdir() if base.is_dir() else [])
                   if (m := pattern.match(p.name)))
    if not found:
        raise PartError(f"{base}: no {step} parts to merge (run the step with --shard I/N first)")
    counts = sorted({c for c, _, _ in found})
    if len(counts) > 1:
        raise PartError(f"{base}: {step} parts of different runs are mixed: split into {' and '.join(map(str, counts))} "
                        "parts; delete the parts of the run you do not want")
    count = counts[0]
    have = {i: p for _, i, p in found}
    missing = [i for i in range(count) if i not in have]
    if missing:
        raise PartError(f"{base}: {step} parts {', '.join(f'{i}/{count}' for i in missing)} are missing "
                        f"(run them with --shard I/{count})")
    out = []
    for i in range(count):
        done = read_done(have[i])
        if done is None:
            raise PartError(f"{have[i]}: part {i}/{count} has no completion marker ({DONE}): it is unfinished; "
                            f"re-run it with --shard {i}/{count}")
        out.append((have[i], done))
    ref_path, ref = out[0]
    for path, done in out[1:] + ([(None, {"key": run_key(settings), "settings": settings})] if settings else []):
        if done["key"] != ref["key"]:
            a, b = ref.get("settings", {}), done.get("settings", {})
            diff = [k for k in list(a) + [k for k in b if k not in a] if a.get(k) != b.get(k)]
            k = diff[0] if diff else "key"
            what = "this run's settings" if path is None else str(path)
            raise PartError(f"parts of different runs: {ref_path} has {k}={repr(a.get(k))[:200]}, "
                            f"{what} has {k}={repr(b.get(k))[:200]}; delete the stale parts")
    return out


def remove_parts(root: str | Path, step: str) -> None:
    """Delete a step's parts (after their merge wrote the complete output); the parts folder too when empty."""
    base = Path(root) / PARTS
    for p in [*base.glob(f"{step}-*"), base / step] if base.is_dir() else []:
        if p.is_dir():
            shutil.rmtree(p)
    if base.is_dir() and not any(base.iterdir()):
        base.rmdir()


class Group:
    """The torchrun process group of a curation step (gloo; created here if the launcher made
    none, with a long timeout: ranks may finish their parts hours apart)."""

    def __init__(self, shard: Shard):
        self.shard = shard
        self.created = False

    def __enter__(self) -> "Group":
        import torch.distributed as dist

        if not dist.is_available():
            raise UsageError("torch.distributed is unavailable: run each part with --shard I/N, then --merge")
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", timeout=datetime.timedelta(hours=24))
            self.created = True
        return self

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def __exit__(self, *exc) -> None:
        import torch.distributed as dist

        if self.created and dist.is_initialized():
            if exc[0] is None:
                dist.barrier()
            dist.destroy_process_group()
