"""The document table: one row per document, written once by the first pass over the raw input.

Every later step (select, dedup, DSIR, report, tokenize) works on row numbers and reads only the
columns it needs, in bounded chunks: nothing holds a Python object per document. Rows are in
reading order (input file, then record), so the rows of one file are contiguous.

On disk, ``<dir>/table/`` (docs/FORMATS.md, "Document table")::

    table.json      written once: format, reader settings, input list + sizes, file paths, columns
    progress.json   counters only, rewritten at each commit (rows, id bytes, domains)
    DONE.json       written last: row count, rejections by reason, checksums, fingerprint
    <column>.bin    raw little-endian arrays, one value (or a fixed-width key) per row
    ids.bin         the document ids, UTF-8, concatenated; ``id_end`` holds each one's end offset
    domains.jsonl   domain names, one JSON string per line; ``domain`` holds codes into it (-1: none)

A table with ``DONE.json`` is complete; :class:`Table` refuses anything else. An interrupted
:func:`build_table` resumes after its last commit (the files are truncated to the committed
sizes, which progress.json records). Under sharding each part indexes its own input files
without judging repeats; :func:`merge_parts` then drops repeated ids and texts over all parts
in reading order, which gives exactly the table of one process.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data_select import parts as P
from data_select.errors import DataSelectError, NoDocumentsError, UsageError
from data_select.io import atomic_write_json, read_json
from data_select.keyset import KeySet, digest, split_keys
from data_select.sources import (KIND_PARQUET, KIND_RECORD, KIND_TEXT, Document, Rejections, ids_may_repeat,
                                 input_fingerprint, iter_documents, list_files, read_texts_at, scan_inputs)

FORMAT = "budgetlm-table/1"
DIR = "table"
META = "table.json"
PROGRESS = "progress.json"
IDS = "ids.bin"
DOMAINS = "domains.jsonl"
MAX_DOMAINS = 1 << 16
COLUMNS: dict[str, tuple[str, int]] = {  # name: (dtype, values per row)
    "file": ("<i4", 1),  # index into table.json "files"
    "kind": ("u1", 1),  # 0 JSON Lines record, 1 whole text file, 2 Parquet row
    "offset": ("<i8", 1),  # byte offset in the file's decoded bytes (a file offset when not compressed); Parquet: row group
    "record": ("<i8", 1),  # JSON Lines: 1-based line; Parquet: 0-based row in the file; text file: 0
    "length": ("<i8", 1),  # raw bytes of the record (line without terminator, text file bytes, Parquet text bytes)
    "bytes": ("<i8", 1),  # UTF-8 bytes of the text
    "chars": ("<i8", 1),  # characters of the text
    "domain": ("<i4", 1),  # code into domains.jsonl, -1 for none
    "key": ("<u8", 2),  # content key: blake2b-128 of the UTF-8 text
    "id_key": ("<u8", 2),  # blake2b-128 of the UTF-8 id
    "id_end": ("<i8", 1),  # end of the row's id in ids.bin (its start is the previous row's end)
}
READER_KEYS = ("text_field", "domain_field", "id_field", "domain_from_dir", "max_doc_bytes")
_CHUNK = 1 << 20  # rows per chunk when a column is scanned


class TableError(DataSelectError):
    """A table that is missing, unfinished, inconsistent or made from other inputs/settings."""


def table_dir(root: str | Path) -> Path:
    """The table of a features (or tokens) directory lives in ``<root>/table``."""
    return Path(root) / DIR


def _dtype(name: str) -> np.dtype:
    return np.dtype(COLUMNS[name][0])


def _width(name: str) -> int:
    return COLUMNS[name][1]


def _row_bytes(name: str) -> int:
    return _dtype(name).itemsize * _width(name)


def table_settings(inputs: Sequence[str], *, text_field: str = "text", domain_field: str | None = "domain",
                   id_field: str | None = None, domain_from_dir: bool = False,
                   max_doc_bytes: int | None = None) -> dict:
    """What decides a table's content: the inputs (paths and sizes) and how they are read."""
    return {"inputs": [str(p) for p in inputs], "input_files": input_fingerprint(inputs), "text_field": text_field,
            "domain_field": domain_field or None, "id_field": id_field, "domain_from_dir": bool(domain_from_dir),
            "max_doc_bytes": int(max_doc_bytes or 8_000_000)}


def _reader_kw(settings: dict) -> dict:
    return {k: settings[k] for k in READER_KEYS}


def check_same(what: str, path: Path, have: dict, want: dict, hint: str, error: type = None) -> None:
    """Refuse ``have`` (settings found at ``path``) unless it equals ``want``, naming the first
    setting that differs with both values (an input file: its path and both sizes)."""
    error = error or TableError
    for k in list(want) + [k for k in have if k not in want]:
        if have.get(k) == want.get(k):
            continue
        if k == "input_files":
            a = {f["path"]: f["bytes"] for f in have.get(k) or []}
            b = {f["path"]: f["bytes"] for f in want.get(k) or []}
            changed = sorted(set(a) ^ set(b)) + sorted(p for p in set(a) & set(b) if a[p] != b[p])
            p = changed[0] if changed else "?"
            raise error(f"{path}: {what} was made from other inputs: {p} had {a.get(p, 'no file')} bytes there, "
                        f"now {b.get(p, 'no file')}; {hint}")
        raise error(f"{path}: {what} was made with {k}={repr(have.get(k))[:200]}, this run has "
                    f"{k}={repr(want.get(k))[:200]}; {hint}")


# --------------------------------------------------------------------------- writing


class TableWriter:
    """Appends rows to a table directory; :meth:`commit` makes them durable, :meth:`finish` marks
    the table complete. Reopening a partial table truncates it to its last commit."""

    def __init__(self, root: str | Path, meta: dict):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / META).is_file():
            atomic_write_json(self.root / META, meta)
        self.meta = meta
        progress = _read_json(self.root / PROGRESS) or {"rows": 0, "ids_bytes": 0, "domains": 0}
        self.rows = int(progress["rows"])
        self.ids_bytes = int(progress["ids_bytes"])
        self._files, self._sha = {}, {}
        for name in COLUMNS:
            self._open(self.root / f"{name}.bin", name, self.rows * _row_bytes(name))
        self._open(self.root / IDS, "ids", self.ids_bytes)
        self.domains: list[str] = []
        if (self.root / DOMAINS).is_file():
            with open(self.root / DOMAINS, encoding="utf-8") as f:
                self.domains = [json.loads(line) for line in itertools.islice(f, int(progress["domains"]))]
        with open(self.root / DOMAINS, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in self.domains)
        self._domains_file = open(self.root / DOMAINS, "a", encoding="utf-8")
        self._codes = {d: i for i, d in enumerate(self.domains)}

    def _open(self, path: Path, name: str, size: int) -> None:
        """Open for appending after the committed ``size`` bytes (a crash may have left more)."""
        with open(path, "ab") as f:
            f.truncate(size)
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                sha.update(chunk)
        self._files[name] = open(path, "ab")
        self._sha[name] = sha

    def code(self, domain: str | None) -> int:
        if domain is None:
            return -1
        c = self._codes.get(domain)
        if c is None:
            if len(self.domains) >= MAX_DOMAINS:
                raise UsageError(f"domain field {self.meta['settings'].get('domain_field')!r} has more than "
                                 f"{MAX_DOMAINS:,} distinct values: a domain is a label shared by many documents "
                                 "(give --domain-field '' for none)")
            c = self._codes[domain] = len(self.domains)
            self.domains.append(domain)
            self._domains_file.write(json.dumps(domain, ensure_ascii=False) + "\n")
        return c

    def _write(self, name: str, data: bytes) -> None:
        self._files[name].write(data)
        self._sha[name].update(data)

    def append_documents(self, docs: Sequence[Document], chars: Sequence[int] | None = None) -> None:
        """Rows for documents read with keys (``Document.key`` / ``id_key`` set); ``chars``: the
        texts' lengths when the texts were already dropped."""
        ids = [d.id.encode("utf-8", "surrogatepass") for d in docs]
        cols = {
            "file": np.fromiter((d.file for d in docs), np.int32, len(docs)),
            "kind": np.fromiter((d.kind for d in docs), np.uint8, len(docs)),
            "offset": np.fromiter((d.offset for d in docs), np.int64, len(docs)),
            "record": np.fromiter((d.record for d in docs), np.int64, len(docs)),
            "length": np.fromiter((d.nbytes for d in docs), np.int64, len(docs)),
            "bytes": np.fromiter((d.size for d in docs), np.int64, len(docs)),
            "chars": np.fromiter((len(d.text) for d in docs) if chars is None else chars, np.int64, len(docs)),
            "domain": np.fromiter((self.code(d.domain) for d in docs), np.int32, len(docs)),
            "key": np.frombuffer(b"".join(d.key for d in docs), dtype="<u8"),
            "id_key": np.frombuffer(b"".join(d.id_key for d in docs), dtype="<u8"),
        }
        self.append(cols, b"".join(ids), np.fromiter((len(i) for i in ids), np.int64, len(ids)))

    def append(self, cols: dict[str, np.ndarray], ids: bytes, id_lengths: np.ndarray) -> None:
        """Rows given as column arrays (``domain`` already coded by this writer) and their ids."""
        cols = dict(cols, id_end=self.ids_bytes + np.cumsum(id_lengths, dtype=np.int64))
        for name in COLUMNS:
            self._write(name, np.ascontiguousarray(cols[name], dtype=_dtype(name)).tobytes())
        self._write("ids", ids)
        self.ids_bytes += len(ids)
        self.rows += len(id_lengths)

    def commit(self) -> None:
        """Flush and fsync every file, then advance progress.json (counters only)."""
        for f in [*self._files.values(), self._domains_file]:
            f.flush()
            os.fsync(f.fileno())
        atomic_write_json(self.root / PROGRESS, {"rows": self.rows, "ids_bytes": self.ids_bytes,
                                                  "domains": len(self.domains)})

    def finish(self, rejections: Rejections, extra: dict | None = None) -> dict:
        """Commit and write DONE.json: the table is complete (``extra``: a part's run key)."""
        self.commit()
        self.close()
        checksums = {name: sha.hexdigest() for name, sha in self._sha.items()}
        fingerprint = hashlib.sha256(json.dumps([self.meta, checksums, self.domains], sort_keys=True).encode()).hexdigest()
        done = {"format": FORMAT, "rows": self.rows, "ids_bytes": self.ids_bytes, "domains": len(self.domains),
                "rejected": rejections.to_dict(positions=True), "checksums": checksums,
                "fingerprint": fingerprint, **(extra or {})}
        atomic_write_json(self.root / P.DONE, done)
        return done

    def close(self) -> None:
        for f in [*self._files.values(), self._domains_file]:
            if not f.closed:
                f.close()


def _read_json(path: Path) -> dict | None:
    return read_json(path, TableError)


def _windows(docs: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(docs, size)):
        yield chunk


def read_documents(settings: dict, *, dedup: bool, files: Iterable[int] | None, rejections: Rejections,
                   progress: bool = False) -> Iterator[Document]:
    """Documents in reading order, with keys; ``dedup`` drops repeated ids and texts."""
    return iter_documents(settings["inputs"], rejections=rejections, progress=progress, keys=True, dedup=dedup,
                          dedup_content=dedup, files=files, require_documents=False, **_reader_kw(settings))


def open_writer(root: Path, settings: dict, part: P.Shard | None = None) -> TableWriter:
    """A writer for the table of ``settings`` at ``root``: a fresh one, or the matching partial
    table resumed; a table made from other inputs or settings is refused, naming both."""
    meta = {"format": FORMAT, "settings": settings, "files": [str(p) for p in list_files(settings["inputs"])],
            "columns": {name: {"dtype": dt, "width": w} for name, (dt, w) in COLUMNS.items()}}
    if part is not None:
        meta["part"] = {"index": part.index, "count": part.count}
    old = _read_json(root / META)
    if old is not None:
        if old.get("format") != FORMAT:
            raise TableError(f"{root}: not a {FORMAT} table (found {old.get('format')!r}); delete it and re-run")
        check_same("the table", root, old["settings"], settings, "use another output directory or --overwrite")
        if old != meta:
            raise TableError(f"{root}: was written for another layout ({old.get('part')} vs {meta.get('part')}); "
                             "delete it and re-run")
    return TableWriter(root, meta)


def build_table(root: str | Path, settings: dict, *, part: P.Shard | None = None, files: Iterable[int] | None = None,
                commit_rows: int = 1 << 16, commit_seconds: float = 30.0, progress: bool = True,
                done_extra: dict | None = None) -> dict:
    """Index the inputs into the table at ``root`` (resumable); returns its DONE record.

    One process (``part`` None) drops repeated ids and texts as it reads. A part (``part`` and
    its ``files``) keeps every document of its files; :func:`merge_parts` judges repeats."""
    root = Path(root)
    done = _read_json(root / P.DONE)
    if done is not None:
        check_same("the table", root, _read_json(root / META)["settings"], settings, "delete it to rebuild")
        return done
    writer = open_writer(root, settings, part)
    skip = writer.rows
    rej = Rejections()
    seen = 0
    last = time.monotonic()
    bar = tqdm(desc="index" + (f" part {part}" if part else ""), unit="doc", initial=skip, disable=not progress)
    def light(docs: Iterator[Document]) -> Iterator[tuple[Document, int]]:
        for d in docs:  # the texts are not needed here: a window holds metadata only
            n = len(d.text)
            d.text = ""
            yield d, n

    try:
        docs = light(read_documents(settings, dedup=part is None, files=files, rejections=rej))
        for window in _windows(docs, commit_rows):
            seen += len(window)
            new = window[max(0, skip - (seen - len(window))):]
            if not new:
                continue
            writer.append_documents([d for d, _ in new], [c for _, c in new])
            bar.update(len(new))
            if time.monotonic() - last >= commit_seconds:
                writer.commit()
                last = time.monotonic()
        if part is None:
            require_rows(writer.rows, settings, rej)
        return writer.finish(rej, done_extra)
    finally:
        writer.close()
        bar.close()


def read_meta(root: str | Path) -> dict | None:
    return _read_json(Path(root) / META)


def require_rows(rows: int, settings: dict, rej: Rejections) -> None:
    if rows == 0:
        raise NoDocumentsError(f"no usable document in {', '.join(settings['inputs'])} (rejected: {rej.summary()})")


# --------------------------------------------------------------------------- reading


class Table:
    """A complete table: column reads in bounded chunks, ids and texts of given rows."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta = _read_json(self.root / META)
        if meta is None:
            raise TableError(f"{self.root}: no document table ({META}); run `data-select index` or `data-select embed`")
        if meta.get("format") != FORMAT:
            raise TableError(f"{self.root}: not a {FORMAT} table; re-run `data-select embed` (or index) to rebuild it")
        done = _read_json(self.root / P.DONE)
        if done is None:
            raise TableError(f"{self.root}: the table is unfinished (no {P.DONE}); re-run the step that writes it")
        self.meta, self.done = meta, done
        self.n = int(done["rows"])
        self.settings = meta["settings"]
        self.files: list[str] = meta["files"]
        with open(self.root / DOMAINS, encoding="utf-8") as f:
            self.domains = [json.loads(line) for line in itertools.islice(f, int(done["domains"]))]
        for name in COLUMNS:
            self._check_size(self.root / f"{name}.bin", self.n * _row_bytes(name))
        self._check_size(self.root / IDS, int(done["ids_bytes"]))

    def _check_size(self, path: Path, size: int) -> None:
        if not path.is_file() or path.stat().st_size != size:
            got = path.stat().st_size if path.is_file() else "missing"
            raise TableError(f"{path}: {got} bytes, the table's DONE.json says {size}; rebuild the table")

    @property
    def fingerprint(self) -> str:
        return self.done["fingerprint"]

    @property
    def rejected(self) -> Rejections:
        return Rejections.from_dict(self.done["rejected"])

    def check_inputs(self) -> None:
        """Refuse to read texts from inputs that changed since they were indexed (naming the file)."""
        now = dict(self.settings, input_files=input_fingerprint(self.settings["inputs"]))
        check_same("the table", self.root, self.settings, now,
                   "re-run `data-select embed --overwrite` (or index) on the current inputs")

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of a column ((n, 2) for keys)."""
        stop = self.n if stop is None else min(stop, self.n)
        count = max(0, stop - start)
        with open(self.root / f"{name}.bin", "rb") as f:
            f.seek(start * _row_bytes(name))
            arr = np.fromfile(f, dtype=_dtype(name), count=count * _width(name))
        return arr.reshape(-1, 2) if _width(name) == 2 else arr

    def chunks(self, name: str, size: int = _CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        for lo in range(0, self.n, size):
            yield lo, self.read(name, lo, lo + size)

    def column(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """A whole column, or its values at ``rows`` (any order), reading only the chunks that hold them."""
        if rows is None:
            return self.read(name)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n):
            raise TableError(f"{self.root}: row {int(rows.max() if rows.max() >= self.n else rows.min())} "
                             f"is not in the table ({self.n} rows)")
        ascending = bool(np.all(rows[1:] >= rows[:-1]))
        order = None if ascending else np.argsort(rows, kind="stable")
        srt = rows if ascending else rows[order]
        out = np.empty((len(rows), 2) if _width(name) == 2 else len(rows), dtype=_dtype(name))
        i = 0
        while i < len(srt):
            lo = int(srt[i])
            j = int(np.searchsorted(srt, lo + _CHUNK, "left"))
            block = self.read(name, lo, int(srt[j - 1]) + 1)
            out[slice(i, j) if ascending else order[i:j]] = block[srt[i:j] - lo]
            i = j
        return out

    def total(self, name: str, rows: np.ndarray | None = None) -> int:
        """Sum of a column over all rows or ``rows``, a chunk at a time."""
        if rows is None:
            return int(sum(int(c.sum()) for _, c in self.chunks(name)))
        return int(sum(int(self.column(name, rows[lo:lo + _CHUNK]).sum()) for lo in range(0, len(rows), _CHUNK)))

    def ids(self, rows: np.ndarray) -> list[str]:
        """Ids of ``rows`` (in the given order): for output files, a chunk of rows at a time."""
        rows = np.asarray(rows, dtype=np.int64)
        ends = self.column("id_end", rows)
        starts = np.where(rows > 0, self.column("id_end", np.maximum(rows - 1, 0)), 0)
        out = []
        with open(self.root / IDS, "rb") as f:
            for a, b in zip(starts.tolist(), ends.tolist()):
                out.append(os.pread(f.fileno(), b - a, a).decode("utf-8", "surrogatepass"))
        return out

    def domain_names(self, codes: np.ndarray) -> list[str | None]:
        return [self.domains[c] if c >= 0 else None for c in np.asarray(codes).tolist()]

    def texts(self, rows: np.ndarray | range, chunk: int = 1 << 14, progress: bool = False) -> Iterator[tuple[int, str]]:
        """(row, text) for ascending ``rows`` (an array, or a range: nothing per row is held), read again from the inputs at the table's locations:
        each file is opened once and read once (a plain file by one ``pread`` per document, a
        compressed one streamed forward); every text is checked against its content key."""
        if not isinstance(rows, range):
            rows = np.asarray(rows, dtype=np.int64)
            if rows.size > 1 and (np.diff(rows) <= 0).any():
                raise TableError("Table.texts needs strictly ascending rows")
        elif rows.step != 1:
            raise TableError("Table.texts takes a range of step 1")
        text_field = self.settings["text_field"]

        def located() -> Iterator[tuple]:
            for lo in range(0, len(rows), chunk):
                part = np.asarray(rows[lo:lo + chunk], dtype=np.int64)
                cols = [self.column(c, part) for c in ("file", "kind", "offset", "length", "record")]
                keys = self.column("key", part)
                for i, r in enumerate(part.tolist()):
                    yield (r, int(cols[0][i]), int(cols[1][i]), int(cols[2][i]), int(cols[3][i]), int(cols[4][i]),
                           keys[i].tobytes())

        bar = tqdm(total=len(rows), desc="reading documents", unit="doc", disable=not progress)
        for file, group in itertools.groupby(located(), key=lambda t: t[1]):
            first = next(group)
            pending: deque = deque()

            def locations(first=first, group=group, pending=pending) -> Iterator[tuple[int, int, int]]:
                for t in itertools.chain([first], group):
                    pending.append((t[0], t[6]))
                    yield t[3], t[4], t[5]

            path = self.files[file]
            try:
                for text in read_texts_at(path, first[2], locations(), text_field):
                    r, key = pending.popleft()
                    if digest(text.encode("utf-8")) != key:
                        raise TableError(f"{path}: the document of row {r} changed since the table was written; "
                                         "re-run `data-select embed --overwrite` (or index) on the current inputs")
                    bar.update()
                    yield r, text
            except OSError as e:
                raise TableError(f"{path}: cannot read it again ({e.strerror or e}); the table was written from it, "
                                 "re-run `data-select embed --overwrite` (or index) on the current inputs") from None
        bar.close()


# --------------------------------------------------------------------------- parts


def merge_parts(root: str | Path, parts: Sequence[Path], settings: dict, *, progress: bool = True) -> dict:
    """Merge complete part tables (in part order) into the table at ``root``: repeated ids and
    texts are judged over all parts in reading order, as one process would, and dropped. Streams
    the parts a chunk at a time; memory: two :class:`KeySet` s (32 bytes per document)."""
    root = Path(root)
    tables = [Table(p) for p in parts]
    for t in tables:
        check_same("a table part", t.root, t.settings, settings, "delete the stale parts")
    if root.exists():
        for p in root.iterdir():
            if p.is_file():
                p.unlink()
    writer = open_writer(root, settings)
    rej = Rejections()
    ids, texts = KeySet(), KeySet()
    check_ids = ids_may_repeat(scan_inputs(settings["inputs"]), settings["id_field"])
    bar = tqdm(total=sum(t.n for t in tables), desc="merge table parts", unit="doc", disable=not progress)
    try:
        for t in tables:
            rej.merge(t.rejected)
            for lo in range(0, t.n, _CHUNK):
                hi = min(t.n, lo + _CHUNK)
                cols = {name: t.read(name, lo, hi) for name in COLUMNS}
                dup_id = ids.check_add(*split_keys(cols["id_key"])) if check_ids else np.zeros(hi - lo, dtype=bool)
                dup_text = texts.check_add(*split_keys(cols["key"]))
                dup_text &= ~dup_id
                keep = ~(dup_id | dup_text)
                ends = cols["id_end"]
                starts = np.concatenate([[int(t.read("id_end", lo - 1, lo)[0]) if lo else 0], ends[:-1]])
                with open(t.root / IDS, "rb") as f:
                    f.seek(int(starts[0]))
                    blob = f.read(int(ends[-1] - starts[0])) if len(ends) else b""
                base = int(starts[0]) if len(ends) else 0
                for reason, mask in (("duplicate_id", dup_id), ("duplicate_content", dup_text)):
                    rows = np.flatnonzero(mask)
                    if rows.size:
                        _count_repeats(rej, reason, t, cols, rows, blob, starts - base, ends - base)
                kept = np.flatnonzero(keep)
                new_cols = {name: cols[name][kept] for name in COLUMNS if name != "id_end"}
                new_cols["domain"] = _recode(new_cols["domain"], t.domains, writer)
                pieces = [blob[int(starts[i] - base):int(ends[i] - base)] for i in kept.tolist()]
                writer.append(new_cols, b"".join(pieces), np.fromiter(map(len, pieces), np.int64, len(pieces)))
                bar.update(hi - lo)
        require_rows(writer.rows, settings, rej)
        return writer.finish(rej)
    finally:
        writer.close()
        bar.close()


def _recode(codes: np.ndarray, names: list[str], writer: TableWriter) -> np.ndarray:
    """A part's domain codes as the merged table's (new names coded in order of first appearance)."""
    lookup = np.full(len(names) + 1, -1, dtype=np.int32)  # the last slot serves code -1
    present, first = np.unique(codes[codes >= 0], return_index=True)
    for c in present[np.argsort(first)].tolist():
        lookup[c] = writer.code(names[c])
    return lookup[codes]


def _count_repeats(rej: Rejections, reason: str, t: Table, cols: dict, rows: np.ndarray, blob: bytes,
                   starts: np.ndarray, ends: np.ndarray) -> None:
    """Count repeats found while merging, with examples positioned like the reader's own."""
    for i in rows.tolist():
        file, record = int(cols["file"][i]), int(cols["record"][i])
        source = t.files[file]
        where = source if cols["kind"][i] == KIND_TEXT else f"{source}:{record}"
        if reason == "duplicate_id":
            detail = "id=" + blob[int(starts[i]):int(ends[i])].decode("utf-8", "surrogatepass")
        else:
            detail = "same text as an earlier document"
        rej.add(reason, where, detail, record=record, file=file)


# --------------------------------------------------------------------------- the index step


def complete_table(root: str | Path, settings: dict) -> "Table | None":
    """The complete table of ``root`` (a features or tokens folder), None when it has none yet;
    a table made from other inputs or settings is refused, naming both."""
    tdir = table_dir(root)
    if P.read_done(tdir) is None:
        return None
    table = Table(tdir)
    check_same("the table", tdir, table.settings, settings, "use another output directory or --overwrite")
    return table


def index_parts(root: Path, tset: dict, shard: P.Shard, group: P.Group | None, progress: bool) -> "Table | None":
    """Index part ``shard`` of the inputs (the input files of the part, balanced by size) into
    ``root``/parts; with a torchrun group, meet, let rank 0 merge into ``root``/table, meet again
    and return the merged table."""
    sizes = [f["bytes"] or 0 for f in tset["input_files"]]
    lo, hi = P.balanced_ranges(sizes, shard.count)[shard.index]
    key_settings = {**tset, "parts": shard.count}
    out = P.part_dir(root, "index", shard)
    done, meta = P.read_done(out), read_meta(out)
    if out.exists() and (done is not None and done.get("key") != P.run_key(key_settings)
                         or meta is not None and meta.get("settings") != tset):
        shutil.rmtree(out)  # a part of another run: redo it
    build_table(out, tset, part=shard, files=range(lo, hi), progress=progress,
                done_extra={"key": P.run_key(key_settings), "settings": key_settings})
    if group is not None:
        group.barrier()
        if shard.index == 0:
            merge_index(root, progress=progress)
        group.barrier()
    return Table(table_dir(root)) if group is not None else None


def merge_index(root: str | Path, *, progress: bool = True) -> dict:
    """Merge the finished index parts under ``root`` into ``root``/table."""
    root = Path(root)
    found = P.collect_parts(root, "index")
    tset = found[0][1]["settings"]
    tset = {k: v for k, v in tset.items() if k != "parts"}
    done = merge_parts(table_dir(root), [p for p, _ in found], tset, progress=progress)
    P.remove_parts(root, "index")
    return done


def index_corpus(inputs: Iterable[str], out_dir: str | Path, *, text_field: str = "text",
                 domain_field: str | None = "domain", id_field: str | None = None, domain_from_dir: bool = False,
                 max_doc_bytes: int | None = None, shard: P.Shard | None = None, progress: bool = True) -> dict:
    """``data-select index``: the document table of ``inputs`` in ``out_dir``/table, which a later
    ``embed`` into the same ``out_dir`` reuses (one process, a torchrun group, or part ``shard``)."""
    inputs = [str(p) for p in inputs]
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    tset = table_settings(inputs, text_field=text_field, domain_field=domain_field, id_field=id_field,
                          domain_from_dir=domain_from_dir, max_doc_bytes=max_doc_bytes)
    table = complete_table(root, tset)
    if table is not None:
        return table.done
    if shard is not None:
        index_parts(root, tset, shard, None, progress)
        return P.read_done(P.part_dir(root, "index", shard))
    env = P.env_shard()
    if env is not None:
        with P.Group(env) as group:
            return index_parts(root, tset, env, group, progress).done
    return build_table(table_dir(root), tset, progress=progress)


__all__ = ["Table", "TableError", "TableWriter", "build_table", "complete_table", "index_corpus", "merge_index",
           "merge_parts", "table_dir", "table_settings", "KIND_RECORD", "KIND_TEXT", "KIND_PARQUET"]
