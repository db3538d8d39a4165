"""Atomic file writes and hashing shared by every data_select step.

Outputs are written to a private temporary file in the target's folder, flushed, given the
normal permissions and renamed over the target, so a reader sees the old file or the new one,
never a torn one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from data_select.errors import DataSelectError, UsageError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(path: str | Path, is_dir: bool = False) -> None:
    """Give a mkstemp/mkdtemp result (private 0600/0700) the normal permissions before renaming it."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json(path: str | Path, error: type = DataSelectError) -> dict | None:
    """A JSON record written by a step (None when the file is not there); unreadable JSON is ``error``."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None


def atomic_write_json(path: str | Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def atomic_write_lines(path: str | Path, rows: list[dict]) -> None:
    """JSON Lines: one record per line."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def sha256_file(path: str | Path, nbytes: int | None = None) -> str:
    """sha256 of the file, or of its first ``nbytes`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = nbytes
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


@contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name; it replaces ``out`` only if the block succeeds."""
    out = Path(out)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield staging
        publish(staging, is_dir=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def read_selection_ids(path: str | Path) -> list[str]:
    """The document ids of a ``selection.jsonl``, in file order; malformed or repeated entries are errors."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"selection file {path} does not exist")
    ids: list[str] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{n}: not JSON ({e})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                raise UsageError(f"{path}:{n}: expected an object with a string \"id\"")
            ids.append(rec["id"])
    if not ids:
        raise UsageError(f"selection file {path} lists no documents")
    if len(set(ids)) != len(ids):
        raise UsageError(f"{path}: lists some documents more than once")
    return ids
