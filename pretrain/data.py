"""One-epoch loader over the token shards of a data_select manifest (docs/FORMATS.md).

Every token is seen at most once: the train stream is cut into fixed-length sequences, a seeded
bijection of [0, N) (pretrain.ordering) orders them, and each optimizer step takes the next
``global_batch_size`` positions, sliced per data-parallel rank. The loader never wraps; a budget
that needs more sequences than one epoch holds is refused before training starts. Its state is
the number of sequences consumed, the data fingerprint and the order, so a resume jumps straight
to its position and refuses other data or another order.

Nothing here grows with the data but a few numbers per shard: the order is computed position by
position, shards are opened on first read (a bounded number at once) and read with ``pread``
into the batch buffer, so start-up time and memory are the same at 10B and at 3T tokens.
"""
from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pretrain.config import ConfigError
from pretrain.ordering import ORDERS, UNRECORDED_ORDER, describe, make_order


class DataError(ValueError):
    """The data cannot serve the run as configured (missing files, too small, other fingerprint)."""


def _missing(root: Path, names: list[str]) -> list[str]:
    """The shard files (named relative to ``root``, or absolute) that do not exist: one listing per directory.

    A directory listing instead of a ``stat`` per shard: with 60,000 shards on a parallel file
    system, and every rank of every node starting at once, that is the difference that counts.
    """
    present: set[str] = set()
    for sub in {n.rpartition("/")[0] for n in names}:
        try:
            entries = os.listdir(os.path.join(root, sub))
        except (FileNotFoundError, NotADirectoryError):
            continue
        present.update(entries if not sub else (f"{sub}/{e}" for e in entries))
    return sorted(set(names) - present)


class _Shards:
    """One split's shards: names and token offsets (O(shards)), each file opened on first read.

    At start-up only the shards' presence is checked; a shard's header (length, dtype) is checked
    when it is first opened and its size as it is read, each failure naming the file.
    """

    def __init__(self, manifest: Path, names: list[str], tokens: np.ndarray, dtype: np.dtype, max_open: int):
        self.root, self.names, self.dtype, self.max_open = manifest.parent, names, dtype, max_open
        self.offsets = np.concatenate([[0], np.cumsum(tokens, dtype=np.int64)])
        missing = _missing(self.root, names)
        if missing:
            more = f" (and {len(missing) - 1:,} more)" if len(missing) > 1 else ""
            raise DataError(f"{manifest}: shard {self.root / missing[0]} is missing{more}")
        self._data_start = np.full(len(names), -1, dtype=np.int64)  # byte offset of the tokens, once checked
        self._files: OrderedDict[int, io.FileIO] = OrderedDict()  # least recently used first

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def path(self, s: int) -> Path:
        return self.root / self.names[s]

    def _file(self, s: int) -> io.FileIO:
        f = self._files.pop(s, None)
        if f is None:
            if len(self._files) >= self.max_open:
                self._files.popitem(last=False)[1].close()
            f = open(self.path(s), "rb", buffering=0)
            if self._data_start[s] < 0:
                self._data_start[s] = self._check_header(s, f)
        self._files[s] = f
        return f

    def _check_header(self, s: int, f: io.FileIO) -> int:
        fmt = np.lib.format
        try:
            version = fmt.read_magic(f)
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f".npy format version {version} (expected 1.0 or 2.0)")
            shape, _, dtype = read(f)
        except ValueError as e:
            raise DataError(f"{self.path(s)}: not a token shard: {e}") from None
        want = int(self.offsets[s + 1] - self.offsets[s])
        if shape != (want,) or dtype != self.dtype:
            raise DataError(f"{self.path(s)}: expected {want:,} tokens of {self.dtype}, found shape {shape} of {dtype}")
        return f.tell()

    def _pread(self, s: int, dest: np.ndarray, token: int) -> None:
        """Fill ``dest`` with the shard's tokens from index ``token`` on, straight from the file."""
        fd, view = self._file(s).fileno(), memoryview(dest).cast("B")
        start, got = int(self._data_start[s]) + token * self.dtype.itemsize, 0
        while got < len(view):
            n = os.preadv(fd, [view[got:]], start + got)
            if n == 0:
                raise DataError(f"{self.path(s)}: file ends before its token {token + got // self.dtype.itemsize:,}")
            got += n

    def read(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Rows ``stream[start:start + length]`` of the split's concatenated stream (the shard dtype)."""
        out = np.empty((len(starts), length), dtype=self.dtype)
        first = np.searchsorted(self.offsets, starts, side="right") - 1
        for row in np.argsort(first, kind="stable"):  # shard by shard: each file opened once per call
            s, pos, filled = int(first[row]), int(starts[row]), 0
            while filled < length:
                take = min(length - filled, int(self.offsets[s + 1]) - pos - filled)
                if take > 0:
                    self._pread(s, out[row, filled:filled + take], pos + filled - int(self.offsets[s]))
                filled += take
                s += 1
        return out


def _shard_pair(obj: dict):
    """json object hook: a shard entry (it has ``path`` and ``tokens``, a split has ``shards``) -> (path, tokens)."""
    if "path" in obj and "tokens" in obj and "shards" not in obj:
        return obj["path"], obj["tokens"]
    return obj


class TokenData:
    """The shards of one manifest, addressed as one token stream per split.

    Construction reads the manifest and keeps per shard only its name and token count; the
    parsed JSON is dropped. A split's shards are checked for presence when the split is first
    used, and opened on first read: at most ``max_open_files`` per split at once.
    """

    def __init__(self, manifest_path: str | Path, *, max_open_files: int = 128):
        path = Path(manifest_path)
        if path.is_dir():
            path = path / "manifest.json"
        if not path.is_file():
            raise DataError(f"data manifest not found: {path} (run `data-select tokenize` or `data-select run` first)")
        try:  # shard entries become (path, tokens) pairs as they are parsed: less to hold with 100k shards
            manifest = json.loads(path.read_bytes(), object_hook=_shard_pair)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        self.root = path.parent
        self.path = path
        for key in ("tokenizer", "splits", "fingerprint"):
            if key not in manifest:
                raise DataError(f"{path}: manifest lacks {key!r}")
        self.fingerprint: str = manifest["fingerprint"]
        tok = manifest["tokenizer"]
        self.vocab_size: int = int(tok["vocab_size"])
        self.eos_id = tok.get("eos_id")
        self.bos_id = tok.get("bos_id")
        self.pad_id = tok.get("pad_id")
        self.tokenizer_dir = self.root / tok.get("path", "tokenizer")
        try:
            self.dtype = np.dtype(manifest.get("dtype") or ("uint16" if self.vocab_size <= 65535 else "uint32"))
        except TypeError as e:
            raise DataError(f"{path}: dtype {manifest.get('dtype')!r}: {e}") from None
        if self.dtype.kind not in "ui":
            raise DataError(f"{path}: dtype {self.dtype} is not an integer type")
        self.max_open_files = max_open_files
        self._listed: dict[str, tuple[list[str], np.ndarray]] = {}
        for split, info in manifest["splits"].items():
            try:
                shards = info["shards"]
                names = [name for name, _ in shards]
                tokens = np.fromiter((int(n) for _, n in shards), dtype=np.int64, count=len(shards))
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"{path}: split {split!r} has a malformed shard list ({e!r})") from None
            self._listed[split] = (names, tokens)
        self._splits: dict[str, _Shards] = {}

    def _split(self, split: str) -> _Shards:
        if split not in self._splits:
            if split not in self._listed:
                raise DataError(f"{self.path}: no {split!r} split")
            names, tokens = self._listed[split]
            self._splits[split] = _Shards(self.path, names, tokens, self.dtype, self.max_open_files)
        return self._splits[split]

    def num_tokens(self, split: str = "train") -> int:
        return self._split(split).num_tokens

    def num_sequences(self, split: str, seq_len: int) -> int:
        return self.num_tokens(split) // seq_len

    def sequences(self, split: str, ids: np.ndarray, seq_len: int) -> np.ndarray:
        """Token windows ``[i*seq_len, (i+1)*seq_len)`` of the split's concatenated stream (int64)."""
        ids = np.asarray(ids, dtype=np.int64)
        n = self.num_sequences(split, seq_len)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise IndexError(f"sequence ids must lie in [0, {n}) for the {split!r} split at seq_len {seq_len}")
        return self._split(split).read(ids * seq_len, seq_len).astype(np.int64)


@dataclass
class LoaderState:
    sequences_consumed: int
    tokens_consumed: int
    fingerprint: str
    seed: int
    seq_len: int
    order: dict

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class OneEpochLoader:
    """Global batches in a seeded order of the sequences, each rank reading only its slice."""

    def __init__(self, data: TokenData, *, seq_len: int, global_batch_size: int, micro_batch_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, order: str = "feistel",
                 ledger_path: str | Path | None = None):
        if global_batch_size % (micro_batch_size * world_size):
            raise ConfigError(
                f"budget.global_batch_size {global_batch_size} must be a multiple of "
                f"micro_batch_size {micro_batch_size} x world size {world_size}"
            )
        self.data, self.seq_len, self.seed = data, seq_len, seed
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.rank, self.world_size = rank, world_size
        self.accum_steps = global_batch_size // (micro_batch_size * world_size)
        self.num_sequences = data.num_sequences("train", seq_len)
        self.steps_per_epoch = self.num_sequences // global_batch_size
        self.order = make_order(order, self.num_sequences, seed)
        self.sequences_consumed = 0
        self.ledger_path = Path(ledger_path) if ledger_path else None
        if self.ledger_path is not None:
            self.ledger_path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def check_budget(self, total_steps: int) -> None:
        """Refuse, before any work, a budget that one epoch of the data cannot cover."""
        need = total_steps * self.global_batch_size
        if need > self.num_sequences:
            raise DataError(
                f"the budget needs {need * self.seq_len:,} training tokens ({total_steps} steps x "
                f"{self.tokens_per_step:,} tokens) but one epoch of {self.data.path} holds only "
                f"{self.num_sequences * self.seq_len:,} usable tokens ({self.num_sequences:,} sequences of "
                f"{self.seq_len}); the loader never repeats data: lower the budget or add data"
            )

    def state(self) -> LoaderState:
        return LoaderState(self.sequences_consumed, self.sequences_consumed * self.seq_len,
                           self.data.fingerprint, self.seed, self.seq_len, dict(self.order.spec))

    def load_state(self, state: dict) -> None:
        if state["fingerprint"] != self.data.fingerprint:
            raise DataError(
                f"checkpoint was trained on data with fingerprint {state['fingerprint'][:16]}…, "
                f"but {self.data.path} has fingerprint {self.data.fingerprint[:16]}…: refusing to resume on other data"
            )
        for key, mine in (("seed", self.seed), ("seq_len", self.seq_len)):
            if state[key] != mine:
                raise DataError(f"checkpoint loader {key}={state[key]} differs from this run's {key}={mine}")
        saved = state.get("order", UNRECORDED_ORDER)
        if saved != self.order.spec:
            raise DataError(self._order_mismatch(saved, recorded="order" in state))
        if state["sequences_consumed"] % self.global_batch_size:
            raise DataError(
                f"checkpoint consumed {state['sequences_consumed']} sequences, not a multiple of this run's "
                f"global batch {self.global_batch_size}"
            )
        self.sequences_consumed = int(state["sequences_consumed"])

    def _order_mismatch(self, saved: dict, recorded: bool) -> str:
        how = "" if recorded else " (not recorded: it predates recorded orders, and all such runs used it)"
        known = ORDERS.get(saved.get("name"))
        fix = (f"set data.order={saved['name']} to continue in the checkpoint's order"
               if known is not None and known.spec == saved else
               "this version of budgetlm does not know that order: continue with the version that wrote the checkpoint")
        return (f"checkpoint's data order is {describe(saved)}{how}, this run's is {describe(self.order.spec)}: "
                f"resuming would reorder the epoch (sequences seen twice or never); {fix}")

    def truncate_ledger(self, step: int) -> None:
        """Drop ledger lines of steps after ``step`` (work lost by a crash and redone on resume)."""
        if self.ledger_path is None or not self.ledger_path.exists():
            return
        keep = [ln for ln in self.ledger_path.read_text().splitlines() if ln and json.loads(ln)["step"] < step]
        tmp = self.ledger_path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        tmp.replace(self.ledger_path)

    def next_batch(self) -> list[torch.Tensor]:
        """The next optimizer step's micro-batches for this rank (``accum_steps`` tensors)."""
        start = self.sequences_consumed
        if start + self.global_batch_size > self.num_sequences:
            raise DataError(f"one epoch exhausted after {start} sequences; the loader never wraps")
        per_rank = self.global_batch_size // self.world_size
        lo = start + self.rank * per_rank
        ids = self.order(np.arange(lo, lo + per_rank))
        if self.ledger_path is not None:
            step = start // self.global_batch_size
            with open(self.ledger_path, "a") as f:
                f.write(json.dumps({"step": step, "rank": self.rank, "ids": ids.tolist()}) + "\n")
        tokens = torch.from_numpy(self.data.sequences("train", ids, self.seq_len))
        self.sequences_consumed += self.global_batch_size
        return list(tokens.split(self.micro_batch_size))


class EvalBatches:
    """Evaluation micro-batches of ``split`` in fixed order (no shuffle), strided over ranks, read when indexed.

    Every rank gets the same number of batches, because under ZeRO-3 (and DDP's buffer sync) each
    forward is a collective; ranks short of real batches repeat one marked ``False`` (not counted).
    Nothing is read up front, so an evaluation over a whole large split costs one batch of memory.
    """

    def __init__(self, data: TokenData, *, seq_len: int, micro_batch_size: int, max_batches: int,
                 rank: int = 0, world_size: int = 1, split: str = "val"):
        self.n = data.num_sequences(split, seq_len)
        if self.n == 0:
            raise DataError(f"the {split!r} split of {data.path} is shorter than one sequence of {seq_len} tokens")
        self.data, self.split, self.seq_len, self.micro_batch_size = data, split, seq_len, micro_batch_size
        self.rank, self.world_size = rank, world_size
        self.total = -(-self.n // micro_batch_size)
        if max_batches:
            self.total = min(self.total, max_batches)

    def __len__(self) -> int:
        return -(-self.total // self.world_size)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, bool]:
        if j < 0:
            j += len(self)
        if not 0 <= j < len(self):
            raise IndexError(f"evaluation batch {j} of {len(self)}")
        b = self.rank + j * self.world_size
        lo = (b % self.total) * self.micro_batch_size
        ids = np.arange(lo, min(self.n, lo + self.micro_batch_size))
        return torch.from_numpy(self.data.sequences(self.split, ids, self.seq_len)), b < self.total


eval_batches = EvalBatches  # the name the trainer, `pretrain eval` and export tests call it by
