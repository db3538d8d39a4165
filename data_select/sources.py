"""Read documents from text files, JSONL and Parquet (plain, .gz or .zst), never losing one silently.

Every input document is either yielded as a :class:`Document` or counted in :class:`Rejections`
under a reason, so a corpus report always adds up: a bad file or record costs that record,
never the run.

File kinds are chosen by name: ``*.jsonl`` / ``*.ndjson`` (and ``*.json`` when compressed, the
usual dump convention) are one record per line; ``*.parquet`` is read in row batches; any other
file is one text document (binary detected from its bytes, not its extension). ``.gz`` and
``.zst`` are decompressed as streams.
"""
from __future__ import annotations

import glob
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from tqdm.auto import tqdm

from data_select.errors import NoDocumentsError

REASONS = (
    "unreadable",  # missing path, permission denied, not a regular file
    "corrupt",  # broken gzip / zst / parquet container (rest of that file)
    "binary",  # NUL bytes in a text file
    "invalid_utf8",  # bytes that do not decode as UTF-8 (or lone surrogates in JSON)
    "empty",  # empty or whitespace-only text
    "too_short",  # fewer than min_chars non-whitespace-stripped characters
    "too_large",  # more than max_doc_bytes of text (or of JSONL line)
    "malformed_json",  # a JSONL line that is not a JSON object
    "missing_text",  # record without the text field
    "non_string_text",  # text field that is not a string
    "missing_id",  # id_field given but absent/empty in the record
    "duplicate_id",  # second and later occurrences of an id
)

_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_GLOB_CHARS = set("*?[")
_PARQUET_BATCH_ROWS = 1024
_READ_CHUNK = 1 << 20


class _Corrupt(Exception):
    """Internal: a compressed/container stream is broken."""


@dataclass
class Document:
    """One document: ``id`` is stable and unique across the inputs of one run."""

    id: str
    text: str
    source: str
    domain: str | None


@dataclass
class Rejections:
    """Counts of rejected documents by reason, with a few examples each for the report."""

    max_examples: int = 3
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append({"where": str(where), "detail": detail})

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "counts": dict(sorted(self.counts.items())),
                "examples": {k: list(v) for k, v in sorted(self.examples.items())}}

    def summary(self) -> str:
        if not self.counts:
            return "none rejected"
        return ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))


def _glob_root(pattern: str) -> Path:
    """The directory part of a glob before its first wildcard: ids are relative to it."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _expand(inputs: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """(root, path) pairs in deterministic order; missing paths are kept so they get reported."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out: list[tuple[Path, Path]] = []
    seen: set[str] = set()

    def push(root: Path, path: Path) -> None:
        key = os.path.abspath(path)  # not resolved: a symlinked alias is its own document
        if key not in seen:
            seen.add(key)
            out.append((root, path))

    for item in inputs:
        s = str(item)
        if _GLOB_CHARS & set(s) and not Path(s).exists():
            root = _glob_root(s)
            matches = sorted(glob.glob(s, recursive=True))
            if not matches:
                push(root, Path(s))
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    for f in _walk(mp):
                        push(root, f)
                else:
                    push(root, mp)
        else:
            p = Path(s)
            if p.is_dir():
                for f in _walk(p):
                    push(p, f)
            else:
                push(p.parent, p)
    roots = {os.path.abspath(root) for root, _ in out}
    if len(roots) > 1:
        # Several inputs: ids are relative to their common folder, so json/__init__.py and
        # email/__init__.py stay distinct documents instead of colliding as __init__.py.
        common = Path(os.path.commonpath(sorted(roots)))
        out = [(common, path) for _, path in out]
    return out


def _walk(folder: Path) -> list[Path]:
    """Every file under ``folder`` sorted by relative path; symlinked folders are followed once.

    A subfolder that cannot be listed is returned as a path too, so reading it reports it as
    ``unreadable`` rather than skipping its files unseen.
    """
    found: list[Path] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True,
                                                onerror=lambda e: found.append(Path(e.filename))):
        visited.add(os.path.realpath(dirpath))
        dirnames[:] = sorted(d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in visited)
        found.extend(Path(dirpath) / name for name in filenames)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def list_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Files named by ``inputs`` (folders recursively, globs, single files) in a deterministic order.

    A path listed twice (e.g. a folder and a file inside it) appears once. Paths that do not
    exist are kept, so that reading them reports them as ``unreadable`` instead of dropping them.
    """
    return [p for _, p in _expand(inputs)]


def _compression(name: str) -> tuple[str | None, str]:
    low = name.lower()
    if low.endswith(".gz"):
        return "gzip", low[:-3]
    if low.endswith(".zst"):
        return "zstd", low[:-4]
    if low.endswith(".zstd"):
        return "zstd", low[:-5]
    return None, low


def _kind(path: Path) -> tuple[str, str | None]:
    codec, inner = _compression(path.name)
    if inner.endswith(_JSONL_SUFFIXES) or (codec and inner.endswith(".json")):
        return "jsonl", codec
    if inner.endswith(".parquet") and codec is None:
        return "parquet", None
    return "text", codec


class _ZstdRaw(io.RawIOBase):
    """Streaming zstd reader that, unlike ``stream_reader``, raises on a truncated final frame."""

    def __init__(self, fh):
        self._fh = fh
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._buf = bytearray()
        self._in_frame = False
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf and not self._done:
            chunk = self._fh.read(_READ_CHUNK)
            if not chunk:
                if self._in_frame:
                    raise _Corrupt("zstd stream ends inside a frame (truncated file)")
                self._done = True
                break
            self._feed(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        del self._buf[:n]
        return n

    def _feed(self, chunk: bytes) -> None:
        while chunk:
            self._buf += self._obj.decompress(chunk)
            self._in_frame = True
            if self._obj.eof:
                chunk = self._obj.unused_data
                self._obj = self._dctx.decompressobj()
                self._in_frame = False
            else:
                chunk = b""

    def close(self) -> None:
        self._fh.close()
        super().close()


def _open_binary(path: Path, codec: str | None):
    if path.exists() and not path.is_file():
        raise IsADirectoryError(f"{path} is not a regular file")
    if codec == "gzip":
        return gzip.open(path, "rb")
    if codec == "zstd":
        return io.BufferedReader(_ZstdRaw(open(path, "rb")), buffer_size=_READ_CHUNK)
    return open(path, "rb")


_CORRUPT_ERRORS = (_Corrupt, gzip.BadGzipFile, EOFError, zlib.error, zstandard.ZstdError, pa.ArrowException)


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason)."""
    if b"\x00" in raw:
        return None, "binary"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"invalid_utf8:{e.reason} at byte {e.start}"
    return text.removeprefix("\ufeff"), None


class _Reader:
    """State of one ``iter_documents`` call: option values, seen ids, rejections."""

    def __init__(self, text_field, domain_field, id_field, max_doc_bytes, min_chars, rejections):
        self.text_field = text_field
        self.domain_field = domain_field
        self.id_field = id_field
        self.max_doc_bytes = max_doc_bytes
        self.min_chars = min_chars
        self.rej = rejections
        self.seen: set[str] = set()

    def check_text(self, text: str) -> str | None:
        """Reason the text is unusable, or None."""
        if len(text) > self.max_doc_bytes:
            return "too_large"
        try:
            nbytes = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return "invalid_utf8"
        if nbytes > self.max_doc_bytes:
            return "too_large"
        stripped = len(text.strip())
        if stripped == 0:
            return "empty"
        if stripped < self.min_chars:
            return "too_short"
        return None

    def accept(self, doc: Document, where: str) -> bool:
        reason = self.check_text(doc.text)
        if reason is None and doc.id in self.seen:
            reason = "duplicate_id"
        if reason is not None:
            self.rej.add(reason, where, f"id={doc.id}" if reason == "duplicate_id" else "")
            return False
        self.seen.add(doc.id)
        return True

    def record(self, rec, rel: str, n: int, source: str) -> Document | None:
        """A Document from a JSON object / Parquet row, or None after counting the rejection."""
        where = f"{source}:{n}"
        if not isinstance(rec, dict):
            self.rej.add("malformed_json", where, f"expected a JSON object, got {type(rec).__name__}")
            return None
        if self.text_field not in rec or rec[self.text_field] is None:
            self.rej.add("missing_text", where, f"no field {self.text_field!r}")
            return None
        text = rec[self.text_field]
        if not isinstance(text, str):
            self.rej.add("non_string_text", where, f"field {self.text_field!r} is {type(text).__name__}")
            return None
        if self.id_field:
            raw_id = rec.get(self.id_field)
            if raw_id is None or raw_id == "" or isinstance(raw_id, (dict, list)):
                self.rej.add("missing_id", where, f"no usable field {self.id_field!r}")
                return None
            doc_id = str(raw_id)
        else:
            doc_id = f"{rel}:{n}"
        domain = None
        if self.domain_field:
            d = rec.get(self.domain_field)
            if isinstance(d, (str, int)) and not isinstance(d, bool) and str(d):
                domain = str(d)
        doc = Document(id=doc_id, text=text, source=source, domain=domain)
        return doc if self.accept(doc, where) else None


def _dir_domain(rel: str) -> str | None:
    parts = Path(rel).parts
    return parts[0] if len(parts) > 1 else None


def _read_text(r: _Reader, path: Path, codec, rel: str, source: str) -> Iterator[Document]:
    if codec is None and path.stat().st_size > r.max_doc_bytes:
        r.rej.add("too_large", source, f"{path.stat().st_size} bytes")
        return
    with _open_binary(path, codec) as fh:
        raw = fh.read(r.max_doc_bytes + 1)
    if len(raw) > r.max_doc_bytes:
        r.rej.add("too_large", source, f"more than {r.max_doc_bytes} bytes")
        return
    text, why = _decode(raw)
    if text is None:
        reason, _, detail = why.partition(":")
        r.rej.add(reason, source, detail)
        return
    doc = Document(id=rel, text=text, source=source, domain=None)
    if r.accept(doc, source):
        yield doc


def _skip_rest_of_line(fh, limit: int) -> None:
    while True:
        part = fh.readline(limit)
        if not part or part.endswith(b"\n"):
            return


def _read_jsonl(r: _Reader, path: Path, codec, rel: str, source: str) -> Iterator[Document]:
    # A record may carry metadata and JSON escapes next to its text, so a line may be up to twice
    # the text limit; longer lines are skipped unparsed, in bounded reads.
    line_limit = 2 * r.max_doc_bytes + 1
    n = records = 0
    with _open_binary(path, codec) as fh:
        while True:
            line = fh.readline(line_limit)
            if not line:
                break
            n += 1
            where = f"{source}:{n}"
            if len(line) >= line_limit and not line.endswith(b"\n"):
                r.rej.add("too_large", where, f"line longer than {line_limit - 1} bytes")
                _skip_rest_of_line(fh, line_limit)
                continue
            if not line.strip():
                continue
            records += 1
            try:
                s = line.decode("utf-8")
            except UnicodeDecodeError as e:
                r.rej.add("invalid_utf8", where, f"{e.reason} at byte {e.start}")
                continue
            try:
                rec = json.loads(s)
            except json.JSONDecodeError as e:
                r.rej.add("malformed_json", where, str(e))
                continue
            doc = r.record(rec, rel, n, source)
            if doc is not None:
                yield doc
    if records == 0:
        r.rej.add("empty", source, "no records")


def _read_parquet(r: _Reader, path: Path, rel: str, source: str) -> Iterator[Document]:
    pf = pq.ParquetFile(path)
    if pf.metadata.num_rows == 0:
        r.rej.add("empty", source, "no rows")
        return
    names = set(pf.schema_arrow.names)
    cols = [c for c in (r.text_field, r.domain_field, r.id_field) if c and c in names]
    row = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=cols or None):
        for rec in batch.to_pylist():
            doc = r.record(rec, rel, row, source)
            row += 1
            if doc is not None:
                yield doc


def iter_documents(inputs: list[str | Path], *, text_field: str = "text", domain_field: str | None = "domain",
                   id_field: str | None = None, max_doc_bytes: int = 8_000_000, min_chars: int = 1,
                   rejections: Rejections | None = None, progress: bool = False,
                   domain_from_dir: bool = False) -> Iterator[Document]:
    """Yield every usable document of ``inputs``; count every unusable one in ``rejections``.

    Ids: a text file's path relative to its input root (the common folder of all inputs when there
    are several); ``"<relpath>:<n>"`` for records (JSONL
    1-based line number, Parquet 0-based row) unless ``id_field`` names a field. Later duplicates
    of an id are rejected. ``domain_from_dir`` sets the domain of records without one to the first
    directory component of the file's relative path. Raises :class:`NoDocumentsError` (after
    reading everything) when nothing usable was found.
    """
    rej = rejections if rejections is not None else Rejections()
    if max_doc_bytes < 1:
        raise ValueError(f"max_doc_bytes must be positive, got {max_doc_bytes}")
    r = _Reader(text_field, domain_field, id_field, max_doc_bytes, min_chars, rej)
    files = _expand(inputs)
    yielded = 0
    bar = tqdm(files, desc="reading", unit="file", disable=not progress)
    for root, path in bar:
        rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()
        source = str(path)
        kind, codec = _kind(path)
        n_before = yielded
        try:
            if kind == "jsonl":
                it = _read_jsonl(r, path, codec, rel, source)
            elif kind == "parquet":
                it = _read_parquet(r, path, rel, source)
            else:
                it = _read_text(r, path, codec, rel, source)
            for doc in it:
                if domain_from_dir and doc.domain is None:
                    doc.domain = _dir_domain(rel)
                yielded += 1
                yield doc
        except _CORRUPT_ERRORS as e:
            done = yielded - n_before
            rej.add("corrupt", source, f"{type(e).__name__}: {e} (after {done} documents)")
        except OSError as e:
            rej.add("unreadable", source, f"{type(e).__name__}: {e.strerror or e}")
    bar.close()
    if yielded == 0:
        shown = ", ".join(str(i) for i in (inputs if not isinstance(inputs, (str, Path)) else [inputs]))
        raise NoDocumentsError(
            f"no usable document in {shown} ({len(files)} files; rejected: {rej.summary()})")
