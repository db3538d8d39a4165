"""data_select.sources: every input document is yielded or rejected with a reason, never lost."""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import random
import re
import signal
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data_select import sources
from data_select.errors import DataSelectError, NoDocumentsError
from data_select.sources import Rejections, iter_documents, list_files

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def stdlib_text(name: str, limit: int = 3000) -> str:
    return (STDLIB / name).read_text(encoding="utf-8")[:limit]


def write_jsonl(path: Path, records: list, opener=open) -> None:
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def write_zst(path: Path, data: bytes) -> None:
    path.write_bytes(zstandard.ZstdCompressor().compress(data))


def test_reads_every_format_with_ids_and_domains(tmp_path):
    root = tmp_path / "in"
    (root / "code").mkdir(parents=True)
    (root / "code" / "textwrap.py").write_text(stdlib_text("textwrap.py"))
    (root / "notes.md").write_text("# Notes\n\nplain markdown, no extension-based filtering\n")
    (root / "blob.weird").write_text("text in a file with an unknown extension\n")
    (root / "story.txt.gz").write_bytes(gzip.compress("a gzipped text document\n".encode()))
    write_jsonl(root / "a.jsonl", [{"text": "first record", "domain": "web"}, {"text": "second", "domain": "books"}])
    with gzip.open(root / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "gz record", "domain": "web"}) + "\n")
    with gzip.open(root / "c.json.gz", "wt") as f:
        f.write(json.dumps({"text": "json.gz is JSONL", "domain": 7}) + "\n")
    write_zst(root / "d.jsonl.zst", b"".join(json.dumps({"text": f"zst {i}"}).encode() + b"\n" for i in range(3)))
    pq.write_table(pa.table({"text": ["pq zero", "pq one"], "domain": ["code", None]}), root / "e.parquet")

    rej = Rejections()
    docs = list(iter_documents([root], rejections=rej))
    assert rej.total == 0
    by_id = {d.id: d for d in docs}
    assert len(by_id) == len(docs) == 13
    assert by_id["code/textwrap.py"].text == stdlib_text("textwrap.py")
    assert by_id["code/textwrap.py"].domain is None
    assert by_id["story.txt.gz"].text == "a gzipped text document\n"
    assert by_id["blob.weird"].source == str(root / "blob.weird")
    assert (by_id["a.jsonl:1"].text, by_id["a.jsonl:1"].domain) == ("first record", "web")
    assert by_id["a.jsonl:2"].domain == "books"
    assert by_id["b.jsonl.gz:1"].text == "gz record"
    assert by_id["c.json.gz:1"].domain == "7"
    assert [by_id[f"d.jsonl.zst:{i}"].text for i in (1, 2, 3)] == ["zst 0", "zst 1", "zst 2"]
    assert (by_id["e.parquet:0"].domain, by_id["e.parquet:1"].domain) == ("code", None)
    assert [d.id for d in docs] == [d.id for d in iter_documents([root])], "order must be deterministic"


def test_bad_inputs_are_counted_by_reason_and_add_up(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    limit = 2000
    (root / "good.txt").write_text(stdlib_text("string.py", 1500))
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.txt").write_text("  \n\t\n")
    (root / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "latin1.txt").write_bytes("café".encode("latin-1"))
    (root / "huge.txt").write_text("x" * (limit + 1))
    (root / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")
    (root / "broken.txt.gz").write_bytes(b"this is not gzip data at all")
    (root / "broken.parquet").write_bytes(b"PAR1 definitely not parquet PAR1")
    # cut inside the first block, so nothing decodes before the break
    (root / "cut.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "ok"}\n' * 50)[:12])
    (root / "cut.jsonl.gz").write_bytes(gzip.compress(b'{"text": "gz ok"}\n' * 2000)[:15])
    write_jsonl(root / "records.jsonl", [
        {"text": "valid one", "id": "r1"},
        "{not json",
        {"body": "no text field", "id": "r2"},
        {"text": 42, "id": "r3"},
        {"text": "", "id": "r4"},
        {"text": "same id again", "id": "r1"},
        {"text": "no id here"},
        [1, 2, 3],
        {"text": "y" * (3 * limit), "id": "r5"},
        {"text": "lone surrogate \ud800", "id": "r6"},
    ])
    with open(root / "records.jsonl", "ab") as f:
        f.write(b'{"text": "\xff\xfe bad bytes", "id": "r7"}\n')
    write_jsonl(root / "longtext.jsonl", [{"text": "z" * (limit + 10), "id": "r8"}])
    (root / "nothing.jsonl").write_text("\n\n")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), root / "norows.parquet")

    rej = Rejections()
    docs = list(iter_documents([root, tmp_path / "missing-dir"], id_field="id", max_doc_bytes=limit, rejections=rej))
    assert sorted(d.id for d in docs) == ["bad/good.txt", "r1"]  # two inputs: ids relative to their common folder
    assert rej.counts == {
        "empty": 5,  # empty.txt, blank.txt, record r4, a JSONL file and a Parquet file without records
        "binary": 1,
        "invalid_utf8": 3,  # latin1.txt, lone surrogate, raw bad bytes in a JSONL line
        "too_large": 3,  # huge.txt, a JSONL line over 2x the limit, a JSONL text over the limit
        "unreadable": 2,  # dangling symlink, missing input
        "corrupt": 4,  # gzip header, parquet, truncated zst, truncated gz
        "malformed_json": 2,  # "{not json", a JSON list
        "missing_text": 1,
        "non_string_text": 1,
        "duplicate_id": 1,
        "missing_id": 1,
    }
    # 7 text files + 4 broken and 2 empty containers (one rejection each) + 1 missing input + 11 + 1 records
    assert len(docs) + rej.total == 7 + 4 + 2 + 1 + 11 + 1
    d = rej.to_dict()
    assert d["total"] == rej.total and d["counts"] == rej.counts
    assert any("records.jsonl:2" in e["where"] for e in d["examples"]["malformed_json"])
    assert all(len(v) <= rej.max_examples for v in d["examples"].values())


def test_truncated_stream_keeps_records_before_the_break(tmp_path):
    data = b"".join(json.dumps({"text": f"doc {i}"}).encode() + b"\n" for i in range(20))
    frames = b"".join(zstandard.ZstdCompressor().compress(data[i:i + 100]) for i in range(0, len(data), 100))
    whole = tmp_path / "whole.jsonl.zst"
    whole.write_bytes(frames)
    assert [d.text for d in iter_documents([whole])] == [f"doc {i}" for i in range(20)]
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(frames[:-5])
    rej = Rejections()
    docs = list(iter_documents([cut], rejections=rej))
    assert 0 < len(docs) < 20
    assert rej.counts == {"corrupt": 1}
    assert f"after {len(docs)} documents" in rej.examples["corrupt"][0]["detail"]


def test_oversized_jsonl_line_is_never_parsed(tmp_path, monkeypatch):
    limit = 1000
    path = tmp_path / "big.jsonl"
    write_jsonl(path, [{"text": "small"}, {"text": "q" * 50_000}, {"text": "after"}])
    parsed: list[int] = []
    real_loads = json.loads
    monkeypatch.setattr(sources.json, "loads", lambda s: parsed.append(len(s)) or real_loads(s))
    rej = Rejections()
    docs = list(iter_documents([path], max_doc_bytes=limit, rejections=rej))
    assert [d.text for d in docs] == ["small", "after"]
    assert rej.counts == {"too_large": 1}
    assert max(parsed) <= 2 * limit


def test_duplicate_relative_paths_across_roots(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "README").write_text(f"readme of {name}\n")
    rej = Rejections()
    docs = list(iter_documents([tmp_path / "a", tmp_path / "b"], rejections=rej))
    assert [(d.id, d.text) for d in docs] == [("a/README", "readme of a\n"), ("b/README", "readme of b\n")]
    assert rej.counts == {}
    (tmp_path / "a" / "x.jsonl").write_text('{"id": "k", "text": "one"}\n')
    (tmp_path / "b" / "y.jsonl").write_text('{"id": "k", "text": "two"}\n')
    rej = Rejections()
    docs = list(iter_documents([tmp_path / "a" / "x.jsonl", tmp_path / "b" / "y.jsonl"], id_field="id", rejections=rej))
    assert [d.text for d in docs] == ["one"] and rej.counts == {"duplicate_id": 1}
    assert rej.examples["duplicate_id"][0]["where"].startswith(str(tmp_path / "b" / "y.jsonl"))


def test_list_files_order_globs_and_dedup(tmp_path):
    for rel in ("z.txt", "a/2.txt", "a/10.txt", "b/c/x.jsonl", "b/y.txt"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text('{"text": "t"}\n')
    files = list_files([tmp_path])
    rel = [p.relative_to(tmp_path).as_posix() for p in files]
    assert rel == ["a/10.txt", "a/2.txt", "b/c/x.jsonl", "b/y.txt", "z.txt"]
    assert list_files([tmp_path, tmp_path / "z.txt"]) == files
    assert list_files([str(tmp_path / "**" / "*.txt")]) == [tmp_path / r for r in ("a/10.txt", "a/2.txt", "b/y.txt", "z.txt")]
    docs = list(iter_documents([str(tmp_path / "b" / "*")]))
    assert [d.id for d in docs] == ["c/x.jsonl:1", "y.txt"], "ids are relative to the glob's fixed prefix"


def test_symlinked_folders_are_followed_once(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "doc.txt").write_text("inside a linked folder\n")
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "real")
    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "link").symlink_to(tmp_path / "real")
    docs = list(iter_documents([tmp_path / "top"]))
    assert [d.id for d in docs] == ["link/doc.txt"]


def test_unlistable_folder_is_reported(tmp_path, monkeypatch):
    (tmp_path / "ok.txt").write_text("fine\n")
    real_walk = os.walk

    def walk(top, **kw):
        kw["onerror"](PermissionError(13, "Permission denied", str(tmp_path / "locked")))
        yield from real_walk(top, **kw)

    monkeypatch.setattr(sources.os, "walk", walk)
    rej = Rejections()
    assert [d.id for d in iter_documents([tmp_path], rejections=rej)] == ["ok.txt"]
    assert rej.counts == {"unreadable": 1} and rej.examples["unreadable"][0]["where"] == str(tmp_path / "locked")


def test_domain_from_dir_and_min_chars(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "m.py").write_text("print('hello world')\n")
    (tmp_path / "top.txt").write_text("short\n")
    rej = Rejections()
    docs = list(iter_documents([tmp_path], domain_from_dir=True, min_chars=10, rejections=rej))
    assert [(d.id, d.domain) for d in docs] == [("code/m.py", "code")]
    assert rej.counts == {"too_short": 1}


def test_no_usable_document_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01")
    with pytest.raises(NoDocumentsError) as e:
        list(iter_documents([tmp_path]))
    assert isinstance(e.value, DataSelectError) and isinstance(e.value, ValueError)
    msg = str(e.value)
    assert str(tmp_path) in msg and "empty=1" in msg and "binary=1" in msg


# --------------------------------------------------------------------------- issue 10: nothing stops a run


def reference_lines(data: bytes) -> list[bytes]:
    """Independent line split: universal newlines when the first terminator is a lone CR, else LF
    with a CRLF's CR dropped; no empty last line after a final terminator."""
    first = re.search(rb"\r\n|\r|\n", data)
    if first is not None and first.group() == b"\r":
        parts = re.split(rb"\r\n|\r|\n", data)
    else:  # a CR is dropped only as the first half of a CRLF
        split = data.split(b"\n")
        parts = [p[:-1] if p.endswith(b"\r") else p for p in split[:-1]] + split[-1:]
    return parts[:-1] if parts and parts[-1] == b"" else parts


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_line_splitter_matches_a_reference_at_every_chunk_boundary(monkeypatch, chunk):
    monkeypatch.setattr(sources, "_READ_CHUNK", chunk)
    rng = random.Random(chunk)
    for trial in range(200):
        alphabet = [b"a", b"b", b"\r", b"\n", b"\r\n", b" "]
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        max_line = rng.choice([3, 100])
        got = list(sources._lines(io.BufferedReader(io.BytesIO(data), 4), max_line))
        want = reference_lines(data)
        assert [n for _, _, n in got] == [len(p) for p in want], data
        assert [line for _, line, _ in got] == [p if len(p) <= max_line else None for p in want], data
        for offset, _, n in got:  # offsets point at the line's bytes in the stream
            assert data[offset:offset + n] in want


def test_nested_fields_and_dotted_keys(tmp_path):
    write_jsonl(tmp_path / "slim.jsonl", [
        {"text": "nested", "meta": {"redpajama_set_name": "RedPajamaBook", "id": 7}},
        {"text": "dotted key wins", "meta.redpajama_set_name": "flat", "meta": {"redpajama_set_name": "deep", "id": 8}},
        {"text": "no meta"},
        {"content": {"body": "text in a nested field"}, "meta": {"id": 9}},
    ])
    rej = Rejections()
    docs = list(iter_documents([tmp_path / "slim.jsonl"], domain_field="meta.redpajama_set_name", id_field="meta.id",
                               rejections=rej))
    assert [(d.id, d.domain, d.text) for d in docs] == [("7", "RedPajamaBook", "nested"), ("8", "flat", "dotted key wins")]
    assert rej.counts == {"missing_id": 1, "missing_text": 1}
    docs = list(iter_documents([tmp_path / "slim.jsonl"], text_field="content.body", id_field="meta.id",
                               rejections=Rejections()))
    assert [(d.id, d.text) for d in docs] == [("9", "text in a nested field")]
    rows = [{"text": "pq nested", "meta": {"redpajama_set_name": "RedPajamaWikipedia", "id": 1}},
            {"text": "pq two", "meta": {"redpajama_set_name": "RedPajamaC4", "id": 2}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "slim.parquet")
    docs = list(iter_documents([tmp_path / "slim.parquet"], domain_field="meta.redpajama_set_name", id_field="meta.id"))
    assert [(d.id, d.domain) for d in docs] == [("1", "RedPajamaWikipedia"), ("2", "RedPajamaC4")]


def test_json_files_are_sniffed(tmp_path):
    write_jsonl(tmp_path / "lines.json", [{"text": "one"}, {"text": "two"}])
    (tmp_path / "config.json").write_text(json.dumps({"text": "a pretty", "printed": "object"}, indent=2))
    with gzip.open(tmp_path / "lines.json.gz", "wt") as f:
        f.write("\ufeff" + json.dumps({"text": "gz with a BOM"}) + "\r\n")
    docs = {d.id: d.text for d in iter_documents([tmp_path])}
    assert docs == {"lines.json:1": "one", "lines.json:2": "two", "lines.json.gz:1": "gz with a BOM",
                    "config.json": (tmp_path / "config.json").read_text()}


def test_compressed_streams_are_recognised_by_content(tmp_path):
    data = b"".join(json.dumps({"text": f"rec {i}"}).encode() + b"\n" for i in range(3))
    for name, blob in (("z.jsonl", zstandard.ZstdCompressor().compress(data)), ("b.jsonl", bz2.compress(data)),
                       ("x.jsonl", lzma.compress(data)), ("g.txt", gzip.compress(b"plain text, gzipped\n"))):
        (tmp_path / name).write_bytes(blob)
    rej = Rejections()
    docs = {d.id: d.text for d in iter_documents([tmp_path], rejections=rej)}
    assert rej.counts == {}
    assert docs["g.txt"] == "plain text, gzipped\n"
    assert [docs[f"{n}.jsonl:{i}"] for n in "zbx" for i in (1, 2, 3)] == [f"rec {i}" for _ in "zbx" for i in range(3)]


def test_xz_decoder_memory_is_limited(tmp_path, monkeypatch):
    (tmp_path / "a.jsonl.xz").write_bytes(lzma.compress(b'{"text": "needs an 8 MiB dictionary"}\n'))
    assert [d.text for d in iter_documents([tmp_path])] == ["needs an 8 MiB dictionary"]
    monkeypatch.setattr(sources, "_XZ_MEMLIMIT", 1 << 20)
    rej = Rejections()
    with pytest.raises(NoDocumentsError):
        list(iter_documents([tmp_path], rejections=rej))
    assert rej.counts == {"corrupt": 1} and "Memory" in rej.examples["corrupt"][0]["detail"]


def test_permission_denied_is_unreadable(tmp_path, monkeypatch):
    (tmp_path / "ok.txt").write_text("fine\n")
    (tmp_path / "secret.txt").write_text("not for us\n")
    real_open = os.open

    def deny(path, *args, **kw):
        if str(path).endswith("secret.txt"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(sources.os, "open", deny)
    rej = Rejections()
    assert [d.id for d in iter_documents([tmp_path], rejections=rej)] == ["ok.txt"]
    assert rej.counts == {"unreadable": 1} and "Permission denied" in rej.examples["unreadable"][0]["detail"]


def test_fifo_swapped_in_after_listing_never_blocks(tmp_path, monkeypatch):
    """Listing saw a regular file; by the time it is read it is a FIFO with no writer."""
    (tmp_path / "ok.txt").write_text("fine\n")
    os.mkfifo(tmp_path / "late.jsonl")
    monkeypatch.setattr(sources, "_classify", lambda path, follow_symlinks=True: None)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("blocked on a FIFO")))
    signal.alarm(30)
    try:
        rej = Rejections()
        docs = list(iter_documents([tmp_path], rejections=rej))
    finally:
        signal.alarm(0)
    assert [d.id for d in docs] == ["ok.txt"] and rej.counts == {"special_file": 1}


def test_globs_never_loop_and_skip_hidden(tmp_path):
    (tmp_path / "real" / ".hidden").mkdir(parents=True)
    (tmp_path / "real" / "doc.txt").write_text("once\n")
    (tmp_path / "real" / ".dot.txt").write_text("hidden\n")
    (tmp_path / "real" / ".hidden" / "in.txt").write_text("hidden folder\n")
    (tmp_path / "real" / "loop").symlink_to("..")
    assert list_files([str(tmp_path / "**" / "*.txt")]) == [tmp_path / "real" / "doc.txt"]
    assert list_files([str(tmp_path / "real" / ".*.txt")]) == [tmp_path / "real" / ".dot.txt"]


def test_match_files_is_pathlib_glob_over_regular_files(tmp_path):
    """The corpus builder lists files through match_files: same set as pathlib's glob keeping
    regular, non-link files (hidden files included, ``**`` not entering linked folders)."""
    for rel in ("a/x.txt", "a/.h.txt", "a/b/y.txt", ".hid/z.txt", "c/w.py", "a/b/c/v.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    (tmp_path / "a" / "link").symlink_to(tmp_path / "c")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")
    (tmp_path / "a" / "file-link.txt").symlink_to(tmp_path / "a" / "x.txt")
    (tmp_path / "a" / "dangling.txt").symlink_to(tmp_path / "none")
    os.mkfifo(tmp_path / "a" / "pipe.txt")
    for patterns in (["**/*.txt"], ["a/*"], ["*/*.py", "a/link/*"], ["a/b/**/*"], ["**/*"], ["a/x.txt", "a/nope.txt"]):
        want = sorted({p for pat in patterns for p in tmp_path.glob(pat) if p.is_file() and not p.is_symlink()})
        assert sources.match_files(tmp_path, patterns, follow_symlinks=False) == want, patterns


def test_embed_listing_survives_links_and_special_files(tmp_path):
    """The issue's report: embed died with a RuntimeError on a symlink loop while listing its inputs."""
    from data_select.embed import embed_corpus

    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "alpha beta gamma"}, {"text": "delta epsilon"}])
    (tmp_path / "in" / "self.txt").symlink_to("self.txt")
    (tmp_path / "in" / "loop").symlink_to(".")
    os.mkfifo(tmp_path / "in" / "pipe.jsonl")
    from data_select.embed import load_features

    assert embed_corpus([tmp_path / "in"], tmp_path / "f", encoder="hashing", dim=8, progress=False)["n"] == 2
    f = load_features(tmp_path / "f")
    assert f.table.rejected.counts == {"special_file": 1, "unreadable": 2}
    assert [x["bytes"] is None for x in f.meta["input_files"]] == [False, True, True, True]
