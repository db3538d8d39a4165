"""One-epoch loader over the token shards of a data_select manifest (docs/FORMATS.md).

Every token is seen at most once: the train stream is cut into fixed-length sequences, one
seeded global permutation orders them, and each optimizer step takes the next
``global_batch_size`` of them, sliced per data-parallel rank. The loader never wraps; a budget
that needs more sequences than one epoch holds is refused before training starts. Its state is
the number of sequences consumed plus the data fingerprint, so a resume jumps straight to its
position and refuses a different data set.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pretrain.config import ConfigError


class DataError(ValueError):
    """The data cannot serve the run as configured (missing files, too small, other fingerprint)."""


class TokenData:
    """The shards of one manifest, memory-mapped and addressed as one stream per split."""

    def __init__(self, manifest_path: str | Path):
        path = Path(manifest_path)
        if path.is_dir():
            path = path / "manifest.json"
        if not path.is_file():
            raise DataError(f"data manifest not found: {path} (run `data-select tokenize` or `data-select run` first)")
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        self.root = path.parent
        self.path = path
        for key in ("tokenizer", "splits", "fingerprint"):
            if key not in self.manifest:
                raise DataError(f"{path}: manifest lacks {key!r}")
        self.fingerprint: str = self.manifest["fingerprint"]
        tok = self.manifest["tokenizer"]
        self.vocab_size: int = int(tok["vocab_size"])
        self.eos_id = tok.get("eos_id")
        self.bos_id = tok.get("bos_id")
        self.pad_id = tok.get("pad_id")
        self.tokenizer_dir = self.root / tok.get("path", "tokenizer")
        self._splits: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}

    def _split(self, split: str) -> tuple[list[np.ndarray], np.ndarray]:
        if split not in self._splits:
            info = self.manifest["splits"].get(split)
            if info is None:
                raise DataError(f"{self.path}: no {split!r} split")
            arrays = []
            for shard in info["shards"]:
                f = self.root / shard["path"]
                if not f.is_file():
                    raise DataError(f"{self.path}: shard {f} is missing")
                arr = np.load(f, mmap_mode="r")
                if arr.ndim != 1 or len(arr) != int(shard["tokens"]):
                    raise DataError(f"{f}: expected {shard['tokens']} tokens, found {arr.shape}")
                arrays.append(arr)
            offsets = np.cumsum([0] + [len(a) for a in arrays])
            self._splits[split] = (arrays, offsets)
        return self._splits[split]

    def num_tokens(self, split: str = "train") -> int:
        return int(self._split(split)[1][-1])

    def num_sequences(self, split: str, seq_len: int) -> int:
        return self.num_tokens(split) // seq_len

    def sequences(self, split: str, ids: np.ndarray, seq_len: int) -> np.ndarray:
        """Token windows ``[i*seq_len, (i+1)*seq_len)`` of the split's concatenated stream."""
        arrays, offsets = self._split(split)
        out = np.empty((len(ids), seq_len), dtype=np.int64)
        for row, i in enumerate(ids):
            start = int(i) * seq_len
            s = int(np.searchsorted(offsets, start, side="right")) - 1
            pos = 0
            while pos < seq_len:
                a = arrays[s]
                lo = start + pos - offsets[s]
                take = min(seq_len - pos, len(a) - lo)
                out[row, pos:pos + take] = a[lo:lo + take]
                pos += take
                s += 1
        return out


@dataclass
class LoaderState:
    sequences_consumed: int
    tokens_consumed: int
    fingerprint: str
    seed: int
    seq_len: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class OneEpochLoader:
    """Global batches of a seeded permutation, each rank reading only its slice."""

    def __init__(self, data: TokenData, *, seq_len: int, global_batch_size: int, micro_batch_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, ledger_path: str | Path | None = None):
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
        self._perm = np.random.default_rng(seed).permutation(self.num_sequences)
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
                           self.data.fingerprint, self.seed, self.seq_len)

    def load_state(self, state: dict) -> None:
        if state["fingerprint"] != self.data.fingerprint:
            raise DataError(
                f"checkpoint was trained on data with fingerprint {state['fingerprint'][:16]}…, "
                f"but {self.data.path} has fingerprint {self.data.fingerprint[:16]}…: refusing to resume on other data"
            )
        for key, mine in (("seed", self.seed), ("seq_len", self.seq_len)):
            if state[key] != mine:
                raise DataError(f"checkpoint loader {key}={state[key]} differs from this run's {key}={mine}")
        if state["sequences_consumed"] % self.global_batch_size:
            raise DataError(
                f"checkpoint consumed {state['sequences_consumed']} sequences, not a multiple of this run's "
                f"global batch {self.global_batch_size}"
            )
        self.sequences_consumed = int(state["sequences_consumed"])

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
        ids = self._perm[lo:lo + per_rank]
        if self.ledger_path is not None:
            step = start // self.global_batch_size
            with open(self.ledger_path, "a") as f:
                f.write(json.dumps({"step": step, "rank": self.rank, "ids": ids.tolist()}) + "\n")
        tokens = torch.from_numpy(self.data.sequences("train", ids, self.seq_len))
        self.sequences_consumed += self.global_batch_size
        return list(tokens.split(self.micro_batch_size))


def eval_batches(data: TokenData, *, seq_len: int, micro_batch_size: int, max_batches: int,
                 rank: int = 0, world_size: int = 1, split: str = "val") -> list[tuple[torch.Tensor, bool]]:
    """Evaluation micro-batches of ``split`` in fixed order (no shuffle), strided over ranks.

    Every rank gets the same number of batches, because under ZeRO-3 (and DDP's buffer sync) each
    forward is a collective; ranks short of real batches repeat one marked ``False`` (not counted).
    """
    n = data.num_sequences(split, seq_len)
    if n == 0:
        raise DataError(f"the {split!r} split of {data.path} is shorter than one sequence of {seq_len} tokens")
    total = -(-n // micro_batch_size)
    if max_batches:
        total = min(total, max_batches)
    out = []
    for j in range(-(-total // world_size)):
        b = rank + j * world_size
        lo = (b % total) * micro_batch_size
        ids = np.arange(lo, min(n, lo + micro_batch_size))
        out.append((torch.from_numpy(data.sequences(split, ids, seq_len)), b < total))
    return out
