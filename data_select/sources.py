"""One lister and one reader for every command: no input can crash or hang a run.

Every input document is either yielded as a :class:`Document` or counted in :class:`Rejections`
under a reason (:data:`REASONS`), so a corpus report always adds up: a bad file or record costs
that record, never the run.

Listing (:func:`scan_inputs`): folders recursively (symlinked folders followed once, a link back
to an ancestor counted as a loop), globs (``**`` never follows links, so a loop cannot repeat
files), single files. Each path is classified with ``stat`` before anything opens it: missing
paths, dangling links, symlink loops and unlistable folders are ``unreadable``; FIFOs, sockets
and devices are ``special_file`` whatever their name, and are never opened (a FIFO would block).

Formats, decided by name and checked against the content:

- ``*.jsonl`` / ``*.ndjson``: one JSON object per line (LF, CRLF or CR-only line endings, UTF-8
  byte-order mark allowed); ``*.json`` is sniffed: JSON Lines when its first non-blank line is a
  one-line object, else one text document;
- ``*.parquet`` (or Parquet content under another name): read by row group;
- anything else: one text document (binary detected from its bytes, not its extension);
- ``.gz``, ``.zst``/``.zstd``, ``.bz2``, ``.xz``/``.lzma`` on top of any of these (and the same
  streams under a plain name, by their magic bytes) are decompressed as streams, in bounded reads:
  a record larger than ``max_doc_bytes`` once decompressed is counted ``too_large`` without
  holding more than about ``2·max_doc_bytes`` plus one read, however small the compressed file;
- archives, other compressors and binary data formats (``.zip``, ``.tar.gz``, ``.lz4``,
  ``.arrow``, ``.pdf``, compressed Parquet, ...) are ``unsupported_format``, naming the extension.

Fields (``text_field``, ``domain_field``, ``id_field``) may be dotted paths into nested records,
as SlimPajama's ``meta.redpajama_set_name``; a key that itself contains the dots wins.

Every document carries where it came from (:class:`Document`): the index of its file in
:func:`list_files` order, the record's location in the file and its raw byte length, so a later
step can read it again with :func:`read_span` (JSON Lines, text) or by row group (Parquet).
"""
from __future__ import annotations

import abc
import bz2
import errno
import fnmatch
import gzip
import io
import json
import lzma
import os
import re
import stat
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from tqdm.auto import tqdm

from data_select.errors import CorruptInput, InputFileError, NoDocumentsError, SpecialFile, UnsupportedFormat
from data_select.keyset import KeySet, digest, split_keys

REASONS = (
    "unreadable",  # missing path, dangling symlink, symlink loop, permission denied, unlistable folder
    "special_file",  # FIFO, socket or device: never opened
    "unsupported_format",  # archive, other compressor or binary data format (the extension is named)
    "corrupt",  # broken compressed stream or Parquet container (rest of that file)
    "binary",  # NUL bytes in a text file
    "invalid_utf8",  # bytes that do not decode as UTF-8 (or lone surrogates in JSON)
    "empty",  # empty or whitespace-only text; a record file without records
    "too_short",  # fewer than min_chars non-whitespace-stripped characters
    "too_large",  # more than max_doc_bytes of text once decompressed (2x that for a JSONL line)
    "malformed_json",  # a JSONL line the JSON parser rejects for any reason, or not a JSON object
    "missing_text",  # record without the text field
    "non_string_text",  # text field that is not a string
    "missing_id",  # id_field given but absent/empty in the record
    "duplicate_id",  # second and later occurrences of an id
    "duplicate_content",  # same text as an earlier document (only when reading with dedup_content)
)

_GLOB_CHARS = set("*?[")
_PARQUET_BATCH_ROWS = 1024
_READ_CHUNK = 1 << 20
_ZSTD_FEED = 64  # compressed bytes per zstd call: one call can then inflate to at most ~2 MiB
_XZ_MEMLIMIT = 256 << 20  # decoder memory for .xz (xz -9 needs 65 MiB)
_PARQUET_PAGE_FLOOR = 64 << 20  # Parquet pages up to this size (or 2·max_doc_bytes) are decoded
_SNIFF = 512
_BOM = b"\xef\xbb\xbf"

_CODEC_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz", ".lzma": "xz"}
_MAGIC_CODECS = ((b"\x1f\x8b\x08", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\xfd7zXZ\x00", "xz"))
_UNSUPPORTED_SUFFIXES = {
    ".zip": "zip archive", ".tar": "tar archive", ".tgz": "tar archive", ".tbz2": "tar archive",
    ".txz": "tar archive", ".7z": "7z archive", ".rar": "rar archive", ".lz4": "lz4 stream",
    ".br": "brotli stream", ".lz": "lzip stream", ".snappy": "snappy stream", ".z": "compress(1) stream",
    ".arrow": "Arrow IPC file", ".feather": "Feather file", ".avro": "Avro file", ".orc": "ORC file",
    ".npy": "numpy array", ".npz": "numpy archive", ".pkl": "pickle", ".pickle": "pickle",
    ".h5": "HDF5 file", ".hdf5": "HDF5 file", ".tfrecord": "TFRecord file", ".safetensors": "safetensors file",
    ".sqlite": "SQLite database", ".db": "database file", ".pdf": "PDF document", ".docx": "Word document",
    ".doc": "Word document", ".odt": "OpenDocument text", ".epub": "EPUB book", ".xlsx": "spreadsheet",
}
_UNSUPPORTED_MAGIC = (
    (b"PK\x03\x04", "zip container"), (b"7z\xbc\xaf\x27\x1c", "7z archive"), (b"Rar!\x1a\x07", "rar archive"),
    (b"\x04\x22\x4d\x18", "lz4 stream"), (b"ARROW1", "Arrow IPC file"), (b"Obj\x01", "Avro file"),
    (b"%PDF-", "PDF document"), (b"\x93NUMPY", "numpy array"), (b"\x89HDF\r\n\x1a\n", "HDF5 file"),
    (b"SQLite format 3\x00", "SQLite database"),
)
_SUPPORTED = "text, .jsonl/.ndjson/.json, .parquet, each optionally .gz/.zst/.bz2/.xz"


KIND_RECORD, KIND_TEXT, KIND_PARQUET = 0, 1, 2  # how a document is stored: a JSON Lines record, a whole text file, a Parquet row


@dataclass(slots=True)
class Document:
    """One document: ``id`` is stable and unique across the inputs of one run.

    Location (for a document table, and to read the document again):
    ``file`` indexes :func:`list_files` of the run's inputs; ``record`` is the 1-based line of a
    JSON Lines record, the 0-based row of a Parquet row in its file, 0 for a text file;
    ``offset`` is the byte offset of the record in the file's decoded bytes (a seekable file
    offset when the file is not compressed), or the row group of a Parquet row; ``nbytes`` is the
    record's raw length: its line without terminator, the text file's bytes, or a Parquet text's
    UTF-8 bytes.
    """

    id: str
    text: str
    source: str
    domain: str | None
    file: int = 0
    offset: int = 0
    nbytes: int = 0
    record: int = 0
    size: int = 0  # UTF-8 bytes of the text
    kind: int = 0  # KIND_RECORD (a JSON Lines record), KIND_TEXT (a whole text file) or KIND_PARQUET (a row)
    key: bytes = b""  # content key (keyset.digest of the UTF-8 text), set when reading with keys
    id_key: bytes = b""  # keyset.digest of the id, set when reading with keys


@dataclass
class Rejections:
    """Counts of rejected documents by reason, with the first few examples of each for the report.

    Each example also remembers its position (index of the input file, record in it): the
    rejections of runs over disjoint file ranges merge into exactly those of one run over all
    files (:meth:`merge`), since the first examples of a reason are the first by position.
    """

    max_examples: int = 3
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    positions: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    file: int = 0  # input file being read: the default position of an example

    def add(self, reason: str, where: str, detail: str = "", count: int = 1, *, record: int = 0,
            file: int | None = None) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + count
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append({"where": str(where), "detail": detail})
            self.positions.setdefault(reason, []).append((self.file if file is None else int(file), int(record)))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self, positions: bool = False) -> dict:
        """JSON form; ``positions=True`` keeps each example's position so that it can be merged."""
        examples = {k: [dict(e, position=list(p)) if positions else dict(e)
                        for e, p in zip(v, self.positions.get(k, []))] for k, v in sorted(self.examples.items())}
        return {"total": self.total, "counts": dict(sorted(self.counts.items())), "examples": examples}

    @classmethod
    def from_dict(cls, data: dict, max_examples: int = 3) -> "Rejections":
        """Inverse of ``to_dict(positions=True)``."""
        rej = cls(max_examples=max_examples)
        rej.counts = dict(data.get("counts", {}))
        for reason, examples in data.get("examples", {}).items():
            rej.examples[reason] = [{"where": e["where"], "detail": e["detail"]} for e in examples]
            rej.positions[reason] = [tuple(e.get("position", (0, 0))) for e in examples]
        return rej

    def merge(self, other: "Rejections") -> None:
        """Add ``other``'s counts; keep the first ``max_examples`` examples of each reason by position."""
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
        for reason, examples in other.examples.items():
            both = list(zip(self.positions.get(reason, []), self.examples.get(reason, []))) + \
                list(zip(other.positions.get(reason, []), examples))
            both.sort(key=lambda pe: pe[0])
            both = both[:self.max_examples]
            self.positions[reason] = [p for p, _ in both]
            self.examples[reason] = [e for _, e in both]

    def summary(self) -> str:
        if not self.counts:
            return "none rejected"
        return ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class InputFile:
    """A listed path: ``problem`` is ``(reason, detail)`` when it must not be opened."""

    path: Path
    root: Path
    problem: tuple[str, str] | None = None

    @property
    def rel(self) -> str:
        return Path(os.path.relpath(os.path.abspath(self.path), os.path.abspath(self.root))).as_posix()


_SPECIAL_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                  (stat.S_ISBLK, "block device"))


def _special_kind(mode: int) -> str:
    return next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a regular file")


def _classify(path: Path, follow_symlinks: bool = True) -> tuple[str, str] | None:
    """Why ``path`` cannot be read as a file, from ``stat`` alone (nothing is opened); None if it can."""
    try:
        lst = os.lstat(path)
    except OSError as e:
        return "unreadable", e.strerror or str(e)
    if stat.S_ISLNK(lst.st_mode):
        if not follow_symlinks:
            return "unreadable", "symbolic link (not followed)"
        try:
            st = os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "unreadable", "symlink loop"
            if e.errno == errno.ENOENT:
                return "unreadable", f"dangling symlink to {os.readlink(path)}"
            return "unreadable", e.strerror or str(e)
    else:
        st = lst
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "unreadable", "a folder"
    return "special_file", _special_kind(st.st_mode)


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _walk(folder: Path) -> list[InputFile]:
    """Every file under ``folder`` sorted by relative path; symlinked folders are followed once.

    A folder that cannot be listed, and a link back to one of its own ancestors (a loop), are
    returned with their problem so that the reader counts them instead of skipping them unseen.
    """
    found: list[InputFile] = []
    visited: set[str] = set()

    def onerror(e: OSError) -> None:
        found.append(InputFile(Path(e.filename), folder, ("unreadable", f"cannot list folder: {e.strerror or e}")))

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=onerror):
        here = os.path.realpath(dirpath)
        visited.add(here)
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            target = os.path.realpath(full)
            if target not in visited:
                keep.append(d)
            elif os.path.islink(full) and (here + os.sep).startswith(target + os.sep):
                found.append(InputFile(Path(full), folder, ("unreadable", f"symlink loop: points back to {target}")))
        dirnames[:] = keep
        found.extend(InputFile(Path(dirpath) / name, folder, _classify(Path(dirpath) / name)) for name in filenames)
    return sorted(found, key=lambda f: f.path.relative_to(folder).as_posix())


def _hidden_ok(name: str, pattern: str, hidden: bool) -> bool:
    return hidden or not name.startswith(".") or pattern.startswith(".")


def _glob(root: Path, parts: tuple[str, ...], hidden: bool) -> Iterator[Path]:
    """Paths under ``root`` matching the pattern ``parts`` (pathlib semantics: ``**`` is zero or
    more folders and never enters a symlinked folder, so a link loop cannot repeat paths; other
    parts follow links). ``hidden=False`` keeps names starting with '.' out of wildcards, as the
    shell and :func:`glob.glob` do."""
    if not parts:
        yield root
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        stack = [root]
        while stack:
            d = stack.pop()
            yield from _glob(d, rest, hidden)
            try:
                with os.scandir(d) as it:
                    subdirs = [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)
                               and _hidden_ok(e.name, "", hidden)]
            except OSError:
                continue
            stack.extend(sorted(subdirs, reverse=True))
        return
    if not _GLOB_CHARS & set(head):
        child = root / head
        if rest and _is_dir(child) or not rest and os.path.lexists(child):
            yield from _glob(child, rest, hidden)
        return
    try:
        with os.scandir(root) as it:
            entries = sorted((e.name, e.path, not rest or e.is_dir()) for e in it)
    except OSError:
        return
    for name, path, ok in entries:
        if ok and fnmatch.fnmatchcase(name, head) and _hidden_ok(name, head, hidden):
            yield from _glob(Path(path), rest, hidden)


def _glob_root(pattern: str) -> tuple[Path, tuple[str, ...]]:
    """The fixed folder of a glob before its first wildcard (ids are relative to it), and the rest."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return (Path(*fixed) if fixed else Path(".")), tuple(parts[len(fixed):])


def match_files(root: str | Path, patterns: Iterable[str], *, hidden: bool = True,
                follow_symlinks: bool = True) -> list[Path]:
    """Regular files under ``root`` matching any of the relative glob ``patterns``, sorted; the
    lister's classification decides what is a file (``follow_symlinks=False`` drops links)."""
    root = Path(root)
    found = {p for pat in patterns for p in _glob(root, Path(pat).parts, hidden)}
    return sorted(p for p in found if _classify(p, follow_symlinks) is None)


def scan_inputs(inputs: Iterable[str | Path] | str | Path) -> list[InputFile]:
    """Files named by ``inputs`` (folders recursively, globs, single files) in a deterministic order.

    A path listed twice (e.g. a folder and a file inside it) appears once. Paths that cannot be
    read are kept, with their problem, so that reading reports them instead of dropping them.
    Several inputs: ids are relative to their common folder, so json/__init__.py and
    email/__init__.py stay distinct documents instead of colliding as __init__.py.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out: list[InputFile] = []
    seen: set[str] = set()

    def push(f: InputFile) -> None:
        key = os.path.abspath(f.path)  # not resolved: a symlinked alias is its own document
        if key not in seen:
            seen.add(key)
            out.append(f)

    for item in inputs:
        s = str(item)
        if _GLOB_CHARS & set(s) and not os.path.lexists(s):
            root, parts = _glob_root(s)
            matches = sorted(set(_glob(root, parts, hidden=False)))
            if not matches:
                push(InputFile(Path(s), root, ("unreadable", "no file matches this pattern")))
            for m in matches:
                for f in _walk(m) if _is_dir(m) else [InputFile(m, root, _classify(m))]:
                    push(InputFile(f.path, root, f.problem))
        elif _is_dir(Path(s)):
            for f in _walk(Path(s)):
                push(f)
        else:
            p = Path(s)
            push(InputFile(p, p.parent, _classify(p)))
    roots = {os.path.abspath(f.root) for f in out}
    if len(roots) > 1:
        common = Path(os.path.commonpath(sorted(roots)))
        out = [InputFile(f.path, common, f.problem) for f in out]
    return out


def list_files(inputs: Iterable[str | Path] | str | Path) -> list[Path]:
    """The paths of :func:`scan_inputs`, in reading order (``Document.file`` indexes this list)."""
    return [f.path for f in scan_inputs(inputs)]


def input_fingerprint(inputs: Iterable[str | Path]) -> list[dict]:
    """``{"path", "bytes"}`` per listed file (bytes None when it cannot be read): a later step
    compares it to see whether the inputs changed. Never opens or resolves a loop."""
    out = []
    for f in scan_inputs(inputs):
        size = None
        if f.problem is None:
            try:
                size = os.stat(f.path).st_size
            except OSError:
                pass
        out.append({"path": os.path.realpath(f.path), "bytes": size})
    return out


# --------------------------------------------------------------------------- opening


class _Checked(io.RawIOBase):
    """A decompressing reader whose every error (bad data, truncation) is :class:`CorruptInput`."""

    def __init__(self, inner, codec: str):
        self._inner, self._codec = inner, codec

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            data = self._inner.read1(len(b))  # one step: what decoded before a break is kept
        except CorruptInput:
            raise
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as e:
            raise CorruptInput(f"{self._codec}: {e}") from None
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


class _Inflate(io.RawIOBase):
    """Bounded streaming decompression over concatenated frames: each :meth:`_step` inflates a
    bounded amount, a stream that ends inside a frame is :class:`CorruptInput`, and an error met
    after some output is raised on the next call, so the records before a break survive."""

    codec = ""

    def __init__(self, fh):
        self._fh = fh
        self._out = bytearray()
        self._done = False
        self._error: CorruptInput | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._error is not None and not self._out:
            raise self._error
        want = _READ_CHUNK if size is None or size < 0 else size
        try:
            while len(self._out) < want and not self._done:
                self._step(want - len(self._out))
        except CorruptInput as e:
            if not self._out:
                raise
            self._error = e
        n = min(want, len(self._out))
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    read1 = read

    def _input(self, in_frame: bool) -> bytes:
        """The next compressed chunk; b"" (and done) at a clean end."""
        chunk = self._fh.read(_READ_CHUNK)
        if not chunk:
            if in_frame:
                raise CorruptInput(f"{self.codec}: stream ends inside a frame (truncated file)")
            self._done = True
        return chunk

    @abc.abstractmethod
    def _step(self, room: int) -> None:
        """Decode the next input into the output buffer, at most ``room`` bytes of it."""

    def close(self) -> None:
        self._fh.close()
        super().close()


class _Zstd(_Inflate):
    """zstd has no output bound per call, so input is fed ``_ZSTD_FEED`` bytes at a time (zstd
    inflates at most ~32 KiB per input byte)."""

    codec = "zstd"

    def __init__(self, fh):
        super().__init__(fh)
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._in = memoryview(b"")
        self._carry = b""  # input a finished frame left over: the start of the next frame
        self._in_frame = False

    def _step(self, room: int) -> None:
        if self._carry:
            feed, self._carry = self._carry, b""
        else:
            if not self._in:
                self._in = memoryview(self._input(self._in_frame))
                if self._done:
                    return
            feed, self._in = self._in[:_ZSTD_FEED], self._in[_ZSTD_FEED:]
        self._out += self._obj.decompress(feed)
        self._in_frame = True
        if self._obj.eof:
            self._carry = self._obj.unused_data
            self._obj = self._dctx.decompressobj()
            self._in_frame = False


class _Xz(_Inflate):
    """.xz / .lzma with a memory limit on the decoder (a header may ask for a 1.5 GiB dictionary)
    and ``max_length`` bounding each call's output."""

    codec = "xz"

    def __init__(self, fh):
        super().__init__(fh)
        self._obj = self._new()
        self._in_frame = False

    @staticmethod
    def _new():
        return lzma.LZMADecompressor(format=lzma.FORMAT_AUTO, memlimit=_XZ_MEMLIMIT)

    def _step(self, room: int) -> None:
        data = b""
        if self._obj.eof:
            data = self._obj.unused_data
            self._obj, self._in_frame = self._new(), False
        if not data and self._obj.needs_input:
            data = self._input(self._in_frame)
        if not self._in_frame:
            data = data.lstrip(b"\0")  # stream padding between concatenated streams
            if not data:
                return
        self._out += self._obj.decompress(data, max_length=room)
        self._in_frame = True


def _open_regular(path: Path):
    """Open for reading without ever blocking: O_NONBLOCK makes a FIFO swapped in after listing
    return at once, and fstat refuses anything that is not a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecialFile(_special_kind(st.st_mode))
        return io.BufferedReader(io.FileIO(fd, "rb", closefd=True), buffer_size=_READ_CHUNK)
    except BaseException:
        os.close(fd)
        raise


def _split_name(name: str) -> tuple[str | None, str]:
    """(codec named by the suffix, the name without it), lower-case."""
    low = name.lower()
    for suffix, codec in _CODEC_SUFFIXES.items():
        if low.endswith(suffix):
            return codec, low[: -len(suffix)]
    return None, low


def _unsupported_suffix(name: str) -> str | None:
    """A description of an unsupported format named by the extension(s), or None."""
    codec, inner = _split_name(name)
    ext = os.path.splitext(name.lower())[1]
    if ext in _UNSUPPORTED_SUFFIXES:
        return f"{ext}: {_UNSUPPORTED_SUFFIXES[ext]}"
    inner_ext = os.path.splitext(inner)[1]
    if codec and inner_ext in (*_UNSUPPORTED_SUFFIXES, ".parquet"):
        what = "compressed Parquet (Parquet compresses inside the file)" if inner_ext == ".parquet" \
            else f"compressed {_UNSUPPORTED_SUFFIXES[inner_ext]}"
        return f"{inner_ext}{name.lower()[len(inner):]}: {what}"
    return None


def _sniff_codec(head: bytes) -> str | None:
    for magic, codec in _MAGIC_CODECS:
        if head.startswith(magic):
            return codec
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bz2"
    return None


def _sniff_unsupported(head: bytes) -> str | None:
    for magic, what in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            return what
    if head[257:262] == b"ustar":
        return "tar archive"
    return None


def _decoder(raw, codec: str):
    if codec == "gzip":
        inner = gzip.GzipFile(fileobj=raw, mode="rb")
    elif codec == "bz2":
        inner = bz2.BZ2File(raw, mode="rb")
    elif codec == "xz":
        inner = _Xz(raw)
    else:
        inner = _Zstd(raw)
    return io.BufferedReader(_Checked(inner, codec), buffer_size=_READ_CHUNK)


def open_decoded(path: str | Path) -> tuple[io.BufferedReader, str | None]:
    """(readable stream of the file's decoded bytes, codec or None): the one way every step opens
    an input. The codec comes from the name (.gz, .zst, .bz2, .xz) or else from the magic bytes.
    Raises :class:`SpecialFile` for a non-regular file, :class:`UnsupportedFormat` for a format
    this reader does not read, :class:`CorruptInput` (while reading) for a broken stream."""
    path = Path(path)
    why = _unsupported_suffix(path.name)
    if why:
        raise UnsupportedFormat(f"{why} (supported: {_SUPPORTED})")
    raw = _open_regular(path)
    try:
        named, _ = _split_name(path.name)
        head = raw.peek(_SNIFF)[:_SNIFF]
        codec = named or _sniff_codec(head)
        if codec is None:
            what = _sniff_unsupported(head)
            if what:
                ext = os.path.splitext(path.name)[1] or "no extension"
                raise UnsupportedFormat(f"{ext}: content is a {what} (supported: {_SUPPORTED})")
            return raw, None
        stream = _decoder(raw, codec)
        what = _sniff_unsupported(stream.peek(_SNIFF)[:_SNIFF])
        if what:
            stream.close()
            raise UnsupportedFormat(f"{path.name}: decompressed content is a {what} (supported: {_SUPPORTED})")
        return stream, codec
    except BaseException:
        raw.close()
        raise


def read_span(path: str | Path, offset: int, nbytes: int) -> bytes:
    """Bytes ``[offset, offset + nbytes)`` of a file's decoded stream (a :class:`Document`'s
    ``offset``/``nbytes``): one seek for a plain file, a bounded skip through a compressed one."""
    stream, codec = open_decoded(path)
    with stream:
        if codec is None:
            stream.seek(offset)
        else:
            left = offset
            while left > 0:
                got = len(stream.read(min(left, _READ_CHUNK)))
                if not got:
                    break
                left -= got
        return stream.read(nbytes)


def read_texts_at(path: str | Path, kind: int, locations: Iterable[tuple[int, int, int]],
                  text_field: str = "text") -> Iterator[str]:
    """The texts of documents of one file, read again at their locations (``(offset, nbytes,
    record)`` of :class:`Document`), in ascending order and in one pass over the file: one
    ``pread`` per record of a plain file, a forward skip through a compressed stream, the row
    groups that hold the rows of a Parquet file. Raises :class:`InputFileError` when the file
    cannot be read or a record is no longer what the reader accepted (inputs changed)."""
    path = Path(path)
    if kind == KIND_PARQUET:
        yield from _parquet_texts_at(path, locations, text_field)
        return
    stream, codec = open_decoded(path)
    with stream:
        pos = 0
        for offset, length, _ in locations:
            offset, length = int(offset), int(length)
            if codec is None:
                raw = os.pread(stream.fileno(), length, offset)
            else:
                if offset < pos:
                    raise ValueError(f"{path}: locations must be read in ascending order")
                left = offset - pos
                while left > 0:
                    got = len(stream.read(min(left, _READ_CHUNK)))
                    if not got:
                        break
                    left -= got
                raw = stream.read(length)
                pos = offset + len(raw)
            if len(raw) != length:
                raise CorruptInput(f"{path}: {length} bytes expected at byte {offset}, got {len(raw)} (file changed?)")
            yield _text_of(raw, kind, text_field, path, offset)


def _text_of(raw: bytes, kind: int, text_field: str, path: Path, offset: int) -> str:
    try:
        if kind == KIND_TEXT:
            return raw.decode("utf-8")
        text = _field(json.loads(raw), text_field)
    except (ValueError, RecursionError, AttributeError) as e:
        raise CorruptInput(f"{path}: the record at byte {offset} no longer parses ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(text, str):
        raise CorruptInput(f"{path}: the record at byte {offset} has no text field {text_field!r} any more")
    return text


def _parquet_texts_at(path: Path, locations: Iterable[tuple[int, int, int]], text_field: str) -> Iterator[str]:
    with _open_regular(path) as fh:
        pf = pq.ParquetFile(fh)
        meta = pf.metadata
        names = pf.schema_arrow.names
        top = text_field if text_field in names else text_field.split(".")[0]
        starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        current, rows = -1, None
        for g, _, record in locations:
            g = int(g)
            if g != current:
                if not 0 <= g < meta.num_row_groups or top not in names:
                    raise CorruptInput(f"{path}: no row group {g} with column {top!r} (file changed?)")
                rows = pf.read_row_group(g, columns=[top]).column(top)
                current = g
            at = int(record) - int(starts[g])
            if not 0 <= at < len(rows):
                raise CorruptInput(f"{path}: no row {record} in row group {g} (file changed?)")
            text = _field({top: rows[at].as_py()}, text_field)
            if not isinstance(text, str):
                raise CorruptInput(f"{path}: row {record} has no text field {text_field!r} any more")
            yield text


# --------------------------------------------------------------------------- records


def _eol_mode(buf: bytearray, eof: bool) -> str | None:
    """'lf' or 'cr' from the first terminator of a file; None while it cannot be told yet."""
    lf = buf.find(b"\n")
    cr = buf.find(b"\r", 0, lf if lf >= 0 else len(buf))
    if cr < 0:
        return "lf" if lf >= 0 else None
    if cr + 1 < len(buf):
        return "lf" if buf[cr + 1] == 10 else "cr"
    return "cr" if eof else None  # a CR at the end of what was read: a LF may follow


def _next_eol(buf: bytearray, pos: int, cr_mode: bool) -> tuple[int, int] | None:
    """(start, end) of the next line terminator at or after ``pos``."""
    lf = buf.find(b"\n", pos)
    if cr_mode:
        cr = buf.find(b"\r", pos, lf if lf >= 0 else len(buf))
        if cr >= 0:
            return cr, cr + 2 if buf[cr + 1:cr + 2] == b"\n" else cr + 1
    return (lf, lf + 1) if lf >= 0 else None


def _lines(stream, max_line: int) -> Iterator[tuple[int, bytearray | None, int]]:
    """(offset, line, length) for each line of a byte stream, without its terminator.

    ``line`` is None for a line longer than ``max_line`` bytes: it is skipped in bounded reads,
    so the buffer never holds more than ``max_line`` plus one read. Terminators: LF (a CRLF's CR
    is dropped), or CR, CRLF and LF when the file's first line ends in a lone CR (old Mac files).
    """
    buf = bytearray()
    pos = base = dropped = 0
    mode: str | None = None
    eof = False
    while True:
        if mode is None:
            mode = _eol_mode(buf, eof)
        hit = _next_eol(buf, pos, mode == "cr") if mode is not None else None
        if hit is not None and (eof or hit[1] < len(buf) or buf[hit[0]:hit[1]] != b"\r"):  # a last CR may be a CRLF
            end = hit[0]
            if mode == "lf" and end > pos and buf[end - 1] == 13:
                end -= 1
            length = dropped + end - pos
            yield base + pos - dropped, (None if dropped or length > max_line else buf[pos:end]), length
            pos, dropped = hit[1], 0
            continue
        if eof:
            if pos < len(buf) or dropped:
                length = dropped + len(buf) - pos
                yield base + pos - dropped, (None if dropped or length > max_line else buf[pos:]), length
            return
        keep = pos
        if dropped or len(buf) - pos > max_line + 1:  # over-long (+1: a CRLF's CR): forget it but a last CR
            keep = len(buf) - (1 if buf and buf[-1] == 13 else 0)
            dropped += keep - pos
        del buf[:keep]
        base += keep
        pos = 0
        data = stream.read1(_READ_CHUNK)
        eof = not data
        buf += data


_MISSING = object()


def _field(rec: dict, path: str):
    """``rec[path]``, else the value at the dotted path through nested objects, else _MISSING."""
    if path in rec:
        return rec[path]
    node = rec
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


class _Reader:
    """State of one ``iter_documents`` call: option values and rejections."""

    def __init__(self, text_field, domain_field, id_field, max_doc_bytes, min_chars, rejections, keys=False):
        self.text_field = text_field
        self.domain_field = domain_field
        self.id_field = id_field
        self.max_doc_bytes = max_doc_bytes
        self.min_chars = min_chars
        self.rej = rejections
        self.keys = keys

    def check_text(self, text: str) -> tuple[str | None, bytes]:
        """(reason the text is unusable or None, its UTF-8 bytes)."""
        if len(text) > self.max_doc_bytes:
            return "too_large", b""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            return "invalid_utf8", b""
        if len(data) > self.max_doc_bytes:
            return "too_large", data
        stripped = len(text.strip())
        if stripped == 0:
            return "empty", data
        if stripped < self.min_chars:
            return "too_short", data
        return None, data

    def accept(self, doc: Document, where: str | None = None) -> bool:
        """Count ``doc`` under its reason (at ``where``, default ``source:record``) or keep it.
        Repeated ids and texts are judged later, a window of documents at a time (:func:`_unique`)."""
        reason, data = self.check_text(doc.text)
        if reason is not None:
            detail = {"invalid_utf8": "unpaired surrogate in the text",
                      "too_large": f"{max(len(doc.text), len(data))} bytes of text, over {self.max_doc_bytes}"}.get(reason, "")
            self.rej.add(reason, where or f"{doc.source}:{doc.record}", detail, record=doc.record)
            return False
        doc.size = len(data)
        if not doc.nbytes:
            doc.nbytes = doc.size
        if self.keys:
            doc.key = digest(data)
        return True

    def record(self, rec, doc: Document) -> Document | None:
        """Fill ``doc`` (id, text, domain) from a JSON object / Parquet row, or count why not."""
        if not isinstance(rec, dict):
            self.rej.add("malformed_json", f"{doc.source}:{doc.record}", f"expected a JSON object, got {type(rec).__name__}",
                         record=doc.record)
            return None
        text = _field(rec, self.text_field)
        if text is _MISSING or text is None:
            self.rej.add("missing_text", f"{doc.source}:{doc.record}", f"no field {self.text_field!r}", record=doc.record)
            return None
        if not isinstance(text, str):
            self.rej.add("non_string_text", f"{doc.source}:{doc.record}", f"field {self.text_field!r} is {type(text).__name__}",
                         record=doc.record)
            return None
        if self.id_field:
            raw_id = _field(rec, self.id_field)
            if raw_id is _MISSING or raw_id is None or raw_id == "" or isinstance(raw_id, (dict, list)):
                self.rej.add("missing_id", f"{doc.source}:{doc.record}", f"no usable field {self.id_field!r}",
                             record=doc.record)
                return None
            doc.id = str(raw_id)
        if self.domain_field:
            d = _field(rec, self.domain_field)
            if isinstance(d, (str, int)) and not isinstance(d, bool) and str(d):
                doc.domain = str(d)
        doc.text = text
        return doc if self.accept(doc) else None


def _dir_domain(rel: str) -> str | None:
    parts = Path(rel).parts
    return parts[0] if len(parts) > 1 else None


def _read_text(r: _Reader, stream, rel: str, index: int, source: str) -> Iterator[Document]:
    raw = stream.read(r.max_doc_bytes + 1)
    if len(raw) > r.max_doc_bytes:
        r.rej.add("too_large", source, f"more than {r.max_doc_bytes} bytes")
        return
    if b"\x00" in raw:
        r.rej.add("binary", source, "NUL bytes")
        return
    bom = 3 if raw.startswith(_BOM) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        r.rej.add("invalid_utf8", source, f"{e.reason} at byte {e.start + bom}")
        return
    doc = Document(id=rel, text=text, source=source, domain=None, file=index, offset=bom, nbytes=len(raw) - bom,
                   kind=KIND_TEXT)
    if r.accept(doc, source):
        yield doc


def _read_jsonl(r: _Reader, lines: Iterator, rel: str, index: int, source: str) -> Iterator[Document]:
    # A record may carry metadata and JSON escapes next to its text, so a line may be up to twice
    # the text limit; longer lines are skipped unparsed.
    n = records = 0
    for offset, line, length in lines:
        n += 1
        if line is None:
            records += 1
            r.rej.add("too_large", f"{source}:{n}", f"line of {length} bytes, over {2 * r.max_doc_bytes}", record=n)
            continue
        if line.startswith(_BOM):
            line, offset, length = line[3:], offset + 3, length - 3
        if not line or line.isspace():
            continue
        records += 1
        try:
            s = line.decode("utf-8")
        except UnicodeDecodeError as e:
            r.rej.add("invalid_utf8", f"{source}:{n}", f"{e.reason} at byte {e.start}", record=n)
            continue
        try:
            rec = json.loads(s)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, 5,000-digit integers, deep nesting
            r.rej.add("malformed_json", f"{source}:{n}", f"byte offset {offset}: {type(e).__name__}: {str(e)[:200]}",
                      record=n)
            continue
        doc = Document(id=f"{rel}:{n}", text="", source=source, domain=None, file=index, offset=offset,
                       nbytes=length, record=n)
        if r.record(rec, doc) is not None:
            yield doc
    if records == 0:
        r.rej.add("empty", source, "no records")


def _thrift_skip(buf: bytes, pos: int, ftype: int) -> int:
    """Position after one Thrift compact-protocol value of type ``ftype`` starting at ``pos``."""
    if ftype in (1, 2):  # bool in a field header
        return pos
    if ftype == 3:
        return pos + 1
    if ftype in (4, 5, 6):
        while buf[pos] & 0x80:
            pos += 1
        return pos + 1
    if ftype == 7:
        return pos + 8
    if ftype == 8:
        size, pos = _varint(buf, pos)
        return pos + size
    if ftype in (9, 10):
        head = buf[pos]
        pos += 1
        size, etype = head >> 4, head & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        for _ in range(size):
            pos = pos + 1 if etype in (1, 2) else _thrift_skip(buf, pos, etype)
        return pos
    if ftype == 11:
        size, pos = _varint(buf, pos)
        if size:
            kv = buf[pos]
            pos += 1
            for _ in range(size):
                pos = _thrift_skip(buf, pos, kv >> 4)
                pos = _thrift_skip(buf, pos, kv & 0x0F)
        return pos
    if ftype == 12:
        return _thrift_struct(buf, pos, {})[1]
    raise CorruptInput(f"Parquet page header: unknown thrift type {ftype}")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _thrift_struct(buf: bytes, pos: int, want: dict[int, int]) -> tuple[dict[int, int], int]:
    """Read a compact-protocol struct; return the i32 fields whose ids are in ``want``."""
    found: dict[int, int] = {}
    fid = 0
    while True:
        head = buf[pos]
        pos += 1
        if head == 0:
            return found, pos
        ftype, delta = head & 0x0F, head >> 4
        if delta:
            fid += delta
        else:
            z, pos = _varint(buf, pos)
            fid = (z >> 1) ^ -(z & 1)
        if fid in want and ftype == 5:
            z, pos = _varint(buf, pos)
            found[fid] = (z >> 1) ^ -(z & 1)
        else:
            pos = _thrift_skip(buf, pos, ftype)


def _largest_page(fh, col) -> int:
    """Largest uncompressed page of a Parquet column chunk, from its page headers (PageHeader
    fields 2 and 3: uncompressed and compressed size), read before pyarrow decodes anything."""
    pos = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    end = pos + col.total_compressed_size
    largest = 0
    while pos < end:
        for window in (1 << 10, 1 << 16, 1 << 20):
            fh.seek(pos)
            head = fh.read(window)
            try:
                fields, used = _thrift_struct(head, 0, {2: 0, 3: 0})
                break
            except IndexError:
                if len(head) < window:
                    raise CorruptInput(f"Parquet page header at byte {pos} is cut short") from None
        else:
            raise CorruptInput(f"Parquet page header at byte {pos} is longer than 1 MiB")
        if 2 not in fields or 3 not in fields or fields[3] < 0:
            raise CorruptInput(f"Parquet page header at byte {pos} has no page sizes")
        largest = max(largest, fields[2])
        pos += used + fields[3]
    return largest


def _read_parquet(r: _Reader, fh, rel: str, index: int, source: str) -> Iterator[Document]:
    pf = pq.ParquetFile(fh)
    meta = pf.metadata
    if meta.num_rows == 0:
        r.rej.add("empty", source, "no rows")
        return
    names = pf.schema_arrow.names
    cols = []
    for path in (r.text_field, r.domain_field, r.id_field):
        top = path if path in names else (path or "").split(".")[0]
        if path and top in names and top not in cols:
            cols.append(top)
    text_leaf = next((i for i in range(meta.num_columns) if meta.schema.column(i).path == r.text_field), None)
    page_limit = max(2 * r.max_doc_bytes, _PARQUET_PAGE_FLOOR)
    row = 0
    for g in range(meta.num_row_groups):
        rows = meta.row_group(g).num_rows
        if text_leaf is not None:
            col = meta.row_group(g).column(text_leaf)
            if col.total_uncompressed_size > page_limit and _largest_page(fh, col) > page_limit:
                r.rej.add("too_large", f"{source}:{row}", f"row group {g}: a page of field {r.text_field!r} "
                          f"inflates past {page_limit} bytes ({rows} rows not decoded)", count=rows, record=row)
                row += rows
                continue
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[g], columns=cols or None):
            for rec in batch.to_pylist():
                doc = Document(id=f"{rel}:{row}", text="", source=source, domain=None, file=index, offset=g,
                               record=row, kind=KIND_PARQUET)
                if r.record(rec, doc) is not None:
                    yield doc
                row += 1


def _looks_like_jsonl(stream) -> bool:
    """A ``.json`` file is JSON Lines when its first non-blank line is a one-line object (or runs
    past the sniffed window); a pretty-printed JSON file opens with a line that does not close."""
    head = stream.peek(_SNIFF).lstrip(_BOM).lstrip()
    first = re.split(rb"[\r\n]", head, maxsplit=1)
    return head.startswith(b"{") and (len(first) == 1 or first[0].rstrip().endswith(b"}"))


def file_format(path: Path, stream, codec: str | None) -> str:
    """``parquet``, ``jsonl`` or ``text``: how the reader reads the file open as ``stream``
    (:func:`open_decoded`), from its name and content."""
    name = _split_name(path.name)[1]
    if codec is None and stream.peek(4)[:4] == b"PAR1":
        return "parquet"
    if name.endswith(".parquet"):
        raise CorruptInput("no PAR1 magic: not a Parquet file")
    if name.endswith((".jsonl", ".ndjson")) or name.endswith(".json") and _looks_like_jsonl(stream):
        return "jsonl"
    return "text"


def _read_file(r: _Reader, path: Path, rel: str, index: int, source: str) -> Iterator[Document]:
    stream, codec = open_decoded(path)
    with stream:
        kind = file_format(path, stream, codec)
        if kind == "parquet":
            yield from _read_parquet(r, stream, rel, index, source)
        elif kind == "jsonl":
            yield from _read_jsonl(r, _lines(stream, 2 * r.max_doc_bytes), rel, index, source)
        elif codec is None and os.fstat(stream.fileno()).st_size > r.max_doc_bytes:
            r.rej.add("too_large", source, f"{os.fstat(stream.fileno()).st_size} bytes")
        else:
            yield from _read_text(r, stream, rel, index, source)


def ids_may_repeat(listing: list[InputFile], id_field: str | None) -> bool:
    """Whether two documents of ``listing`` can share an id. Ids from an ``id_field`` can; the
    reader's own ids (``rel`` of a text file, ``rel:n`` of a record) are unique, since listed
    files have distinct relative paths, unless a file is named like a record of another file
    (``a.jsonl:3`` next to ``a.jsonl``). When they cannot, no set of ids is kept."""
    if id_field:
        return True
    rels = {f.rel for f in listing}
    return any(m and m.group(1) in rels for m in (re.match(r"^(.+):\d+$", r) for r in rels))


_WINDOW_DOCS = 1024  # documents judged for repeated ids/texts at once
_WINDOW_BYTES = 16 << 20  # ... or fewer, when their texts add up to this


def _unique(docs: Iterator[Document], rej: Rejections, dedup: bool, dedup_content: bool,
            keys: bool) -> Iterator[Document]:
    """``docs`` minus later repeats of an id (``duplicate_id``) and, with ``dedup_content``, of a
    text (``duplicate_content``), judged a window at a time against :class:`KeySet` s of every
    earlier document: 16 bytes per id and per text instead of a Python object per document.

    Every document that passed the text checks adds its id and its text to the sets, whatever
    the verdict, so a verdict depends only on the documents before it in reading order (which is
    what lets runs over disjoint file ranges merge into the result of one run)."""
    ids, texts = KeySet(), KeySet()
    window: list[Document] = []
    size = 0

    def flush() -> Iterator[Document]:
        id_keys = [digest(d.id.encode("utf-8", "surrogatepass")) for d in window]
        no = np.zeros(len(window), dtype=bool)
        dup_id = ids.check_add(*split_keys(b"".join(id_keys))) if dedup else no
        dup_text = texts.check_add(*split_keys(b"".join(d.key for d in window))) if dedup_content else no
        for doc, key, di, dt in zip(window, id_keys, dup_id, dup_text):
            where = doc.source if doc.kind == KIND_TEXT else f"{doc.source}:{doc.record}"
            if di:
                rej.add("duplicate_id", where, f"id={doc.id}", record=doc.record, file=doc.file)
            elif dt:
                rej.add("duplicate_content", where, "same text as an earlier document", record=doc.record, file=doc.file)
            else:
                if keys:
                    doc.id_key = key
                yield doc
        window.clear()

    for doc in docs:
        window.append(doc)
        size += doc.size
        if len(window) >= _WINDOW_DOCS or size >= _WINDOW_BYTES:
            yield from flush()
            size = 0
    if window:
        yield from flush()


def iter_documents(inputs: list[str | Path], *, text_field: str = "text", domain_field: str | None = "domain",
                   id_field: str | None = None, max_doc_bytes: int = 8_000_000, min_chars: int = 1,
                   rejections: Rejections | None = None, progress: bool = False,
                   domain_from_dir: bool = False, dedup: bool = True, dedup_content: bool = False, keys: bool = False,
                   files: Iterable[int] | None = None, require_documents: bool = True) -> Iterator[Document]:
    """Yield every usable document of ``inputs``; count every unusable one in ``rejections``.

    Ids: a text file's path relative to its input root (the common folder of all inputs when there
    are several); ``"<relpath>:<n>"`` for records (JSONL
    1-based line number, Parquet 0-based row) unless ``id_field`` names a field. Later duplicates
    of an id are rejected (unless ``dedup`` is False), and with ``dedup_content`` later duplicates
    of a text (``duplicate_content``). ``keys`` fills ``Document.key`` / ``id_key``. ``domain_from_dir``
    sets the domain of records without one to the first directory component of the file's
    relative path. ``files`` reads only those indices of :func:`list_files` (a part of a sharded
    run; ids and positions stay those of the whole listing). Raises :class:`NoDocumentsError`
    (after reading everything) when nothing usable was found, unless ``require_documents`` is False.
    """
    rej = rejections if rejections is not None else Rejections()
    if max_doc_bytes < 1:
        raise ValueError(f"max_doc_bytes must be positive, got {max_doc_bytes}")
    r = _Reader(text_field, domain_field, id_field, max_doc_bytes, min_chars, rej, keys=keys or dedup_content)
    listing = scan_inputs(inputs)
    chosen = range(len(listing)) if files is None else sorted(set(files))
    yielded = 0
    dedup = dedup and ids_may_repeat(listing, id_field)
    for doc in _unique(_valid_documents(r, listing, chosen, domain_from_dir, progress), rej, dedup, dedup_content, keys):
        yielded += 1
        yield doc
    if yielded == 0 and require_documents:
        shown = ", ".join(str(i) for i in (inputs if not isinstance(inputs, (str, Path)) else [inputs]))
        raise NoDocumentsError(
            f"no usable document in {shown} ({len(listing)} files; rejected: {rej.summary()})")


def _valid_documents(r: _Reader, listing: list[InputFile], chosen: Iterable[int], domain_from_dir: bool,
                     progress: bool) -> Iterator[Document]:
    """Every document that passes the per-record checks, in reading order."""
    rej = r.rej
    bar = tqdm(chosen, desc="reading", unit="file", disable=not progress)
    for index in bar:
        f = listing[index]
        rej.file = index
        source = str(f.path)
        if f.problem is not None:
            rej.add(f.problem[0], source, f.problem[1])
            continue
        n = 0
        try:
            rel = f.rel
            for doc in _read_file(r, f.path, rel, index, source):
                if domain_from_dir and doc.domain is None:
                    doc.domain = _dir_domain(rel)
                n += 1
                yield doc
        except InputFileError as e:
            done = f" (after {n} documents)" if e.reason == "corrupt" else ""
            rej.add(e.reason, source, f"{e}{done}")
        except (pa.ArrowException, EOFError) as e:
            rej.add("corrupt", source, f"{type(e).__name__}: {e} (after {n} documents)")
        except OSError as e:
            rej.add("unreadable", source, f"{type(e).__name__}: {e.strerror or e}")
        except Exception as e:  # noqa: BLE001 - a library failing on odd bytes must cost the file, not the run
            rej.add("corrupt", source, f"{type(e).__name__}: {str(e)[:200]} (after {n} documents)")
    bar.close()
