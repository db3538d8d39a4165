"""Text -> flat token shards + ``manifest.json`` (the contract in docs/FORMATS.md).

Documents are rows of a document table (data_select.table): the rows of a selection made by
``data-select select`` (its features folder holds the table), or every row of a table built
here in ``<out>/table`` from the inputs. Nothing scans the raw text before tokenizing:

1. the train/val split and the tokenizer-training sample are decided from the table alone
   (a seeded hash of each id; the sample is the documents of lowest sample-hash up to
   ``sample_bytes``, sized by the table's ``bytes`` column);
2. (only without a given tokenizer) the sample's texts are read at their locations and
   sentencepiece BPE is trained on them;
3. the documents are read once, at their locations, in row (= input) order, and tokenized in
   worker processes over fixed-size chunks, so shards do not depend on the worker count; shards
   are written atomically and the manifest last.

Split into parts (torchrun ranks or ``--shard I/N`` tasks), each part tokenizes the rows of its
own input files (files balanced by the bytes to tokenize) into a token stream per split, and
the merge cuts the streams into shards exactly where one process would: the same bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tqdm.auto import tqdm

from data_select import parts as P
from data_select import table as T
from data_select.errors import UsageError
from data_select.io import atomic_write_text, publish, read_selection_ids, sha256_file, staged_dir
from data_select.keyset import digest, split_keys

FORMAT = "budgetlm-tokens/1"
TOKENIZER_DIR = "tokenizer"
SPM_FILE = "tokenizer.model"
SPECIAL = {"pad": ("<pad>", 0), "bos": ("<s>", 1), "eos": ("</s>", 2), "unk": ("<unk>", 3)}
_CHUNK_DOCS = 256
_CHUNK_BYTES = 4 << 20
_ID_CHUNK = 1 << 16


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


def _chunks(docs: Iterator[tuple[int, str]]) -> Iterator[list[tuple[int, str]]]:
    """Fixed-size chunks (by count and bytes, never by worker count) so output order is input order."""
    chunk: list[tuple[int, str]] = []
    size = 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc[1])
        if len(chunk) >= _CHUNK_DOCS or size >= _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _bounded_map(pool, chunks: Iterator[list[tuple[int, str]]], window: int) -> Iterator[tuple[list[int], list]]:
    """Ordered parallel map that keeps at most ``window`` chunks in flight (``Pool.imap`` would
    read the whole corpus into its task queue)."""
    pending: deque = deque()
    for chunk in chunks:
        pending.append(([i for i, _ in chunk], pool.apply_async(_encode_chunk, ([t for _, t in chunk],))))
        if len(pending) >= window:
            index, res = pending.popleft()
            yield index, res.get()
    while pending:
        index, res = pending.popleft()
        yield index, res.get()


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


def _encode_all(docs: Iterator[tuple[int, str]], init_args: tuple, num_workers: int) -> Iterator[tuple[int, np.ndarray]]:
    """(index, tokens + EOS) in input order, encoded in-process or by ``num_workers`` processes."""
    chunks = _chunks(docs)
    if num_workers == 1:
        _init_worker(*init_args)
        for chunk in chunks:
            yield from zip((i for i, _ in chunk), _encode_chunk([t for _, t in chunk]))
        return
    pool = multiprocessing.get_context().Pool(num_workers, initializer=_init_worker, initargs=init_args)
    try:
        for index, arrays in _bounded_map(pool, chunks, window=2 * num_workers + 1):
            yield from zip(index, arrays)
    finally:
        pool.terminate()
        pool.join()


# --------------------------------------------------------------------------- what to tokenize


class _Split:
    """The train/val split of the documents to tokenize, from a seeded hash of each id (so it
    depends on neither order, workers nor parts): val if hash < val_fraction, with at least one
    val document (from 2 documents on) and at least one train document."""

    def __init__(self, u: np.ndarray, val_fraction: float):
        self.val = u < val_fraction
        if val_fraction > 0 and len(u) >= 2:
            if not self.val.any():
                self.val[int(np.argmin(u))] = True
            elif self.val.all():
                self.val[int(np.argmax(u))] = False
        elif len(u) < 2:
            self.val[:] = False


def _hashes(table: T.Table, rows, seed: int, salt: str) -> np.ndarray:
    """``_unit_hash(seed, salt, id)`` of every row, reading the ids a chunk at a time."""
    out = np.empty(len(rows), dtype=np.float64)
    for lo in range(0, len(rows), _ID_CHUNK):
        part = np.asarray(rows[lo:lo + _ID_CHUNK], dtype=np.int64)
        out[lo:lo + len(part)] = [_unit_hash(seed, salt, i) for i in table.ids(part)]
    return out


def rows_for_ids(table: T.Table, ids: list[str], source: str | Path) -> np.ndarray:
    """Table rows of the documents ``ids`` name (ascending), joined on their id keys; unknown
    ids are an error naming a few."""
    keys = b"".join(digest(i.encode("utf-8", "surrogatepass")) for i in ids)
    want_hi, want_lo = split_keys(keys)
    order = np.lexsort((want_lo, want_hi))
    want_hi, want_lo = want_hi[order], want_lo[order]
    found = np.full(len(ids), -1, dtype=np.int64)
    for lo, k in table.chunks("id_key"):
        hi_, lo_ = k[:, 0], k[:, 1]
        at = np.searchsorted(want_hi, hi_, "left")
        ok = at < len(want_hi)
        ok[ok] &= (want_hi[at[ok]] == hi_[ok]) & (want_lo[at[ok]] == lo_[ok])
        found[order[at[ok]]] = lo + np.flatnonzero(ok)
    if (found < 0).any():
        unknown = sorted(ids[i] for i in np.flatnonzero(found < 0)[:5])
        raise UsageError(f"selection {source} names {int((found < 0).sum())} ids not found in the inputs "
                         f"(e.g. {', '.join(unknown)}); were they read with the same id field?")
    return np.sort(found)


def _documents(inputs: list[str], out: Path, selection, reader: dict, shard: P.Shard | None,
               group: P.Group | None, progress: bool) -> tuple[T.Table, np.ndarray | range]:
    """The table and the ascending rows to tokenize."""
    from data_select.select import SELECT_META, read_selection, selection_dir

    tset = T.table_settings(inputs, **reader)
    if selection is not None and (selection_dir(selection) / SELECT_META).is_file():
        record, picked = read_selection(selection)
        table = T.Table(T.table_dir(record["features"]["dir"]))
        T.check_same("the selection's table", table.root, table.settings, tset,
                     "tokenize the inputs the selection was made from, with the same reader options")
        if table.fingerprint != _table_of_features(record["features"]["dir"]):
            raise UsageError(f"{selection}: its features folder was rebuilt since the selection; re-run select")
        return table, np.sort(picked)
    table = T.complete_table(out, tset)
    if table is None:
        if shard is not None and group is None:  # torchrun ranks build the table together (below)
            raise UsageError(f"{out}: tokenize --shard {shard} needs the document table: first run `data-select index "
                             f"INPUTS --out {out} --shard I/{shard.count}` for every I, then `data-select index --out "
                             f"{out} --merge`")
        if group is not None:
            table = T.index_parts(out, tset, group.shard, group, progress)
        else:
            T.build_table(T.table_dir(out), tset, progress=progress)
            table = T.Table(T.table_dir(out))
    if selection is None:
        return table, range(table.n)
    return table, rows_for_ids(table, read_selection_ids(selection), selection)


def _table_of_features(features_dir) -> str:
    return json.loads((Path(features_dir) / P.DONE).read_text())["table"]


def _sample_rows(table: T.Table, rows, seed: int, sample_bytes: int) -> list[int]:
    """Tokenizer-training sample: the rows of lowest sample-hash whose texts add up to at most
    ``sample_bytes`` (at least one), in that order."""
    h = _hashes(table, rows, seed, "sample")
    order = np.argsort(h, kind="stable")
    rows_arr = np.asarray(rows[0:len(rows)], dtype=np.int64) if isinstance(rows, range) else rows
    sizes = table.column("bytes", rows_arr[order[: min(len(order), 1 << 20)]])
    take = max(1, int(np.searchsorted(np.cumsum(sizes), sample_bytes, "right")))
    return rows_arr[order[:take]].tolist()


def _install_tokenizer(tokenizer: str | Path | None, tok_dir: Path, table: T.Table, rows, vocab_size: int, seed: int,
                       sample_bytes: int, progress: bool) -> str:
    """Train (on the sample read at its locations) or copy the tokenizer into ``tok_dir``; return its kind."""
    if tokenizer is None:
        sample = _sample_rows(table, rows, seed, sample_bytes)
        texts = dict(table.texts(np.sort(sample), progress=progress))
        train_tokenizer([texts.pop(r) for r in sample], tok_dir, vocab_size=vocab_size, seed=seed,
                        sample_bytes=sample_bytes)
        return "sentencepiece"
    given = load_tokenizer(tokenizer)
    with staged_dir(tok_dir) as staging:
        given.save_pretrained(staging)
    return "hf"


def _part_rows(table: T.Table, rows, shard: P.Shard) -> tuple[int, int]:
    """[lo, hi) into ``rows``: the rows of part ``shard``'s input files (files balanced by the
    bytes to tokenize)."""
    files = len(table.files)
    per_file = np.zeros(files, dtype=np.float64)
    file_of = np.empty(len(rows), dtype=np.int32)
    for lo in range(0, len(rows), 1 << 20):
        part = np.asarray(rows[lo:lo + (1 << 20)], dtype=np.int64)
        f = table.column("file", part)
        file_of[lo:lo + len(part)] = f
        per_file += np.bincount(f, weights=table.column("bytes", part), minlength=files)
    a, b = P.balanced_ranges(per_file, shard.count)[shard.index]
    return int(np.searchsorted(file_of, a, "left")), int(np.searchsorted(file_of, b, "left"))


# --------------------------------------------------------------------------- tokenizing


def tokenize_corpus(inputs, out_dir, *, tokenizer: str | Path | None = None, vocab_size: int = 8000,
                    val_fraction: float = 0.01, seed: int = 0, selection: str | Path | None = None,
                    text_field: str = "text", domain_field: str | None = "domain", id_field: str | None = None,
                    shard_tokens: int = 50_000_000, num_workers: int = 2, progress: bool = True,
                    sample_bytes: int = 50_000_000, max_doc_bytes: int = 8_000_000,
                    domain_from_dir: bool = False, shard: P.Shard | None = None) -> dict:
    """Tokenize ``inputs`` into ``out_dir`` (shards, ``tokenizer/``, ``manifest.json``); return the
    manifest (a part's DONE record for ``shard``).

    ``selection``: a selection made by ``data-select select`` (its folder or selection.jsonl):
    only its documents are read, at the locations its features folder's table records, and the
    inputs must be those the table was made from; or a hand-written selection.jsonl of ids
    (joined on the ids of a table built in ``out_dir``). A previous manifest in ``out_dir`` is
    removed first and rewritten last, so an interrupted run never looks complete. Under torchrun
    every rank tokenizes its part and rank 0 merges; ``shard`` writes one part of a ``--shard
    I/N`` job (merge with :func:`merge_tokens`).
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reader = dict(text_field=text_field, domain_field=domain_field, id_field=id_field, domain_from_dir=domain_from_dir,
                  max_doc_bytes=max_doc_bytes)
    settings = {"inputs": inputs, **reader, "tokenizer": str(tokenizer) if tokenizer else None, "vocab_size": vocab_size,
                "val_fraction": val_fraction, "seed": seed, "selection": str(selection) if selection else None,
                "shard_tokens": shard_tokens, "sample_bytes": sample_bytes}
    env = P.env_shard() if shard is None else None
    if env is None:
        return _tokenize(out, settings, shard, None, num_workers, progress)
    with P.Group(env) as group:
        _tokenize(out, settings, env, group, num_workers, progress)
        group.barrier()
        if env.index == 0:
            merge_tokens(out, progress=progress)
        group.barrier()
    return json.loads((out / "manifest.json").read_text())


def _tokenize(out: Path, settings: dict, part: P.Shard | None, group: P.Group | None, num_workers: int,
              progress: bool) -> dict:
    reader = {k: settings[k] for k in T.READER_KEYS}
    table, rows = _documents(settings["inputs"], out, settings["selection"], reader, part, group, progress)
    selected = _selection_key(table, rows)
    settings = {**settings, "table": table.fingerprint, "rows": selected}
    if part is None:
        (out / "manifest.json").unlink(missing_ok=True)
    tok_dir, kind = _tokenizer_for(out, settings, table, rows, part, group, progress)  # torchrun ranks meet here
    if part is not None:
        key = {**settings, "parts": part.count}
        path, done = P.start_part(out, "tokenize", part, key)
        if done is not None:
            return done
    split = _Split(_hashes(table, rows, settings["seed"], "split"), settings["val_fraction"])
    tok = load_tokenizer(tok_dir)
    if tok.eos_token_id is None:
        raise UsageError(f"tokenizer {settings['tokenizer']} defines no EOS token; documents need one as separator")
    dtype = np.dtype(np.uint16 if len(tok) <= 65535 else np.uint32)
    lo, hi = (0, len(rows)) if part is None else _part_rows(table, rows, part)
    if part is None:
        writers = {s: _ShardWriter(out, s, settings["shard_tokens"], dtype) for s in ("train", "val")}
    else:
        writers = {s: _StreamWriter(path, s, dtype) for s in ("train", "val")}
    domains = np.zeros((len(table.domains) + 1, 2), dtype=np.int64)  # documents, tokens per domain code (last: none)
    init_args = (tok.backend_tokenizer.to_str(), int(tok.eos_token_id), dtype.str)
    part_rows = rows[lo:hi]
    codes = np.empty(0, dtype=np.int32)
    code_base = 0

    def texts() -> Iterator[tuple[int, str]]:
        for i, (_, text) in enumerate(table.texts(part_rows), start=lo):
            yield i, text

    with tqdm(total=hi - lo, desc="tokenizing" + (f" part {part}" if part else ""), unit="doc",
              disable=not progress) as bar:
        for i, arr in _encode_all(texts(), init_args, num_workers):
            if i - lo >= code_base + len(codes):
                code_base = i - lo
                codes = table.column("domain", np.asarray(part_rows[code_base:code_base + _ID_CHUNK], dtype=np.int64))
            writers["val" if split.val[i] else "train"].add(arr)
            c = codes[i - lo - code_base]
            domains[c if c >= 0 else -1] += (1, len(arr))
            bar.update()
    for w in writers.values():
        w.flush()
    names = table.domains + ["unknown"]
    domain_stats = {names[c]: {"documents": int(d), "tokens": int(t)} for c, (d, t) in enumerate(domains.tolist()) if d}
    if part is not None:
        return P.finish_part(path, key, {"dtype": dtype.name, "kind": kind, "documents": hi - lo, "domains": domain_stats,
                                         "splits": {s: w.summary() for s, w in writers.items()}})
    return _write_manifest(out, settings, table, len(rows), {s: w.summary() for s, w in writers.items()},
                           domain_stats, tok, kind, dtype)


def _selection_key(table: T.Table, rows) -> str:
    if isinstance(rows, range):
        return f"all {table.n}"
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()


def _tokenizer_for(out: Path, settings: dict, table: T.Table, rows, part: P.Shard | None, group: P.Group | None,
                   progress: bool) -> tuple[Path, str]:
    """The tokenizer folder to use: installed into ``out``/tokenizer by one process; for parts,
    once per run into ``out``/parts/tokenizer (torchrun: by rank 0; array tasks: by whichever
    task needs it first, deterministic, so concurrent installs agree)."""
    args = (settings["tokenizer"], table, rows, settings["vocab_size"], settings["seed"], settings["sample_bytes"],
            progress)
    if part is None:
        return out / TOKENIZER_DIR, _install_tokenizer(args[0], out / TOKENIZER_DIR, *args[1:])
    key = {k: settings[k] for k in ("tokenizer", "vocab_size", "seed", "sample_bytes", "table", "rows")}
    home = out / P.PARTS / "tokenizer"
    done = P.read_done(home)
    if not (done and done.get("key") == P.run_key(key)) and (group is None or part.index == 0):
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".tokenizer-"))
        try:
            kind = _install_tokenizer(args[0], staging / TOKENIZER_DIR, *args[1:])
            P.finish_part(staging, key, {"kind": kind})
            now = P.read_done(home)
            if not (now and now.get("key") == P.run_key(key)):  # not installed meanwhile by another task
                if home.exists():
                    shutil.rmtree(home, ignore_errors=True)  # a tokenizer of other settings
                home.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(staging, home)
                except OSError:
                    pass  # another task installed the same tokenizer first
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if group is not None:
        group.barrier()
    done = P.read_done(home)
    if not (done and done.get("key") == P.run_key(key)):
        raise P.PartError(f"{home}: the run's tokenizer is missing or was replaced while this task ran "
                          "(tasks of different settings in one output folder?); re-run this task")
    return home / TOKENIZER_DIR, done["kind"]


def _write_manifest(out: Path, settings: dict, table: T.Table, documents: int, splits: dict, domains: dict, tok,
                    kind: str, dtype: np.dtype) -> dict:
    keep = {s["path"] for sp in splits.values() for s in sp["shards"]}
    for stale in list(out.glob("train-*.npy")) + list(out.glob("val-*.npy")):
        if stale.name not in keep:
            stale.unlink()
    rejected = table.rejected
    manifest = {
        "format": FORMAT,
        "tokenizer": {"path": TOKENIZER_DIR, "kind": kind, "vocab_size": len(tok), "eos_id": tok.eos_token_id,
                      "bos_id": tok.bos_token_id, "pad_id": tok.pad_token_id},
        "dtype": dtype.name,
        "splits": splits,
        "sources": {"inputs": settings["inputs"], "documents": documents, "read": table.n,
                    "not_selected": table.n - documents, "rejected": dict(sorted(rejected.counts.items())),
                    "rejected_examples": rejected.to_dict()["examples"], "selection": settings["selection"],
                    "text_field": settings["text_field"], "domain_field": settings["domain_field"],
                    "id_field": settings["id_field"]},
        "domains": dict(sorted(domains.items())) if set(domains) - {"unknown"} else {},
        "val_fraction": settings["val_fraction"],
        "seed": settings["seed"],
        "fingerprint": _fingerprint(tok.get_vocab(), dtype.name, splits),
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


class _StreamWriter:
    """A part's tokens of one split: ``<split>.tokens`` (the documents' tokens + EOS, back to
    back) and ``<split>.lengths`` (int64 tokens per document), for the merge to cut into shards."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype):
        self.dtype = dtype
        self.tokens = open(out_dir / f"{split}.tokens", "wb")
        self.lengths = open(out_dir / f"{split}.lengths", "wb")
        self.count = self.docs = 0

    def add(self, arr: np.ndarray) -> None:
        self.tokens.write(np.ascontiguousarray(arr, dtype=self.dtype).tobytes())
        self.lengths.write(np.int64(len(arr)).tobytes())
        self.count += len(arr)
        self.docs += 1

    def flush(self) -> None:
        for f in (self.tokens, self.lengths):
            f.flush()
            os.fsync(f.fileno())
            f.close()

    def summary(self) -> dict:
        return {"tokens": self.count, "documents": self.docs}


def merge_tokens(out_dir: str | Path, *, progress: bool = True) -> dict:
    """Cut the finished tokenize parts of ``out_dir`` into shards exactly as one process would
    (streaming each part's tokens, one shard in memory at a time) and write the manifest;
    refuses missing, unfinished or mixed parts before writing anything."""
    out = Path(out_dir)
    found = P.collect_parts(out, "tokenize")
    first = found[0][1]
    settings = {k: v for k, v in first["settings"].items() if k != "parts"}
    reader = {k: settings[k] for k in T.READER_KEYS}
    table, rows = _documents(settings["inputs"], out, settings["selection"], reader, P.Shard(0, 1), None, False)
    if table.fingerprint != settings["table"] or _selection_key(table, rows) != settings["rows"]:
        raise P.PartError(f"{out}: the parts were tokenized from another table or selection; redo them")
    if sum(d["documents"] for _, d in found) != len(rows):
        raise P.PartError(f"{out}: the parts hold {sum(d['documents'] for _, d in found)} documents, "
                          f"the selection {len(rows)}")
    dtype = np.dtype(first["dtype"])
    (out / "manifest.json").unlink(missing_ok=True)
    tok_dir = out / TOKENIZER_DIR
    with staged_dir(tok_dir) as staging:
        shutil.copytree(out / P.PARTS / "tokenizer" / TOKENIZER_DIR, staging, dirs_exist_ok=True)
    tok = load_tokenizer(tok_dir)
    splits = {}
    for split in ("train", "val"):
        writer = _ShardWriter(out, split, settings["shard_tokens"], dtype)
        for path, _ in tqdm(found, desc=f"merge {split} tokens", disable=not progress):
            lengths = np.fromfile(path / f"{split}.lengths", dtype=np.int64)
            with open(path / f"{split}.tokens", "rb") as f:
                for lo in range(0, len(lengths), _ID_CHUNK):
                    part = lengths[lo:lo + _ID_CHUNK]
                    block = np.fromfile(f, dtype=dtype, count=int(part.sum()))
                    for arr in np.split(block, np.cumsum(part)[:-1]):
                        writer.add(arr)
        writer.flush()
        splits[split] = writer.summary()
    domains: dict[str, dict[str, int]] = {}
    for _, done in found:
        for name, d in done["domains"].items():
            agg = domains.setdefault(name, {"documents": 0, "tokens": 0})
            agg["documents"] += d["documents"]
            agg["tokens"] += d["tokens"]
    manifest = _write_manifest(out, settings, table, len(rows), splits, domains, tok, first["kind"], dtype)
    P.remove_parts(out, "tokenize")
    P.remove_parts(out, "tokenizer")
    return manifest
