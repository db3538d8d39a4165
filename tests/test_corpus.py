"""Corpus builder: cleaners, document cutting, atomic/complete builds and skipped packages (no network)."""
from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from data_select import corpus as C
from data_select.cli import main as cli_main

FIXTURE = Path(__file__).parent / "fixtures" / "corpus"


# ----------------------------------------------------------------------------- cleaners

def test_html_to_text_drops_navigation_and_keeps_structure():
    html = """<html><head><title>T</title><style>p {color: red}</style></head><body>
    <div class="related" role="navigation"><a href="x">Prev</a> | <a>Next</a></div>
    <ul class="docnav"><li>Home</li></ul>
    <h1>Heading &amp; more</h1><p>First   paragraph
    spans lines.</p><p>Second&nbsp;one.</p>
    <pre>def f(x):
    return x  # kept</pre>
    <ul><li>one</li><li><p>two</p></li></ul><script>var x = "<p>no</p>";</script>
    <p>Broken <b>markup</p></i> tail</body></html>"""
    text = C.html_to_text(html)
    assert "Prev" not in text and "Home" not in text and "color" not in text and "var x" not in text
    assert "T" not in text.split("\n")[0]
    assert text.startswith("Heading & more\n\nFirst paragraph spans lines.\n\nSecond one.")
    assert "def f(x):\n    return x  # kept" in text
    assert "- one\n\n- two" in text
    assert text.endswith("Broken markup\n\ntail")


def test_man_to_text_with_groff_and_fallback():
    page = '.\\" a comment\n.TH DEMO 1\n.SH NAME\ndemo \\- show \\fBthings\\fR\n.SH OPTIONS\n.TP\n.B \\-v\nbe verbose\n'
    rendered = C.man_to_text(page)
    assert "NAME" in rendered and "demo - show things" in rendered and "be verbose" in rendered
    assert "\\f" not in rendered and "comment" not in rendered
    stripped = C.man_to_text(page, groff=None)
    assert "NAME\n\ndemo - show things" in stripped and "-v\nbe verbose" in stripped
    assert "\\" not in stripped and ".TP" not in stripped
    assert C.man_to_text(".so man3/other.3\n") == ""


def _dictd(tmp_path: Path, entries: list[tuple[list[str], str]], *, extra_index: str = "") -> tuple[Path, Path]:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def b64(n: int) -> str:
        s = ""
        while True:
            s = alphabet[n % 64] + s
            n //= 64
            if n == 0:
                return s

    data, index = b"", []
    for heads, text in entries:
        raw = text.encode()
        index += [f"{h}\t{b64(len(data))}\t{b64(len(raw))}" for h in heads]
        data += raw
    dict_path = tmp_path / "demo.dict.dz"
    dict_path.write_bytes(gzip.compress(data))
    index_path = tmp_path / "demo.index"
    index_path.write_text("\n".join(sorted(index)) + "\n" + extra_index)
    return index_path, dict_path


def test_read_dictd_dedupes_shared_entries_and_groups(tmp_path):
    entries = [(["00-database-info"], "meta\n"), (["apple", "Apple"], "apple\n  a fruit\n"),
               (["banana"], "banana\n  a long fruit\n"), (["cherry"], "cherry\n  red\n")]
    index, dict_path = _dictd(tmp_path, entries)
    got = list(C.read_dictd(index, dict_path))
    assert [t.split("\n")[0] for _, t in got] == ["apple", "banana", "cherry"]  # file order, metadata out
    groups = list(C.group_entries(got, target_chars=30))
    assert len(groups) == 2 and groups[0][1].startswith("apple\n  a fruit\n\nbanana")
    assert groups[1][1] == "cherry\n  red"


def test_read_dictd_bad_index_names_the_file(tmp_path):
    index, dict_path = _dictd(tmp_path, [(["a"], "a\n")], extra_index="broken line without tabs\n")
    with pytest.raises(C.CorpusError, match=r"demo\.index:2"):
        list(C.read_dictd(index, dict_path))


def test_split_text_keeps_everything_in_bounded_pieces():
    paras = [f"paragraph {i} " + "word " * (i % 7 * 40) for i in range(200)]
    text = "\n\n".join(p.strip() for p in paras)
    pieces = C.split_text(text, target_chars=2000, max_chars=4000)
    assert len(pieces) > 5 and all(len(p) <= 4000 for p in pieces)
    assert sum(len(p) >= 1000 for p in pieces) >= len(pieces) - 1
    assert " ".join(" ".join(pieces).split()) == " ".join(text.split())
    assert C.split_text("short text\n\n\n\nend  ") == ["short text\n\nend"]
    one_line = "x" * 50 + " " + "y " * 5000
    assert all(len(p) <= 1000 for p in C.split_text(one_line, 500, 1000))


def test_fortunes_and_rfc_cleaning():
    assert C.split_fortunes("First quote.\n\t-- A\n%\nSecond\n%\n\n%\n") == ["First quote.\n\t-- A", "Second"]
    rfc = ("Network Working Group\n\n1. Intro\n\n   Text one.\n\n\nPostel                                [Page 1]\n\f\n"
           "RFC 791                   Internet Protocol          September 1981\n\n   Text two.\n")
    cleaned = C.clean_rfc(rfc)
    assert "[Page 1]" not in cleaned and "RFC 791" not in cleaned
    assert "Text one.\n\n   Text two." in cleaned


def test_bible_chapters_groups_verses(tmp_path):
    exe = tmp_path / "bin" / "usr" / "bin" / "bible"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nprintf 'Ge1:1 In the beginning.\\nGe1:2 And the earth.\\nGe2:1 Thus.\\n1Sa1:1 Now.\\n'\n")
    exe.chmod(0o755)
    (tmp_path / "data" / "usr" / "lib").mkdir(parents=True)
    chapters = list(C.bible_chapters([tmp_path / "bin", tmp_path / "data"], Counter()))
    assert chapters == [("Ge1", "Ge 1\n\n1 In the beginning.\n2 And the earth."), ("Ge2", "Ge 2\n\n1 Thus."), ("1Sa1", "1Sa 1\n\n1 Now.")]
    exe.write_text("#!/bin/sh\nexit 3\n")
    with pytest.raises(C.SourceError, match="exited 3"):
        list(C.bible_chapters([tmp_path / "bin", tmp_path / "data"], Counter()))


# ----------------------------------------------------------------------------- builds

PAGES = {f"usr/share/doc/site/p{i}.html": f"<h1>Page {i}</h1><p>{'Lorem ipsum dolor sit amet. ' * (20 + i)}</p>" for i in range(12)}
FAKE_ARCHIVE = {"pkg-html": PAGES, "pkg-text": {"usr/share/doc/t/readme.txt.gz": gzip.compress(("Plain text document. " * 60).encode())}}


def fake_fetch(calls: list[str]):
    def fetch(package: str, cache_dir: Path) -> Path:
        calls.append(package)
        if package not in FAKE_ARCHIVE:
            raise C.PackageUnavailable(package, "E: Unable to locate package " + package)
        root = cache_dir / "pkgs" / package
        for rel, content in FAKE_ARCHIVE[package].items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
        return root
    return fetch


FAKE_SOURCES = (
    C.Source("site", "web", C.text_files(("usr/share/doc/site/*.html",), C.html_to_text), ("pkg-html",)),
    C.Source("bogus", "books", C.text_files(("**/*.txt",)), ("no-such-package-xyz",)),
    C.Source("readme", "books", C.text_files(("usr/share/doc/t/*.txt.gz",)), ("pkg-text",)),
)


def _build(out, tmp_path, calls=None, **kw):
    kw.setdefault("sources", FAKE_SOURCES)
    return C.build_corpus(out, cache_dir=tmp_path / "cache", fetch=fake_fetch([] if calls is None else calls), progress=False, **kw)


def test_build_labels_domains_and_skips_missing_package(tmp_path):
    out = tmp_path / "corpus"
    m = _build(out, tmp_path, size="full")
    assert m["status"] == "complete" and json.loads((out / "corpus.json").read_text()) == m
    assert m["built_domains"] == ["web", "books"] and m["missing_domains"] == {}
    assert m["skipped_packages"] == {"no-such-package-xyz": "E: Unable to locate package no-such-package-xyz"}
    assert "no-such-package-xyz" in m["skipped_sources"]["bogus"]
    books = m["domains"]["books"]["sources"]
    assert books["bogus"] == {"status": "missing", "documents": 0, "bytes": 0,
                              "reason": "E: Unable to locate package no-such-package-xyz"}
    assert books["readme"]["status"] == "built" and books["readme"]["documents"] == 1
    assert m["domains"]["web"]["documents"] == 12 and m["domains"]["books"]["documents"] == 1
    records = list(C.read_corpus(out))
    assert {r["domain"] for r in records} == {"web", "books"}
    assert len({r["id"] for r in records}) == len(records) == 13
    assert all(r["id"].startswith(r["domain"] + "/") for r in records)
    assert m["total"]["bytes"] == sum(len(r["text"].encode()) for r in records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "corpus"]  # no temp dirs left


def test_build_is_deterministic_and_capped(tmp_path):
    a, b = _build(tmp_path / "a", tmp_path, size="full"), _build(tmp_path / "b", tmp_path, size="full")
    assert (tmp_path / "a" / "web.jsonl").read_bytes() == (tmp_path / "b" / "web.jsonl").read_bytes()
    assert a["domains"] == b["domains"]
    small = _build(tmp_path / "s", tmp_path, size="small", domain_cap=2000, domains=["web"])
    assert list(small["domains"]) == ["web"]
    assert 2000 <= small["domains"]["web"]["bytes"] < a["domains"]["web"]["bytes"]
    assert small["domains"]["web"]["documents"] < 12


def test_complete_corpus_is_a_cache_hit_and_other_params_rebuild(tmp_path):
    out = tmp_path / "corpus"
    first = _build(out, tmp_path, size="full")
    calls: list[str] = []
    assert _build(out, tmp_path, calls, size="full") == first and calls == []
    rebuilt = _build(out, tmp_path, calls, size="full", domains=["web"])
    assert calls == ["pkg-html"] and list(rebuilt["domains"]) == ["web"] and not (out / "books.jsonl").exists()


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path):
    def exploding(roots, skipped):
        yield "first", "A document that is long enough to be kept by the builder, twice over, really."
        raise RuntimeError("disk on fire")

    out = tmp_path / "corpus"
    sources = FAKE_SOURCES + (C.Source("bad", "web", exploding, ("pkg-text",)),)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _build(out, tmp_path, size="full", sources=sources)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_temp_dir_of_a_killed_build_is_cleaned_up(tmp_path):
    dead = tmp_path / ".corpus.tmp-999999999"  # beyond any pid_max: that build is gone
    dead.mkdir()
    (dead / "web.jsonl").write_text("half written\n")
    alive = tmp_path / f".corpus.tmp-{os.getppid()}"  # a running process: maybe a concurrent build
    alive.mkdir()
    _build(tmp_path / "corpus", tmp_path, size="full")
    assert not dead.exists() and alive.exists()


def test_partial_or_foreign_directories_are_refused(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "web.jsonl").write_text("{}\n")
    with pytest.raises(C.CorpusError, match="holds no corpus.json"):
        _build(out, tmp_path, size="full")
    (out / "corpus.json").write_text('{"status": "building"')
    with pytest.raises(C.CorpusError, match="unreadable corpus manifest"):
        _build(out, tmp_path, size="full")
    (out / "corpus.json").write_text('{"status": "building"}')
    with pytest.raises(C.CorpusError, match="no finished corpus.json"):
        list(C.read_corpus(out))
    assert _build(out, tmp_path, size="full")["status"] == "complete"  # an incomplete corpus is rebuilt
    with pytest.raises(C.CorpusError, match="unknown domain"):
        _build(tmp_path / "x", tmp_path, domains=["web", "poetry"])
    with pytest.raises(C.CorpusError, match="size must be"):
        _build(tmp_path / "x", tmp_path, size="huge")


def test_cli_reports_bad_domain_without_traceback(tmp_path, capsys):
    assert cli_main(["corpus", "--out", str(tmp_path / "c"), "--domains", "code,poetry", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown domain" in err and "poetry" in err and "Traceback" not in err


def test_sample_corpus_round_robins_sources(tmp_path):
    _build(tmp_path / "full", tmp_path, size="full")
    m = C.sample_corpus(tmp_path / "full", tmp_path / "sample", bytes_per_domain=1500, max_doc_chars=600)
    recs = list(C.read_corpus(tmp_path / "sample"))
    assert all(len(r["text"]) <= 600 for r in recs)
    assert m["domains"]["web"]["documents"] == len([r for r in recs if r["domain"] == "web"]) < 12


def test_apt_fetcher_without_apt_fails_once_per_build(tmp_path, monkeypatch):
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    fetcher = C.AptFetcher()
    with pytest.raises(C.PackageUnavailable, match="apt-get and dpkg-deb not on PATH"):
        fetcher("dict-jargon", tmp_path)
    monkeypatch.setattr(C.shutil, "which", lambda name: pytest.fail("apt setup retried"))
    with pytest.raises(C.PackageUnavailable, match="not on PATH"):
        fetcher("dict-foldoc", tmp_path)
    (tmp_path / "debs" / "junk_1.0_all.deb").write_bytes(b"not a deb")  # cached but truncated download
    monkeypatch.setattr(C.shutil, "which", lambda name: "/usr/bin/" + name)
    with pytest.raises(C.PackageUnavailable, match="dpkg-deb -x junk_1.0_all.deb failed"):
        fetcher("junk", tmp_path)
    assert not (tmp_path / "debs" / "junk_1.0_all.deb").exists() and not (tmp_path / "pkgs" / "junk").exists()


# ----------------------------------------------------------------------------- partial builds, the fallback

PARTIAL_SOURCES = FAKE_SOURCES + (
    C.Source("rfc", "standards", C.text_files(("**/*.txt",)), ("doc-rfc-nowhere",)),
    C.Source("empty", "standards", C.text_files(("nothing/*.txt",)), ("pkg-text",)),
)


def test_a_domain_without_text_makes_the_build_partial_and_says_why(tmp_path):
    out = tmp_path / "corpus"
    m = _build(out, tmp_path, size="full", sources=PARTIAL_SOURCES)
    assert m["status"] == "partial" and json.loads((out / "corpus.json").read_text()) == m
    assert m["built_domains"] == ["web", "books"]
    assert m["missing_domains"] == {"standards": "E: Unable to locate package doc-rfc-nowhere (rfc); no text found in it (empty)"}
    std = m["domains"]["standards"]
    assert std["status"] == "missing" and std["file"] is None and not (out / "standards.jsonl").exists()
    assert std["sources"]["empty"] == {"status": "missing", "documents": 0, "bytes": 0, "reason": "no text found in it"}
    assert {r["domain"] for r in C.read_corpus(out)} == {"web", "books"}
    table = C.summary_table(m).splitlines()
    assert any(row.startswith("standards") and "MISSING: E: Unable to locate package doc-rfc-nowhere" in row for row in table)
    mb = sum(len(r["text"].encode()) for r in C.read_corpus(out)) / 1e6
    assert table[-1] == f"corpus: PARTIAL, 2 of 3 domains built (web, books; {mb:.2f} MB), missing 1: standards"
    calls: list[str] = []
    _build(out, tmp_path, calls, size="full", sources=PARTIAL_SOURCES)
    assert "doc-rfc-nowhere" in calls  # a partial corpus is not a cache hit: the archive may answer now


def _hide_apt(monkeypatch) -> None:
    which = C.shutil.which
    monkeypatch.setattr(C.shutil, "which", lambda name, *a, **k: None if name in ("apt-get", "dpkg-deb") else which(name, *a, **k))


def _local_and_apt_sources(tmp_path: Path) -> tuple:
    """A source on disk (needs no package manager) and one that needs apt, as in the real table."""
    local = tmp_path / "local"
    local.mkdir()
    (local / "notes.txt").write_text("Text already on disk, which no package manager is needed for. " * 20)
    return (C.Source("on-disk", "code", C.text_files(("*.txt",)), local=lambda: local),
            C.Source("a-package", "books", C.text_files(("**/*.txt",)), ("some-package",)))


def test_cli_partial_build_exits_nonzero_unless_allowed_and_later_steps_say_partial(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(C, "SOURCES", _local_and_apt_sources(tmp_path))
    _hide_apt(monkeypatch)
    out = tmp_path / "c"
    args = ["corpus", "--out", str(out), "--cache", str(tmp_path / "cache")]
    assert cli_main(args) == 1
    printed, err = capsys.readouterr()
    assert "books" in printed and "MISSING: apt-get and dpkg-deb not on PATH, not a Debian-based machine (a-package)" in printed
    assert "corpus: PARTIAL, 1 of 2 domains built (code; 0.00 MB), missing 1: books" in printed
    assert "is a partial corpus" in err and "--allow-partial" in err and "Traceback" not in err
    assert json.loads((out / "corpus.json").read_text())["status"] == "partial"
    assert cli_main(args + ["--allow-partial"]) == 0
    capsys.readouterr()
    assert cli_main(["embed", str(out / "*.jsonl"), "--out", str(tmp_path / "f"), "--encoder", "hashing", "--no-progress"]) == 0
    assert f"warning: {out} is a partial corpus: PARTIAL, 1 of 2 domains built (code" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # one or the other
        cli_main(args + ["--allow-partial", "--fallback", str(FIXTURE)])
    assert usage.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_cli_without_apt_falls_back_to_the_committed_corpus_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(C, "SOURCES", _local_and_apt_sources(tmp_path))
    _hide_apt(monkeypatch)
    out = tmp_path / "c"
    args = ["corpus", "--out", str(out), "--cache", str(tmp_path / "cache"), "--fallback", str(FIXTURE)]
    assert cli_main(args) == 0
    files = sorted(FIXTURE.glob("*.jsonl"))
    docs = sum(len(f.read_text().splitlines()) for f in files)
    mb = sum(len(json.loads(line)["text"].encode()) for f in files for line in f.read_text().splitlines()) / 1e6
    assert capsys.readouterr().out.splitlines() == [
        f"corpus: the Debian corpus cannot be built here (1 of 2 domains missing; apt-get and dpkg-deb not on PATH, "
        f"not a Debian-based machine); using the {len(files)}-domain corpus {FIXTURE} instead ({docs} documents, "
        f"{mb:.2f} MB) -> {out}"]
    assert sorted(p.name for p in out.glob("*.jsonl")) == [f.name for f in files]
    assert all((out / f.name).read_bytes() == f.read_bytes() for f in files)
    m = json.loads((out / "corpus.json").read_text())
    assert m["status"] == "complete" and m["fallback"]["source"] == str(FIXTURE) and "apt-get" in m["fallback"]["reason"]
    stamp = (out / "code.jsonl").stat().st_mtime_ns
    assert cli_main(args) == 0 and (out / "code.jsonl").stat().st_mtime_ns == stamp  # kept: later steps' caches hold
    assert cli_main(args[:-1] + [str(tmp_path / "local")]) == 2  # a fallback that is no corpus
    assert "no complete corpus.json" in capsys.readouterr().err


def test_fallback_only_when_the_build_is_partial(tmp_path):
    kw = dict(cache_dir=tmp_path / "cache", fetch=fake_fetch([]), progress=False, size="full", fallback=FIXTURE)
    m = C.build_or_fallback(tmp_path / "a", sources=FAKE_SOURCES, **kw)
    assert m["status"] == "complete" and "fallback" not in m and m["built_domains"] == ["web", "books"]
    m = C.build_or_fallback(tmp_path / "b", sources=PARTIAL_SOURCES, **kw)
    assert m["fallback"]["reason"] == "1 of 3 domains missing; E: Unable to locate package doc-rfc-nowhere"
    assert set(m["domains"]) == {f.stem for f in FIXTURE.glob("*.jsonl")}


# ----------------------------------------------------------------------------- committed fixture

def test_fixture_corpus_is_real_labelled_and_small():
    manifest = json.loads((FIXTURE / "corpus.json").read_text())
    files = sorted(FIXTURE.glob("*.jsonl"))
    assert len(files) >= 6 and {f.stem for f in files} == set(manifest["domains"])
    assert sum(f.stat().st_size for f in FIXTURE.iterdir()) < 1_000_000
    ids = set()
    for f in files:
        recs = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
        assert len(recs) >= 8 and len({r["id"].split("/")[1] for r in recs}) >= 1
        for r in recs:
            assert set(r) == {"id", "text", "domain"} and r["domain"] == f.stem
            assert 80 <= len(r["text"]) <= 10_000 and r["text"] == r["text"].rstrip() and r["text"][0] != "\n"
            ids.add(r["id"])
    assert len(ids) == manifest["total"]["documents"]
    assert "README.md" in os.listdir(FIXTURE)
