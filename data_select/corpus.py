"""Multi-domain text corpus assembled from Debian packages: a local stand-in for SlimPajama's mix.

Nothing here needs a model or data hub: every text comes from a Debian package fetched with
``apt-get download`` (through a private apt configuration, so ``/etc/apt`` is never touched and
Debian's non-free RFC packages are reachable) and unpacked with ``dpkg-deb -x``, or from files
already on disk (the Python standard library, ``/usr/share/doc``). Each source is cleaned into
plain text (HTML, troff, dictd, fortune, RFC page layout), cut into documents of realistic size
and written as ``OUT/<domain>.jsonl`` records ``{"id", "text", "domain"}``. ``OUT/corpus.json``
is written last and the whole build happens in a temporary sibling directory renamed into place,
so a directory that has a ``corpus.json`` is always a finished build. It says what the build is:
``"status": "complete"`` (every requested domain has text) or ``"partial"`` (``missing_domains``
names the domains that got none, with the reason), and, per domain and per source, what was built
and why anything was not. Where the Debian corpus cannot be built (no ``apt-get``/``dpkg-deb``, no
archive) :func:`build_or_fallback` installs a complete fallback corpus (the committed 8-domain
sample) instead, and its ``corpus.json`` says so.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import itertools
import json
import lzma
import os
import re
import shutil
import subprocess
import sysconfig
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm.auto import tqdm

from data_select.errors import DataSelectError
from data_select.io import atomic_write_text
from data_select.sources import match_files

BUILDER_VERSION = "1"
CORPUS_FORMAT = "budgetlm-corpus/1"
SIZES = ("small", "full")
SMALL_DOMAIN_CAP = 768 * 1024  # bytes of cleaned text per domain in a small build
TARGET_CHARS = 8000  # long texts are cut into documents of about this size ...
MAX_CHARS = 16000  # ... once they exceed this
MIN_CHARS = 80  # shorter documents carry no signal and are counted as "short"
SMALL_PIECES_PER_ITEM = 3  # a small build keeps the first pieces of a long file, for variety within its cap


class CorpusError(DataSelectError):
    """A corpus build problem the user must fix; the message names the path or key."""


class PackageUnavailable(RuntimeError):
    """A package could not be fetched (unknown to the archive, network, dpkg-deb failure)."""

    def __init__(self, package: str, reason: str):
        super().__init__(f"{package}: {reason}")
        self.package = package
        self.reason = reason


class SourceError(RuntimeError):
    """A fetched source could not be turned into text (e.g. its helper binary does not run)."""


# --------------------------------------------------------------------------- text cleaners

_VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "param", "source", "track", "wbr"}
_SKIP_TAGS = {"script", "style", "noscript", "template", "head", "nav", "svg", "button", "form"}
_SKIP_CLASSES = {"sphinxsidebar", "related", "footer", "navheader", "navfooter", "headerlink", "breadcrumb", "toc-backref", "docnav"}
_SKIP_IDS = {"banner", "navigation", "sidebar"}
_PARA_TAGS = {"p", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "ul", "ol", "dl", "section", "article", "figure"}
_LINE_TAGS = {"div", "li", "tr", "dt", "dd", "caption", "header", "footer", "main", "aside", "address"}


class _HTMLText(HTMLParser):
    """Collects visible text: navigation and scripts dropped, blocks on their own lines, <pre> kept verbatim."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, opened a skip, opened a <pre>)
        self.skip = 0
        self.pre = 0
        self.newlines = 2  # trailing newlines already emitted (start of text counts as a break)
        self.bullet = False

    def _break(self, n: int) -> None:
        if self.newlines < n:
            self.parts.append("\n" * (n - self.newlines))
            self.newlines = n

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_TAGS:
            if not self.skip and tag in ("br", "hr"):
                self._break(1 if tag == "br" else 2)
            return
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        skipping = tag in _SKIP_TAGS or a.get("role") == "navigation" or a.get("id") in _SKIP_IDS or bool(classes & _SKIP_CLASSES)
        opens_pre = tag == "pre" and not self.skip and not skipping
        self.stack.append((tag, skipping, opens_pre))
        self.skip += skipping
        if self.skip:
            return
        if tag in _PARA_TAGS:
            self._break(2)
        elif tag in _LINE_TAGS:
            self._break(1)
        if tag == "li":
            self.bullet = True  # written before the item's first text, after any paragraph break
        elif tag in ("td", "th") and self.newlines == 0:
            self.parts.append(" ")
        self.pre += opens_pre

    def handle_endtag(self, tag: str) -> None:
        if all(t != tag for t, _, _ in self.stack):
            return  # stray end tag
        while self.stack:
            t, skipping, opened_pre = self.stack.pop()
            self.skip -= skipping
            self.pre -= opened_pre
            if not self.skip:
                if t in _PARA_TAGS:
                    self._break(2)
                elif t in _LINE_TAGS:
                    self._break(1)
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.skip or not data:
            return
        if self.pre:
            self.bullet = False
            self.parts.append(data)
            stripped = data.rstrip("\n")
            self.newlines = len(data) - len(stripped) if stripped else self.newlines + len(data)
            return
        text = re.sub(r"\s+", " ", data)
        if self.newlines or (self.parts and self.parts[-1].endswith(" ")):
            text = text.lstrip(" ")
        if text:
            if self.bullet:
                text, self.bullet = "- " + text, False
            self.parts.append(text)
            self.newlines = 0


def tidy_text(text: str) -> str:
    """Trailing spaces removed, runs of blank lines collapsed to one, CR/LF and form feeds normalised."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def html_to_text(html: str) -> str:
    """Visible text of an HTML page (headings and paragraphs separated by blank lines)."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return tidy_text("".join(parser.parts))


_TROFF_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_TROFF_SPECIAL = {
    "em": "--", "en": "-", "hy": "-", "mi": "-", "bu": "*", "co": "(C)", "rg": "(R)", "lq": '"', "rq": '"',
    "oq": "'", "cq": "'", "aq": "'", "dq": '"', "tm": "(TM)", "ga": "`", "ti": "~", "ha": "^", "rs": "\\",
    "dg": "+", "mu": "x", "<=": "<=", ">=": ">=", "!=": "!=", "->": "->", "<-": "<-", "sl": "/", "ba": "|",
}


def strip_troff(troff: str) -> str:
    """Plain text of a man page without groff: macros dropped or unwrapped, escapes resolved.

    A fallback for machines without groff; it does not fill or indent paragraphs.
    """
    out: list[str] = []
    for line in troff.split("\n"):
        if line.startswith(('.\\"', "'\\\"", '.\\#')) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            m = re.match(r"[.'](\S+)\s*(.*)", line)
            macro, arg = (m.group(1), m.group(2)) if m else ("", "")
            args = re.findall(r'"([^"]*)"|(\S+)', arg)
            words = [a or b for a, b in args]
            if macro in ("SH", "SS"):
                out += ["", " ".join(words).upper() if macro == "SH" else " ".join(words), ""]
            elif macro == "TH":
                out += [" ".join(words[:2]), ""]
            elif macro in ("B", "I", "SM", "SB"):
                out.append(" ".join(words))
            elif macro in ("BR", "RB", "BI", "IB", "IR", "RI"):
                out.append("".join(words))
            elif macro in ("PP", "P", "LP", "TP", "IP", "HP", "sp", "br"):
                out.append("")
                if macro == "IP" and words:
                    out.append(words[0])
            elif macro in ("UR", "MT") and words:
                out.append(words[0])
            continue  # other requests (.nf, .fi, .RS, .ad, .de ...) carry no text
        out.append(line)
    text = "\n".join(out)
    text = _TROFF_FONT.sub("", text)
    text = re.sub(r"\\\[(\w+)\]|\\\((..)", lambda m: _TROFF_SPECIAL.get(m.group(1) or m.group(2), ""), text)
    text = text.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "").replace("\\~", " ").replace("\\ ", " ")
    text = re.sub(r"\\[|^%:/,c]", "", text)
    return tidy_text(text)


def man_to_text(troff: str, *, groff: str | None = "auto") -> str:
    """Rendered text of a man page: ``groff -t -man -Tutf8`` when installed, else `strip_troff`.

    Returns "" for ``.so`` alias pages (they only point at another page).
    """
    if re.fullmatch(r"\s*\.so\s+\S+\s*", troff):
        return ""
    exe = shutil.which("groff") if groff == "auto" else groff
    if not exe:
        return strip_troff(troff)
    try:
        proc = subprocess.run([exe, "-t", "-man", "-Tutf8", "-P-cbou", "-rHY=0"],
                              input=troff.encode("utf-8"), capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return strip_troff(troff)
    if proc.returncode != 0 or not proc.stdout.strip():
        return strip_troff(troff)
    text = proc.stdout.decode("utf-8", errors="replace").replace("\u2010", "-").replace("\u2212", "-")
    return tidy_text(text)


_DICTD_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _dictd_number(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _DICTD_B64[c]
    return n


def read_dictd(index_path: Path, dict_path: Path) -> Iterator[tuple[str, str]]:
    """(headword, entry text) of a dictd dictionary in file order; headwords sharing one entry give it once.

    ``.dict.dz`` files are gzip-compatible (dictzip) and are read whole. The ``00-database-*``
    metadata entries are left out. A malformed index line raises CorpusError naming the file.
    """
    opener = gzip.open if dict_path.suffix in (".dz", ".gz") else open
    with opener(dict_path, "rb") as f:
        data = f.read()
    entries: dict[int, tuple[int, str]] = {}
    with open(index_path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                raise CorpusError(f"{index_path}:{lineno}: not a dictd index line: {line[:60]!r}")
            head, off, size = parts[0], parts[1], parts[2]
            if head.startswith(("00-database", "00database", "00-")):
                continue
            try:
                offset, length = _dictd_number(off), _dictd_number(size)
            except KeyError as e:
                raise CorpusError(f"{index_path}:{lineno}: bad base64 number {e}") from None
            entries.setdefault(offset, (length, head))
    for offset in sorted(entries):
        length, head = entries[offset]
        yield head, data[offset:offset + length].decode("utf-8", errors="replace")


def group_entries(entries: Iterable[tuple[str, str]], target_chars: int = 4000) -> Iterator[tuple[str, str]]:
    """Consecutive short entries joined (blank line between) into documents of about target_chars.

    Yields (first key of the group, text); a single entry is never cut.
    """
    keys: list[str] = []
    texts: list[str] = []
    size = 0
    for key, text in entries:
        text = tidy_text(text)
        if not text:
            continue
        keys.append(key)
        texts.append(text)
        size += len(text) + 2
        if size >= target_chars:
            yield keys[0], "\n\n".join(texts)
            keys, texts, size = [], [], 0
    if texts:
        yield keys[0], "\n\n".join(texts)


def split_fortunes(text: str) -> list[str]:
    """The quotes of a fortune(6) file: records separated by lines holding a single '%'."""
    return [q for q in (tidy_text(p) for p in re.split(r"^%\s*$", text, flags=re.M)) if q]


def clean_rfc(text: str) -> str:
    """RFC plain text without its print layout: page footers ``[Page N]`` and running headers dropped."""
    pages = text.replace("\r\n", "\n").split("\f")
    kept: list[str] = []
    for i, page in enumerate(pages):
        lines = page.split("\n")
        if i > 0:
            while lines and not lines[0].strip():
                lines.pop(0)
            if lines and re.match(r"\s*(RFC|Internet[- ]Draft)\s*\d*\b", lines[0]):
                lines.pop(0)
        kept.append("\n".join(line for line in lines if not re.search(r"\[Page \d+\]\s*$", line)))
    return tidy_text("\n".join(kept))


def split_text(text: str, target_chars: int = TARGET_CHARS, max_chars: int = MAX_CHARS) -> list[str]:
    """A text cut into documents: kept whole up to max_chars, else cut at paragraph (then line,
    then word) boundaries into pieces of about target_chars, none longer than max_chars."""
    text = tidy_text(text)
    if len(text) <= max_chars:
        return [text] if text else []
    units: list[str] = []
    for para in text.split("\n\n"):
        if len(para) <= max_chars:
            units.append(para)
            continue
        for line in para.split("\n"):
            while len(line) > max_chars:
                cut = line.rfind(" ", 0, max_chars)
                cut = cut if cut > 0 else max_chars
                units.append(line[:cut])
                line = line[cut:].lstrip(" ")
            units.append(line)
    docs: list[str] = []
    cur: list[str] = []
    size = 0
    for u in units:
        if cur and size + len(u) + 2 > max_chars:
            docs.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(u)
        size += len(u) + 2
        if size >= target_chars:
            docs.append("\n\n".join(cur))
            cur, size = [], 0
    if cur:
        docs.append("\n\n".join(cur))
    return [d for d in (tidy_text(d) for d in docs) if d]


def decode_bytes(raw: bytes) -> str | None:
    """UTF-8 text, else Latin-1 (old Debian docs); None for binary data (NUL bytes)."""
    if b"\x00" in raw[:65536]:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_text_file(path: Path) -> str | None:
    """Decoded content of a text file, transparently gunzipped; None if binary."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise SourceError(f"{path}: bad gzip data ({e})") from None
    return decode_bytes(raw)


# --------------------------------------------------------------------------- sources

Item = tuple[str, str]  # (id suffix, cleaned text); the builder cuts it into documents
Extractor = Callable[[list[Path], Counter], Iterator[Item]]


@dataclass(frozen=True)
class Source:
    """One labelled input: packages to fetch (or a local directory) and how to turn them into text."""

    name: str
    domain: str
    extract: Extractor  # (roots in `packages` order, skip counter) -> items
    packages: tuple[str, ...] = ()
    local: Callable[[], Path] | None = None  # for on-disk sources: the root directory
    small: bool = True  # part of the small build
    target_chars: int = TARGET_CHARS


def _spread(paths: Iterable[Path], root: Path) -> list[Path]:
    """Files in a fixed, content-independent order that mixes directories (hash of the relative path),
    so a capped build samples the whole tree instead of its alphabetical head."""
    return sorted(paths, key=lambda p: hashlib.sha1(p.relative_to(root).as_posix().encode()).hexdigest())


def _glob(root: Path, patterns: Iterable[str], exclude: Iterable[str] = ()) -> list[Path]:
    found = match_files(root, patterns, follow_symlinks=False)
    rx = [re.compile(x) for x in exclude]
    return _spread((p for p in found if not any(r.search(p.relative_to(root).as_posix()) for r in rx)), root)


def text_files(patterns: tuple[str, ...], clean: Callable[[str], str] | None = None,
               exclude: tuple[str, ...] = ()) -> Extractor:
    """Extractor over files matching glob patterns under one root, each cleaned by `clean`."""

    def extract(roots: list[Path], skipped: Counter) -> Iterator[Item]:
        root = roots[0]
        for path in _glob(root, patterns, exclude):
            try:
                text = read_text_file(path)
            except (SourceError, OSError):
                skipped["unreadable"] += 1
                continue
            if text is None:
                skipped["binary"] += 1
                continue
            text = clean(text) if clean else text
            if not text.strip():
                skipped["empty"] += 1
                continue
            yield path.relative_to(root).as_posix(), text

    return extract


def dictd_files(target_chars: int = 4000) -> Extractor:
    """Extractor over the dictd dictionaries of a package: groups of consecutive entries per document."""

    def extract(roots: list[Path], skipped: Counter) -> Iterator[Item]:
        for index in sorted(roots[0].glob("usr/share/dictd/*.index")):
            dz = index.with_suffix(".dict.dz")
            dict_path = dz if dz.exists() else index.with_suffix(".dict")
            if not dict_path.exists():
                skipped["missing_dict"] += 1
                continue
            for key, text in group_entries(read_dictd(index, dict_path), target_chars):
                yield f"{index.stem}/{key}", text

    return extract


def fortune_files(roots: list[Path], skipped: Counter) -> Iterator[Item]:
    """Fortune cookie files (no .dat indexes, no .u8 duplicates) as groups of ~1 KB of quotes."""
    root = roots[0]
    for path in (p for p in match_files(root, ["usr/share/games/fortunes/**/*"], follow_symlinks=False) if p.suffix not in (".dat", ".u8")):
        text = read_text_file(path)
        if text is None:
            skipped["binary"] += 1
            continue
        quotes = ((f"{i}", q) for i, q in enumerate(split_fortunes(text)))
        for key, group in group_entries(quotes, target_chars=1000):
            yield f"{path.relative_to(root).as_posix()}#{key}", group


_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def bible_chapters(roots: list[Path], skipped: Counter) -> Iterator[Item]:
    """King James Bible chapters, decoded by the package's own ``bible`` binary (its data is compressed)."""
    exe = roots[0] / "usr/bin/bible"
    data_dir = roots[1] / "usr/lib"
    try:
        proc = subprocess.run([str(exe), "-f", "-p", str(data_dir), "gen1:1-rev22:21"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=300)
    except OSError as e:
        raise SourceError(f"{exe}: cannot run ({e})") from None
    if proc.returncode != 0:
        raise SourceError(f"{exe} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[:200]}")
    chapter: tuple[str, str] | None = None
    verses: list[str] = []
    for line in proc.stdout.decode("utf-8", errors="replace").splitlines():
        m = _VERSE.match(line)
        if not m:
            if line.strip():
                skipped["bad_verse"] += 1
            continue
        key = (m.group(1), m.group(2))
        if key != chapter and verses:
            yield f"{chapter[0]}{chapter[1]}", f"{chapter[0]} {chapter[1]}\n\n" + "\n".join(verses)
            verses = []
        chapter = key
        verses.append(f"{m.group(3)} {m.group(4)}")
    if verses and chapter:
        yield f"{chapter[0]}{chapter[1]}", f"{chapter[0]} {chapter[1]}\n\n" + "\n".join(verses)


_LINUX_CODE = re.compile(r"^[^/]+/(kernel|mm|fs|net|lib|include|crypto|block|ipc|init|security|sound/core|drivers/(base|char|net/ethernet/intel|gpu/drm/i915))/.*\.[ch]$")


def linux_tarball(roots: list[Path], skipped: Counter) -> Iterator[Item]:
    """C sources of the core kernel subsystems, streamed out of the package's ``.tar.xz`` in tar order."""
    tarballs = sorted(roots[0].glob("usr/src/linux-source-*.tar.xz"))
    if not tarballs:
        raise SourceError(f"{roots[0]}: no usr/src/linux-source-*.tar.xz")
    try:
        with tarfile.open(tarballs[0], mode="r|xz") as tar:
            for member in tar:
                if not member.isfile() or not _LINUX_CODE.match(member.name):
                    continue
                f = tar.extractfile(member)
                text = decode_bytes(f.read()) if f else None
                if text is None:
                    skipped["binary"] += 1
                    continue
                yield member.name, text
    except (tarfile.TarError, lzma.LZMAError, EOFError) as e:
        raise SourceError(f"{tarballs[0]}: {e}") from None


def copyright_and_changelogs(roots: list[Path], skipped: Counter) -> Iterator[Item]:
    """Debian copyright files and changelogs (licences, release notes) of installed packages."""
    yield from text_files(("*/copyright", "*/changelog.Debian.gz", "*/changelog.gz", "*/NEWS.Debian.gz"))(roots, skipped)


def _python_stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _usr_share_doc() -> Path:
    return Path("/usr/share/doc")


_RFC = text_files(("usr/share/doc/RFC/**/rfc*.txt.gz", "usr/share/doc/RFC/**/rfc*.txt"), clean_rfc, exclude=(r"/rfc-[a-z]+\.txt",))
_MAN = text_files(("usr/share/man/man*/*.gz",), man_to_text)
_HTML = html_to_text
_DICT = dictd_files()

SOURCES: tuple[Source, ...] = (
    Source("python-stdlib", "code", text_files(("**/*.py",), exclude=(r"(^|/)(site-packages|__pycache__)/",)), local=_python_stdlib, target_chars=12000),
    Source("golang-1.19-src", "code", text_files(("usr/share/go-1.19/src/**/*.go",), exclude=(r"/testdata/",)), ("golang-1.19-src",), target_chars=12000),
    Source("linux-source-6.1", "code", linux_tarball, ("linux-source-6.1",), small=False, target_chars=12000),
    Source("manpages", "manuals", _MAN, ("manpages",)),
    Source("manpages-dev", "manuals", _MAN, ("manpages-dev",)),
    Source("perl-doc", "manuals", text_files(("usr/share/perl/*/pod/*.pod",), exclude=(r"faq",)), ("perl-doc",)),
    Source("git-doc", "manuals", text_files(("usr/share/doc/git-doc/*.txt",), exclude=(r"gitfaq",)), ("git-doc",)),
    Source("linux-doc-6.1", "manuals", text_files(("usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz", "usr/share/doc/linux-doc-6.1/Documentation/**/*.txt.gz")), ("linux-doc-6.1",), small=False),
    Source("bible-kjv", "books", bible_chapters, ("bible-kjv", "bible-kjv-text")),
    Source("debian-handbook", "books", text_files(("usr/share/doc/debian-handbook/html/en-US/*.html",), _HTML), ("debian-handbook",)),
    Source("abs-guide", "books", text_files(("usr/share/doc/abs-guide/html/*.html",), _HTML), ("abs-guide",)),
    Source("debian-reference-en", "books", text_files(("usr/share/debian-reference/*.en.html",), _HTML), ("debian-reference-en",)),
    Source("debian-history", "books", text_files(("usr/share/doc/debian-history/docs/*.en.txt.gz",)), ("debian-history",)),
    Source("gnu-standards", "books", text_files(("usr/share/doc/gnu-standards/*.text.gz",)), ("gnu-standards",)),
    Source("dict-devil", "books", _DICT, ("dict-devil",)),
    Source("dict-gcide", "encyclopedia", _DICT, ("dict-gcide",)),
    Source("dict-wn", "encyclopedia", _DICT, ("dict-wn",)),
    Source("dict-foldoc", "encyclopedia", _DICT, ("dict-foldoc",)),
    Source("dict-jargon", "encyclopedia", _DICT, ("dict-jargon",)),
    Source("dict-vera", "encyclopedia", _DICT, ("dict-vera",)),
    Source("dict-elements", "encyclopedia", _DICT, ("dict-elements",)),
    Source("doc-rfc-std", "standards", _RFC, ("doc-rfc-std",)),
    Source("doc-rfc-fyi-bcp", "standards", _RFC, ("doc-rfc-fyi-bcp",)),
    Source("doc-rfc-std-proposed", "standards", _RFC, ("doc-rfc-std-proposed",), small=False),
    Source("doc-rfc-informational", "standards", _RFC, ("doc-rfc-informational",), small=False),
    Source("doc-rfc-experimental", "standards", _RFC, ("doc-rfc-experimental",), small=False),
    Source("doc-rfc-old-std", "standards", _RFC, ("doc-rfc-old-std",), small=False),
    Source("doc-rfc-misc", "standards", _RFC, ("doc-rfc-misc",), small=False),
    Source("doc-rfc-others", "standards", _RFC, ("doc-rfc-others",), small=False),
    Source("postgresql-doc-15", "web", text_files(("usr/share/doc/postgresql-doc-15/html/*.html",), _HTML), ("postgresql-doc-15",)),
    Source("python3.11-doc", "web", text_files(("usr/share/doc/python3.11/html/**/*.html",), _HTML, exclude=(r"(^|/)(genindex|py-modindex|search)[^/]*\.html$", r"/faq/")), ("python3.11-doc",)),
    Source("fortunes", "qa", fortune_files, ("fortunes",)),
    Source("fortunes-min", "qa", fortune_files, ("fortunes-min",)),
    Source("perlfaq", "qa", text_files(("usr/share/perl/*/pod/perl*faq*.pod",)), ("perl-doc",)),
    Source("python-faq", "qa", text_files(("usr/share/doc/python3.11/html/faq/*.html",), _HTML, exclude=(r"index\.html$",)), ("python3.11-doc",)),
    Source("debian-faq", "qa", text_files(("usr/share/doc/debian/FAQ/debian-faq.en.txt.gz",)), ("debian-faq",)),
    Source("gitfaq", "qa", text_files(("usr/share/doc/git-doc/gitfaq.txt",)), ("git-doc",)),
    Source("debian-copyright-changelogs", "legal", copyright_and_changelogs, local=_usr_share_doc),
)

DOMAINS: tuple[str, ...] = tuple(dict.fromkeys(s.domain for s in SOURCES))


# --------------------------------------------------------------------------- fetching

Fetch = Callable[[str, Path], Path]  # (package, cache_dir) -> root of the unpacked package


def _archive_sources() -> list[tuple[str, str, str]]:
    """(URI, suite, Signed-By) of the Debian archive this machine's apt already uses."""
    found: list[tuple[str, str, str]] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, flags=re.M))
            if "deb" in fields.get("Types", "").split() and "debian" in fields.get("URIs", "") and "security" not in fields.get("URIs", ""):
                for suite in fields.get("Suites", "").split():
                    if "-" not in suite:
                        found.append((fields["URIs"].split()[0], suite, fields.get("Signed-By", "")))
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for path in lists:
        if path.exists():
            for m in re.finditer(r"^deb\s+(?:\[([^\]]*)\]\s+)?(\S*debian\S*)\s+(\S+)\s", path.read_text(errors="replace"), flags=re.M):
                if "security" not in m.group(2) and "-" not in m.group(3):
                    signed = re.search(r"signed-by=(\S+)", m.group(1) or "")
                    found.append((m.group(2), m.group(3), signed.group(1) if signed else ""))
    return list(dict.fromkeys(found))


def apt_unavailable() -> str | None:
    """Why this machine cannot fetch Debian packages (no apt-get/dpkg-deb on PATH, no Debian archive), or None."""
    missing = [exe for exe in ("apt-get", "dpkg-deb") if not shutil.which(exe)]
    if missing:
        return f"{' and '.join(missing)} not on PATH, not a Debian-based machine"
    if not _archive_sources():
        return "no Debian archive found in /etc/apt/sources.list(.d)"
    return None


class AptFetcher:
    """Fetches packages with ``apt-get download`` through a private apt configuration under cache_dir
    (main + non-free of the system's own archive), unpacks them with ``dpkg-deb -x``; both cached."""

    def __init__(self) -> None:
        self._options: list[str] | None = None
        self._failure: PackageUnavailable | None = None  # apt-get update is tried once per build

    def _apt_options(self, cache_dir: Path) -> list[str]:
        if self._options is not None:
            return self._options
        if self._failure is not None:
            raise self._failure
        try:
            self._options = self._update(cache_dir)
        except PackageUnavailable as e:
            self._failure = e
            raise
        except (OSError, subprocess.SubprocessError) as e:
            self._failure = PackageUnavailable("*", f"apt-get update failed: {e}")
            raise self._failure from None
        return self._options

    def _update(self, cache_dir: Path) -> list[str]:
        why = apt_unavailable()
        if why:
            raise PackageUnavailable("*", why)
        archives = _archive_sources()
        apt = cache_dir / "apt"
        for d in ("parts", "lists/partial", "cache/archives/partial"):
            (apt / d).mkdir(parents=True, exist_ok=True)
        stanzas = []
        for uri, suite, signed in archives:
            stanza = f"Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main non-free\n"
            stanzas.append(stanza + (f"Signed-By: {signed}\n" if signed else ""))
        for stale in (apt / "parts").iterdir():
            stale.unlink()
        atomic_write_text(apt / "parts" / "budgetlm.sources", "\n".join(stanzas))
        opts = ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={apt / 'parts'}",
                "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt / 'cache'}",
                "-o", "Debug::NoLocking=1"]
        if os.geteuid() == 0:
            opts += ["-o", "APT::Sandbox::User=root"]
        proc = subprocess.run(["apt-get", *opts, "-q", "update"], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise PackageUnavailable("*", f"apt-get update failed: {proc.stderr.strip()[-300:]}")
        return opts

    def __call__(self, package: str, cache_dir: Path) -> Path:
        debs = Path(cache_dir) / "debs"
        root = Path(cache_dir) / "pkgs" / package
        if root.is_dir():
            return root
        debs.mkdir(parents=True, exist_ok=True)
        deb = next(iter(sorted(debs.glob(f"{package}_*.deb"))), None)
        if deb is None:
            opts = self._apt_options(Path(cache_dir))
            try:
                proc = subprocess.run(["apt-get", *opts, "-q", "download", package], cwd=debs, capture_output=True, text=True, timeout=1800)
            except (OSError, subprocess.SubprocessError) as e:
                raise PackageUnavailable(package, f"apt-get download failed: {e}") from None
            deb = next(iter(sorted(debs.glob(f"{package}_*.deb"))), None)
            if proc.returncode != 0 or deb is None:
                msg = [line for line in proc.stderr.splitlines() if line.startswith("E:")] or [proc.stderr.strip()[-200:]]
                raise PackageUnavailable(package, "; ".join(msg) or f"apt-get download exited {proc.returncode}")
        tmp = root.with_name(f".{package}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True, timeout=1800)
            error = proc.stderr.strip()[-200:] if proc.returncode != 0 else ""
        except (OSError, subprocess.SubprocessError) as e:
            error = str(e)
        if error:
            shutil.rmtree(tmp, ignore_errors=True)
            deb.unlink(missing_ok=True)  # possibly a truncated download: fetch it again next time
            raise PackageUnavailable(package, f"dpkg-deb -x {deb.name} failed: {error}")
        (tmp / ".deb").write_text(deb.name)
        os.replace(tmp, root)
        return root


# --------------------------------------------------------------------------- the build


def default_cache_dir() -> Path:
    base = os.environ.get("BUDGETLM_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "budgetlm")
    return Path(base) / "corpus"


def _read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / "corpus.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: unreadable corpus manifest ({e}); remove the directory to rebuild") from None


@dataclass
class _DomainWriter:
    path: Path
    documents: int = 0
    bytes: int = 0
    sources: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.f = open(self.path, "w", encoding="utf-8")

    def write(self, doc_id: str, text: str, domain: str) -> int:
        n = len(text.encode("utf-8"))
        self.f.write(json.dumps({"id": doc_id, "text": text, "domain": domain}, ensure_ascii=False) + "\n")
        self.documents += 1
        self.bytes += n
        return n


def build_corpus(out_dir: str | Path, *, size: str = "small", cache_dir: str | Path | None = None,
                 domains: Iterable[str] | None = None, progress: bool = True,
                 fetch: Fetch | None = None, sources: Iterable[Source] | None = None,
                 domain_cap: int | None = None, keep_partial: bool = True) -> dict:
    """Build (or find already built) a labelled multi-domain corpus in out_dir; returns its corpus.json.

    size "small": every domain capped at `domain_cap` bytes (default 768 KiB, ~6 MB in all) from the
    sources marked small, at most SMALL_PIECES_PER_ITEM documents per file; "full": every source, no
    caps (>= 300 MB). A source that cannot be fetched or read is recorded with its reason and the
    build goes on; a domain left without text makes the corpus "partial" (``missing_domains``).
    A complete corpus with the same settings is reused; a partial one is rebuilt (the archive may be
    reachable now); with ``keep_partial=False`` a partial build is only returned, out_dir is left as
    it was. `fetch` and `sources` replace the apt fetcher and the source table (tests, other archives).
    """
    if size not in SIZES:
        raise CorpusError(f"size must be one of {SIZES}, got {size!r}")
    out_dir = Path(out_dir)
    table = tuple(sources) if sources is not None else SOURCES
    known = list(dict.fromkeys(s.domain for s in table))
    wanted = list(known) if domains is None else [d.strip() for d in domains if d.strip()]
    unknown = [d for d in wanted if d not in known]
    if unknown or not wanted:
        raise CorpusError(f"unknown domain(s) {unknown or wanted}; choose from {', '.join(known)}")
    wanted = [d for d in known if d in wanted]
    cap = (domain_cap or SMALL_DOMAIN_CAP) if size == "small" else None

    existing = _check_out_dir(out_dir)
    params = {"size": size, "selected_domains": wanted, "domain_cap": cap, "builder_version": BUILDER_VERSION}
    if existing is not None and existing.get("status") == "complete" and all(existing.get(k) == v for k, v in params.items()):
        return existing

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    fetch = fetch or AptFetcher()
    start = time.time()

    def write(tmp: Path) -> dict:
        manifest = _build_into(tmp, table, wanted, size, cap, cache, fetch, progress)
        manifest.update(params, format=CORPUS_FORMAT, elapsed_s=round(time.time() - start, 1))
        return manifest

    return _publish(out_dir, write, keep=lambda m: keep_partial or m["status"] == "complete")


def _check_out_dir(out_dir: Path) -> dict | None:
    """The corpus.json already in out_dir (None if there is none); a foreign non-empty directory is refused."""
    existing = _read_manifest(out_dir)
    if existing is None and out_dir.exists() and any(out_dir.iterdir()):
        raise CorpusError(f"{out_dir} exists, is not empty and holds no corpus.json; refusing to overwrite it")
    return existing


def _publish(out_dir: Path, write: Callable[[Path], dict], keep: Callable[[dict], bool] = lambda m: True) -> dict:
    """Run ``write(tmp)`` in a temporary sibling of out_dir, write the corpus.json it returns last,
    then rename the whole directory into place; a failure, or a result that ``keep`` rejects, leaves
    out_dir as it was."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = write(tmp)
        if not keep(manifest):
            shutil.rmtree(tmp, ignore_errors=True)
            return manifest
        atomic_write_text(tmp / "corpus.json", json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _sha256_files(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def use_fallback(out_dir: str | Path, fallback: str | Path, reason: str) -> dict:
    """Install the complete corpus in `fallback` as out_dir (atomically), its corpus.json recording
    ``"fallback": {"source", "reason", "sha256"}``; an identical copy already there is kept as is."""
    out_dir, fallback = Path(out_dir), Path(fallback)
    source = _read_manifest(fallback)
    if source is None or source.get("status") != "complete":
        raise CorpusError(f"fallback {fallback}: no complete corpus.json there")
    files = [fallback / info["file"] for info in source["domains"].values() if info.get("file")]
    if missing := [str(f) for f in files if not f.is_file()]:
        raise CorpusError(f"fallback {fallback}: corpus.json lists files that are missing: {', '.join(missing)}")
    digest = _sha256_files([fallback / "corpus.json", *files])
    existing = _check_out_dir(out_dir)
    if existing is not None and existing.get("fallback", {}).get("sha256") == digest:
        return existing

    def write(tmp: Path) -> dict:
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        return {**source, "fallback": {"source": str(fallback), "reason": reason, "sha256": digest}}

    return _publish(out_dir, write)


def build_or_fallback(out_dir: str | Path, *, fallback: str | Path, **build_kw) -> dict:
    """The Debian corpus where it can be built completely, else the complete corpus in `fallback`.

    The build is always tried (its on-disk sources need no package manager, and a machine with a
    reachable archive builds every domain); when it ends partial, `fallback` is installed in its
    place and ``corpus.json["fallback"]["reason"]`` says why, naming the most common cause.
    """
    manifest = build_corpus(out_dir, keep_partial=False, **build_kw)
    if manifest["status"] == "complete":
        return manifest
    missing = manifest["missing_domains"]
    causes = Counter(src["reason"] for d in missing for src in manifest["domains"][d]["sources"].values())
    cause = causes.most_common(1)[0][0] if causes else next(iter(missing.values()))
    reason = f"{len(missing)} of {len(manifest['domains'])} domains missing; {cause}"
    return use_fallback(out_dir, fallback, reason)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temp_dirs(out_dir: Path) -> None:
    """Temp dirs of killed builds (their pid no longer runs) are removed; a live concurrent build's is kept."""
    for d in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _build_into(tmp: Path, table: tuple[Source, ...], wanted: list[str], size: str, cap: int | None,
                cache: Path, fetch: Fetch, progress: bool) -> dict:
    packages: dict[str, str] = {}
    skipped_packages: dict[str, str] = {}
    skipped_files: Counter = Counter()
    domains_out: dict[str, dict] = {}
    for domain in wanted:
        todo = [s for s in table if s.domain == domain and (size == "full" or s.small)]
        writer = _DomainWriter(tmp / f"{domain}.jsonl")
        with writer.f, tqdm(total=cap, unit="B", unit_scale=True, desc=f"{domain:>12}", disable=not progress) as bar:
            for i, src in enumerate(todo):
                roots, reason = _source_roots(src, cache, fetch, packages, skipped_packages)
                stats = {"status": "missing", "documents": 0, "bytes": 0}
                writer.sources[src.name] = stats
                if roots is None:
                    stats["reason"] = reason
                    continue
                budget = None if cap is None else (cap - writer.bytes) // (len(todo) - i)
                bar.set_postfix_str(src.name)
                try:
                    for key, text in src.extract(roots, skipped_files):
                        pieces = split_text(text, src.target_chars, max(src.target_chars * 2, MAX_CHARS))
                        for j, piece in enumerate(pieces[:SMALL_PIECES_PER_ITEM] if cap is not None else pieces):
                            if len(piece) < MIN_CHARS:
                                skipped_files["short"] += 1
                                continue
                            n = writer.write(f"{domain}/{src.name}/{key}#{j}", piece, domain)
                            stats["documents"] += 1
                            stats["bytes"] += n
                            bar.update(n)
                        if budget is not None and stats["bytes"] >= budget:
                            break
                except SourceError as e:
                    stats["reason"] = str(e)
                if stats["documents"]:
                    stats["status"] = "built"
                else:
                    stats.setdefault("reason", "no text found in it")
        info = {"status": "built", "file": writer.path.name, "documents": writer.documents, "bytes": writer.bytes,
                "sources": writer.sources}
        if not writer.documents:
            writer.path.unlink()
            grouped: dict[str, list[str]] = {}
            for name, st in writer.sources.items():
                grouped.setdefault(st["reason"], []).append(name)
            info = {**info, "status": "missing", "file": None,
                    "reason": "; ".join(f"{why} ({', '.join(names)})" for why, names in grouped.items())}
        domains_out[domain] = info
    total = {"documents": sum(d["documents"] for d in domains_out.values()), "bytes": sum(d["bytes"] for d in domains_out.values())}
    missing = {d: info["reason"] for d, info in domains_out.items() if info["status"] == "missing"}
    skipped_sources = {name: st["reason"] for d in domains_out.values() for name, st in d["sources"].items() if "reason" in st}
    return {"status": "partial" if missing else "complete",
            "built_domains": [d for d in domains_out if d not in missing], "missing_domains": missing,
            "domains": domains_out, "total": total, "packages": packages, "skipped_packages": skipped_packages,
            "skipped_sources": skipped_sources, "skipped_files": dict(sorted(skipped_files.items()))}


def _source_roots(src: Source, cache: Path, fetch: Fetch, packages: dict, skipped: dict) -> tuple[list[Path] | None, str]:
    """Root directories of a source, or (None, why) if a package is unavailable (recorded in `skipped`)."""
    if src.local is not None:
        root = src.local()
        if not root.is_dir():
            return None, f"local directory {root} not found"
        packages[src.name] = f"local:{root}"
        return [root], ""
    roots = []
    for pkg in src.packages:
        if pkg not in skipped:
            try:
                root = Path(fetch(pkg, cache))
            except PackageUnavailable as e:
                skipped[pkg] = e.reason
        if pkg in skipped:
            return None, skipped[pkg]
        deb = root / ".deb"
        packages[pkg] = deb.read_text().strip() if deb.exists() else str(root)
        roots.append(root)
    return roots, ""


def read_corpus(corpus_dir: str | Path, domains: Iterable[str] | None = None) -> Iterator[dict]:
    """Records of a finished (complete or partial) corpus, domain by domain; CorpusError if it is not finished."""
    corpus_dir = Path(corpus_dir)
    manifest = _read_manifest(corpus_dir)
    if manifest is None or manifest.get("status") not in ("complete", "partial"):
        raise CorpusError(f"{corpus_dir}: no finished corpus.json (build it with `data-select corpus --out {corpus_dir}`)")
    for domain, info in manifest["domains"].items():
        if info.get("file") and (domains is None or domain in domains):
            with open(corpus_dir / info["file"], encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)


def sample_corpus(corpus_dir: str | Path, out_dir: str | Path, *, bytes_per_domain: int = 56_000,
                  max_doc_chars: int = 6_000) -> dict:
    """A small corpus drawn from a built one (test fixtures, quick demos): per domain, documents of at
    most max_doc_chars (longer ones cut to their first paragraph-aligned piece) taken round-robin over
    its sources (first pieces of every file before second pieces) until bytes_per_domain."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    source = _read_manifest(corpus_dir) or {}
    if source.get("status") != "complete":
        raise CorpusError(f"{corpus_dir}: no complete corpus.json to sample from")
    out_dir.mkdir(parents=True, exist_ok=True)
    domains_out = {}
    for domain in source["domains"]:
        by_source: dict[str, list[dict]] = {}
        for rec in read_corpus(corpus_dir, [domain]):
            pieces = split_text(rec["text"], max_doc_chars // 2, max_doc_chars)
            if pieces and len(pieces[0]) >= MIN_CHARS:
                by_source.setdefault(rec["id"].split("/")[1], []).append({**rec, "text": pieces[0]})
        chunk_index = lambda rec: int(rec["id"].rsplit("#", 1)[-1]) if rec["id"].rsplit("#", 1)[-1].isdigit() else 0  # noqa: E731
        picked, size, queues = [], 0, [iter(sorted(v, key=chunk_index)) for v in by_source.values()]
        while queues and size < bytes_per_domain:
            for q in list(queues):
                rec = next(q, None)
                if rec is None:
                    queues.remove(q)
                    continue
                picked.append(rec)
                size += len(rec["text"].encode("utf-8"))
                if size >= bytes_per_domain:
                    break
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked)
        atomic_write_text(out_dir / f"{domain}.jsonl", lines)
        counts = Counter(r["id"].split("/")[1] for r in picked)
        domains_out[domain] = {"file": f"{domain}.jsonl", "documents": len(picked), "bytes": size,
                               "sources": {k: {"documents": v} for k, v in counts.items()}}
    total = {"documents": sum(d["documents"] for d in domains_out.values()), "bytes": sum(d["bytes"] for d in domains_out.values())}
    manifest = {"format": CORPUS_FORMAT, "status": "complete", "size": "sample", "sampled_from": source.get("size"),
                "builder_version": BUILDER_VERSION, "domains": domains_out, "total": total, "packages": source.get("packages", {})}
    atomic_write_text(out_dir / "corpus.json", json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def summary_table(manifest: dict) -> str:
    """Per-domain documents / MB of a corpus.json, what is missing and why, and one status line."""
    rows = [f"{'domain':<14}{'docs':>10}{'MB':>10}  sources"]
    for domain, info in manifest["domains"].items():
        if info.get("status") == "missing":
            rows.append(f"{domain:<14}{'-':>10}{'-':>10}  MISSING: {info['reason']}")
            continue
        used = ", ".join(name for name, s in info["sources"].items() if s.get("documents"))
        rows.append(f"{domain:<14}{info['documents']:>10}{info['bytes'] / 1e6:>10.2f}  {used}")
        lost = {name: s["reason"] for name, s in info["sources"].items() if s.get("status") == "missing"}
        if lost:
            rows.append(f"{'':<14}{'':>20}  not built: " + "; ".join(f"{n} ({why})" for n, why in lost.items()))
    t = manifest["total"]
    rows.append(f"{'total':<14}{t['documents']:>10}{t['bytes'] / 1e6:>10.2f}")
    rows.append(f"corpus: {status_line(manifest)}")
    return "\n".join(rows)


def status_line(manifest: dict) -> str:
    """What a corpus is, in one line: complete, partial (domains built / missing, bytes) or a fallback."""
    mb = manifest["total"]["bytes"] / 1e6
    n = len(manifest["domains"])
    if "fallback" in manifest:
        fb = manifest["fallback"]
        return (f"the Debian corpus cannot be built here ({fb['reason']}); using the {n}-domain corpus "
                f"{fb['source']} instead ({manifest['total']['documents']:,} documents, {mb:.2f} MB)")
    if manifest.get("status") == "partial":
        built, missing = manifest["built_domains"], list(manifest["missing_domains"])
        return (f"PARTIAL, {len(built)} of {n} domains built ({', '.join(built) or 'none'}; {mb:.2f} MB), "
                f"missing {len(missing)}: {', '.join(missing)}")
    return f"complete, {n} of {n} domains ({mb:.2f} MB)"


def partial_corpus_notes(inputs: Iterable[str | Path]) -> list[str]:
    """One line for each partial corpus among the inputs: a corpus folder, a file in one, or a glob
    whose fixed folder part is one (``work/corpus/*.jsonl``). Constant work per input, however many
    files a glob matches."""
    folders: dict[Path, None] = {}
    for inp in inputs:
        path = Path(inp)
        if glob.has_magic(str(inp)):
            fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), path.parts))
            path = Path(*fixed) if fixed else Path(".")
        folders[path if path.is_dir() else path.parent] = None
    notes = []
    for folder in folders:
        try:
            manifest = _read_manifest(folder)
        except CorpusError:
            continue
        if isinstance(manifest, dict) and manifest.get("format") == CORPUS_FORMAT and manifest.get("status") == "partial":
            notes.append(f"{folder} is a partial corpus: {status_line(manifest)} (see {folder / 'corpus.json'})")
    return notes
