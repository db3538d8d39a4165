"""Text -> flat token shards + ``manifest.json`` (the contract in docs/FORMATS.md).

Three passes over the inputs, so memory stays bounded by one shard plus the tokenizer sample:
1. scan: count documents, check the selection, decide the train/val split and draw a
   seeded, order-independent sample for tokenizer training (bottom-k by hash of the id);
2. (only without a given tokenizer) train sentencepiece BPE on that sample;
3. tokenize in worker processes over fixed-size chunks, in input order, so shards do not
   depend on the worker count; write shards atomically and the manifest last.
"""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
import io
import json
import multiprocessing
import os
import re
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tqdm.auto import tqdm

from data_select.errors import DataSelectError, UsageError
from data_select.io import atomic_write_text, publish, read_selection_ids, sha256_file, staged_dir
from data_select.sources import Document, Rejections, iter_documents

FORMAT = "budgetlm-tokens/1"
TOKENIZER_DIR = "tokenizer"
SPM_FILE = "tokenizer.model"
SPECIAL = {"pad": ("<pad>", 0), "bos": ("<s>", 1), "eos": ("</s>", 2), "unk": ("<unk>", 3)}
_CHUNK_DOCS = 256
_CHUNK_BYTES = 4 << 20





def _unit_hash(seed: int, salt: str, doc_id: str) -> float:
    """Uniform in [0, 1), fixed by (seed, salt, id): splits and samples ignore order and workers."""
    h = hashlib.blake2b(f"{seed}\x1f{salt}\x1f{doc_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def train_tokenizer(docs: Iterable[str], out_dir: str | Path, *, vocab_size: int = 8000, kind: str = "sentencepiece",
                    model_type: str = "bpe", sample_bytes: int = 50_000_000, seed: int = 0,
                    num_threads: int = 1) -> Path:
    """Train sentencepiece (byte fallback, no normalisation) and save it as an offline HF tokenizer dir.

    Text is kept byte-exact (identity normalisation, no dummy prefix, whitespace runs kept) so
    code round-trips. Documents are taken in order until ``sample_bytes``; pass a representative
    sample (``tokenize_corpus`` does). ``num_threads`` changes the learned merges, so it is fixed
    rather than tied to the worker count. Ids: pad 0, bos 1, eos 2, unk 3.
    """
    if kind != "sentencepiece":
        raise UsageError(f"unknown tokenizer kind {kind!r} (supported: 'sentencepiece')")
    if model_type != "bpe":
        # HF's sentencepiece conversion reproduces BPE ids exactly; unigram ids diverge (checked).
        raise UsageError(f"unsupported sentencepiece model_type {model_type!r} (supported: 'bpe')")
    sample: list[str] = []
    total = 0
    for text in docs:
        if total >= sample_bytes:
            break
        if text:
            sample.append(text)
            total += len(text.encode("utf-8", "surrogatepass"))
    if not sample:
        raise UsageError("cannot train a tokenizer: no text given")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            byte_fallback=True, character_coverage=0.9999, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=False, allow_whitespace_only_pieces=True,
            split_digits=True, max_sentence_length=max(len(s.encode("utf-8", "surrogatepass")) for s in sample) + 1,
            input_sentence_size=0, num_threads=num_threads, minloglevel=2,
            **{f"{k}_id": i for k, (_, i) in SPECIAL.items()}, **{f"{k}_piece": p for k, (p, _) in SPECIAL.items()})
    except RuntimeError as e:
        msg = str(e)
        low = re.search(r"smaller than required_chars\. \d+ vs (\d+)", msg)
        high = re.search(r"Vocabulary size too high.*<= (\d+)", msg)
        if low:
            raise UsageError(f"vocab_size {vocab_size} is too small: the sample's characters plus byte "
                             f"fallback and special tokens need at least {low.group(1)}") from None
        if high:
            raise UsageError(f"vocab_size {vocab_size} is too large for {total} bytes of training text "
                             f"(at most {high.group(1)} here)") from None
        raise
    with staged_dir(out) as staging:
        (staging / SPM_FILE).write_bytes(model.getvalue())
        _spm_to_hf(staging).save_pretrained(staging)
    return out


def _spm_to_hf(spm_dir: Path):
    """Wrap the sentencepiece model as a fast HF tokenizer with matching ids and no added BOS/EOS."""
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(
        spm_dir, legacy=False, add_prefix_space=False, add_bos_token=False, add_eos_token=False,
        pad_token=SPECIAL["pad"][0], bos_token=SPECIAL["bos"][0], eos_token=SPECIAL["eos"][0],
        unk_token=SPECIAL["unk"][0], local_files_only=True)
    return tok


def load_tokenizer(path: str | Path):
    """A local HF tokenizer directory (never a hub download)."""
    p = Path(path)
    if not p.is_dir():
        raise UsageError(f"tokenizer directory {p} does not exist")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load a tokenizer from {p}: {e}") from None
    if getattr(tok, "backend_tokenizer", None) is None:
        raise UsageError(f"tokenizer in {p} has no fast (tokenizers) backend; save it with a tokenizer.json")
    return tok


class _Scan:
    """Result of pass 1: what will be tokenized, which documents are held out, the tokenizer sample."""

    def __init__(self, seed: int, val_fraction: float, sample_bytes: int, want_sample: bool):
        self.seed, self.val_fraction = seed, val_fraction
        self.sample_bytes, self.want_sample = sample_bytes, want_sample
        self.documents = self.read = self.n_val = 0
        self.lowest: tuple[float, str] | None = None
        self.highest: tuple[float, str] | None = None
        self._heap: list[tuple[float, str, str]] = []
        self._heap_bytes = 0
        self.force_val: str | None = None
        self.force_train: str | None = None

    def add(self, doc: Document) -> None:
        self.documents += 1
        u = _unit_hash(self.seed, "split", doc.id)
        self.n_val += u < self.val_fraction
        if self.lowest is None or (u, doc.id) < self.lowest:
            self.lowest = (u, doc.id)
        if self.highest is None or (u, doc.id) > self.highest:
            self.highest = (u, doc.id)
        if self.want_sample:
            h = _unit_hash(self.seed, "sample", doc.id)
            size = len(doc.text.encode("utf-8", "surrogatepass"))
            heapq.heappush(self._heap, (-h, doc.id, doc.text))
            self._heap_bytes += size
            while self._heap_bytes > self.sample_bytes and len(self._heap) > 1:
                _, _, dropped = heapq.heappop(self._heap)
                self._heap_bytes -= len(dropped.encode("utf-8", "surrogatepass"))

    def finish(self) -> None:
        """Guarantee a nonempty validation split (from 2 documents on) and a nonempty train split."""
        if self.val_fraction > 0 and self.documents >= 2:
            if self.n_val == 0:
                self.force_val = self.lowest[1]
            elif self.n_val == self.documents:
                self.force_train = self.highest[1]

    def is_val(self, doc_id: str) -> bool:
        if doc_id == self.force_val:
            return True
        if doc_id == self.force_train or self.documents < 2:
            return False
        return _unit_hash(self.seed, "split", doc_id) < self.val_fraction

    def take_sample(self) -> list[str]:
        """The tokenizer-training sample (lowest sample-hashes first); frees it from the scan."""
        heap, self._heap = self._heap, []
        return [text for _, _, text in sorted(heap, key=lambda t: (-t[0], t[1]))]


_WORKER = {}


def _init_worker(tokenizer_json: str, eos_id: int, dtype: str) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.encode_special_tokens = True
    _WORKER.update(tok=tok, eos=eos_id, dtype=np.dtype(dtype))


def _encode_chunk(texts: list[str]) -> list[np.ndarray]:
    """Token ids of each text followed by EOS; literal special-token strings in the text stay text."""
    tok, eos, dtype = _WORKER["tok"], _WORKER["eos"], _WORKER["dtype"]
    out = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        arr = np.empty(len(ids) + 1, dtype=dtype)
        arr[:-1] = ids
        arr[-1] = eos
        out.append(arr)
    return out



class _ShardWriter:
    """Buffers one split's token arrays and writes ``<split>-NNNNN.npy`` shards at document boundaries."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int, dtype: np.dtype):
        self.out_dir, self.split, self.shard_tokens, self.dtype = out_dir, split, shard_tokens, dtype
        self.parts: list[np.ndarray] = []
        self.buffered = self.buffered_docs = 0
        self.shards: list[dict] = []

    def add(self, arr: np.ndarray) -> None:
        self.parts.append(arr)
        self.buffered += len(arr)
        self.buffered_docs += 1
        if self.buffered >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        name = f"{self.split}-{len(self.shards):05d}.npy"
        data = np.concatenate(self.parts).astype(self.dtype, copy=False)
        fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, data, allow_pickle=False)
        sha = sha256_file(Path(tmp))
        publish(tmp)
        os.replace(tmp, self.out_dir / name)
        self.shards.append({"path": name, "tokens": int(len(data)), "documents": self.buffered_docs, "sha256": sha})
        self.parts, self.buffered, self.buffered_docs = [], 0, 0

    def summary(self) -> dict:
        return {"tokens": sum(s["tokens"] for s in self.shards),
                "documents": sum(s["documents"] for s in self.shards), "shards": self.shards}


def _chunks(docs: Iterator[Document]) -> Iterator[list[Document]]:
    """Fixed-size chunks (by count and bytes, never by worker count) so output order is input order."""
    chunk: list[Document] = []
    size = 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc.text)
        if len(chunk) >= _CHUNK_DOCS or size >= _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _bounded_map(pool, chunks: Iterator[list[Document]], window: int) -> Iterator[tuple[list[Document], list]]:
    """Ordered parallel map that keeps at most ``window`` chunks in flight (``Pool.imap`` would
    read the whole corpus into its task queue)."""
    pending: deque = deque()
    for chunk in chunks:
        texts = [d.text for d in chunk]
        light = [dataclasses.replace(d, text="") for d in chunk]
        pending.append((light, pool.apply_async(_encode_chunk, (texts,))))
        if len(pending) >= window:
            light, res = pending.popleft()
            yield light, res.get()
    while pending:
        light, res = pending.popleft()
        yield light, res.get()


def _fingerprint(vocab: dict[str, int], dtype: str, splits: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False).encode("utf-8"))
    h.update(dtype.encode())
    for name in ("train", "val"):
        sp = splits[name]
        h.update(f"|{name}:{sp['tokens']}:{sp['documents']}".encode())
        for s in sp["shards"]:
            h.update(f"|{s['sha256']}:{s['tokens']}:{s['documents']}".encode())
    return h.hexdigest()


def _install_tokenizer(tokenizer: str | Path | None, tok_dir: Path, scan: _Scan, vocab_size: int, seed: int,
                       sample_bytes: int) -> str:
    """Train (on the scan's sample) or copy the tokenizer into ``tok_dir``; return its manifest kind."""
    if tokenizer is None:
        train_tokenizer(scan.take_sample(), tok_dir, vocab_size=vocab_size, seed=seed, sample_bytes=sample_bytes)
        return "sentencepiece"
    given = load_tokenizer(tokenizer)
    with staged_dir(tok_dir) as staging:
        given.save_pretrained(staging)
    return "hf"


def _encode_all(docs: Iterator[Document], init_args: tuple, num_workers: int) -> Iterator[tuple[Document, np.ndarray]]:
    """(document, tokens + EOS) in input order, encoded in-process or by ``num_workers`` processes."""
    chunks = _chunks(docs)
    if num_workers == 1:
        _init_worker(*init_args)
        for chunk in chunks:
            yield from zip(chunk, _encode_chunk([d.text for d in chunk]))
        return
    pool = multiprocessing.get_context().Pool(num_workers, initializer=_init_worker, initargs=init_args)
    try:
        for chunk, arrays in _bounded_map(pool, chunks, window=2 * num_workers + 1):
            yield from zip(chunk, arrays)
    finally:
        pool.terminate()
        pool.join()


def tokenize_corpus(inputs, out_dir, *, tokenizer: str | Path | None = None, vocab_size: int = 8000,
                    val_fraction: float = 0.01, seed: int = 0, selection: str | Path | None = None,
                    text_field: str = "text", domain_field: str | None = "domain", id_field: str | None = None,
                    shard_tokens: int = 50_000_000, num_workers: int = 2, progress: bool = True,
                    sample_bytes: int = 50_000_000, max_doc_bytes: int = 8_000_000,
                    domain_from_dir: bool = False) -> dict:
    """Tokenize ``inputs`` into ``out_dir`` (shards, ``tokenizer/``, ``manifest.json``); return the manifest.

    ``selection`` restricts to the ids of a ``selection.jsonl`` (ids as produced by
    :func:`iter_documents` with the same ``id_field``). A previous manifest in ``out_dir`` is
    removed first and rewritten last, so an interrupted run never looks complete.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    inputs = [str(i) for i in inputs]
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise UsageError(f"shard_tokens must be positive, got {shard_tokens}")
    if num_workers < 1:
        raise UsageError(f"num_workers must be >= 1, got {num_workers}")
    if tokenizer is not None:
        load_tokenizer(tokenizer)
    wanted = set(read_selection_ids(selection)) if selection is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest_path.unlink(missing_ok=True)
    read_kw = dict(text_field=text_field, domain_field=domain_field, id_field=id_field,
                   max_doc_bytes=max_doc_bytes, domain_from_dir=domain_from_dir)

    # pass 1: scan (raises NoDocumentsError on an empty corpus, before any training)
    rejections = Rejections()
    scan = _Scan(seed, val_fraction, sample_bytes, want_sample=tokenizer is None)
    found: set[str] = set()
    for doc in iter_documents(inputs, rejections=rejections, progress=progress, **read_kw):
        scan.read += 1
        if wanted is None or doc.id in wanted:
            scan.add(doc)
            if wanted is not None:
                found.add(doc.id)
    if wanted is not None and wanted - found:
        unknown = sorted(wanted - found)
        raise UsageError(f"selection {selection} names {len(unknown)} ids not found in the inputs "
                         f"(e.g. {', '.join(unknown[:5])}); were they read with the same id field?")
    del found
    scan.finish()

    # pass 2: tokenizer
    tok_dir = out / TOKENIZER_DIR
    kind = _install_tokenizer(tokenizer, tok_dir, scan, vocab_size, seed, sample_bytes)
    tok = load_tokenizer(tok_dir)
    if tok.eos_token_id is None:
        raise UsageError(f"tokenizer {tokenizer} defines no EOS token; documents need one as separator")
    dtype = np.dtype(np.uint16 if len(tok) <= 65535 else np.uint32)

    # pass 3: tokens
    writers = {s: _ShardWriter(out, s, shard_tokens, dtype) for s in ("train", "val")}
    domains: dict[str, dict[str, int]] = {}
    n_done = 0
    init_args = (tok.backend_tokenizer.to_str(), int(tok.eos_token_id), dtype.str)
    with tqdm(total=scan.documents, desc="tokenizing", unit="doc", disable=not progress) as bar:
        docs = (d for d in iter_documents(inputs, rejections=Rejections(), **read_kw) if wanted is None or d.id in wanted)
        for doc, arr in _encode_all(docs, init_args, num_workers):
            writers["val" if scan.is_val(doc.id) else "train"].add(arr)
            d = domains.setdefault(doc.domain if doc.domain is not None else "unknown", {"documents": 0, "tokens": 0})
            d["documents"] += 1
            d["tokens"] += len(arr)
            n_done += 1
            bar.update()
    for w in writers.values():
        w.flush()
    if n_done != scan.documents:
        raise DataSelectError(f"inputs changed while tokenizing: scanned {scan.documents} documents, "
                              f"tokenized {n_done}; re-run on a stable copy")

    splits = {s: w.summary() for s, w in writers.items()}
    keep = {s["path"] for sp in splits.values() for s in sp["shards"]}
    for stale in list(out.glob("train-*.npy")) + list(out.glob("val-*.npy")):
        if stale.name not in keep:
            stale.unlink()
    manifest = {
        "format": FORMAT,
        "tokenizer": {"path": TOKENIZER_DIR, "kind": kind, "vocab_size": len(tok), "eos_id": tok.eos_token_id,
                      "bos_id": tok.bos_token_id, "pad_id": tok.pad_token_id},
        "dtype": dtype.name,
        "splits": splits,
        "sources": {"inputs": inputs, "documents": scan.documents, "read": scan.read,
                    "not_selected": scan.read - scan.documents, "rejected": dict(sorted(rejections.counts.items())),
                    "rejected_examples": rejections.to_dict()["examples"],
                    "selection": str(selection) if selection is not None else None,
                    "text_field": text_field, "domain_field": domain_field, "id_field": id_field},
        "domains": dict(sorted(domains.items())) if set(domains) - {"unknown"} else {},
        "val_fraction": val_fraction,
        "seed": seed,
        "fingerprint": _fingerprint(tok.get_vocab(), dtype.name, splits),
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest
