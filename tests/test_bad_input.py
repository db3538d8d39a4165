"""No input can crash or hang a run: the committed bad-input corpus through the reader and the CLI.

tests/fixtures/bad-input (written by tests/fixtures/make_bad_input.py) mixes good documents in
every supported format with every bad input that can be committed; the fixture below copies it
and adds what cannot be committed: symlink loops, a dangling link, a FIFO, a socket, a device.
The expected outcome of every file is counted by hand from the generator, not from the reader.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import tracemalloc
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_select.cli import main
from data_select.errors import NoDocumentsError
from data_select.sources import Rejections, iter_documents, list_files, read_span

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "bad-input"
DOMAIN = "meta.redpajama_set_name"

GOOD = {  # good documents per file
    "slim.jsonl": 6, "crlf.jsonl": 3, "cr-only.jsonl": 3, "bom.jsonl": 3, "lines.json": 3, "pretty.json": 1,
    "records.ndjson": 2, "slim.jsonl.gz": 3, "slim.jsonl.zst": 3, "slim.jsonl.bz2": 3, "slim.jsonl.xz": 3,
    "gzip-under-plain-name.jsonl": 2, "slim.parquet": 4, "notes.txt": 1, "bom.txt": 1, "story.txt.xz": 1,
    "README.md": 1, "malformed.jsonl": 2, "bomb.jsonl.gz": 1, "bomb.jsonl.zst": 1, "bomb.jsonl.bz2": 1,
    "bomb.jsonl.xz": 1, "bomb.parquet": 1, "truncated.jsonl.gz": 3,
}
BAD = {  # rejections per file and reason
    "malformed.jsonl": {"malformed_json": 6, "non_string_text": 1, "missing_text": 1, "empty": 1, "invalid_utf8": 2},
    "blank.jsonl": {"empty": 1}, "empty.txt": {"empty": 1}, "binary.dat": {"binary": 1},
    "latin1.txt": {"invalid_utf8": 1},
    **{name: {"too_large": 1} for name in ("bomb.jsonl.gz", "bomb.jsonl.zst", "bomb.jsonl.bz2", "bomb.jsonl.xz",
                                           "bomb.txt.gz", "bomb.parquet")},
    "truncated.jsonl.gz": {"corrupt": 1}, "not-gzip.txt.gz": {"corrupt": 1}, "broken.parquet": {"corrupt": 1},
    **{name: {"unsupported_format": 1} for name in ("archive.zip", "zip-under-txt-name.txt", "bundle.tar.gz",
                                                    "frames.jsonl.lz4", "table.parquet.gz")},
    # made at run time
    "loop": {"unreadable": 1}, "self.txt": {"unreadable": 1}, "dangling.jsonl": {"unreadable": 1},
    "pipe.jsonl": {"special_file": 1}, "sock.txt": {"special_file": 1}, "zero.txt": {"special_file": 1},
}
N_GOOD = sum(GOOD.values())
N_BAD = sum(sum(v.values()) for v in BAD.values())
BY_REASON = sum((Counter(v) for v in BAD.values()), Counter())
# The four JSONL bombs end with the same good record (make_bad_input.py writes one `bomb` and
# compresses it four ways): the reader yields all four, while every step that reads through the
# document table (embed, run, tokenize) keeps the first and counts three as duplicate_content.
REPEATS = 3
N_UNIQUE = N_GOOD - REPEATS
TABLE_REASONS = dict(sorted((BY_REASON + Counter(duplicate_content=REPEATS)).items()))


def add_uncommittable(root: Path) -> None:
    (root / "loop").symlink_to(".")  # a folder link back to its own folder
    (root / "self.txt").symlink_to("self.txt")  # ELOOP
    (root / "dangling.jsonl").symlink_to("nowhere.jsonl")
    os.mkfifo(root / "pipe.jsonl")  # opening it for reading would block forever
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock.txt"))
    (root / "zero.txt").symlink_to("/dev/zero")  # a character device that never ends


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad") / "corpus"
    shutil.copytree(FIXTURE, root)
    add_uncommittable(root)
    return root


@contextlib.contextmanager
def no_hang(seconds: int = 300):
    """Turn a hang (e.g. a FIFO opened for reading) into a test failure."""
    def fail(*_):
        raise TimeoutError(f"still running after {seconds} s: something blocked")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def read_all(corpus):
    rej = Rejections(max_examples=10_000)
    with no_hang():
        docs = list(iter_documents([corpus], domain_field=DOMAIN, rejections=rej))
    return docs, rej


def test_every_file_is_read_or_counted_by_reason(read_all):
    docs, rej = read_all
    assert Counter(Path(d.source).name for d in docs) == GOOD
    got: dict[str, Counter] = {}
    for reason, examples in rej.examples.items():
        for ex in examples:
            got.setdefault(Path(ex["where"]).name.split(":")[0], Counter())[reason] += 1
    assert {k: dict(v) for k, v in got.items()} == BAD
    assert rej.counts == dict(BY_REASON) and rej.total == N_BAD
    assert len(docs) + rej.total == N_GOOD + N_BAD == 53 + 35
    details = {(Path(e["where"]).name.split(":")[0], r): e["detail"] for r, ex in rej.examples.items() for e in ex}
    assert ".zip" in details["archive.zip", "unsupported_format"]
    assert ".tar.gz" in details["bundle.tar.gz", "unsupported_format"]
    assert ".lz4" in details["frames.jsonl.lz4", "unsupported_format"]
    assert ".parquet.gz" in details["table.parquet.gz", "unsupported_format"]
    assert ".txt: content is a zip" in details["zip-under-txt-name.txt", "unsupported_format"]
    assert details["pipe.jsonl", "special_file"] == "FIFO" and details["zero.txt", "special_file"] == "character device"
    assert "loop" in details["self.txt", "unreadable"] and "loop" in details["loop", "unreadable"]
    assert "after 3 documents" in details["truncated.jsonl.gz", "corrupt"]
    malformed = sorted(e["where"].rsplit(":", 1)[1] for e in rej.examples["malformed_json"])
    assert malformed == ["2", "3", "4", "5", "6", "7"]  # decode error, 5,000 digits, 2x too deep, list, trailing comma
    kinds = " ".join(e["detail"] for e in rej.examples["malformed_json"])
    assert "ValueError" in kinds and "RecursionError" in kinds and "JSONDecodeError" in kinds


def test_domains_come_from_nested_fields(read_all):
    docs, _ = read_all
    sets = Counter(d.domain for d in docs)
    assert sets[None] == 6  # 4 text files, pretty.json and the Parquet bomb's good row carry no meta
    assert set(sets) - {None} <= {"RedPajamaGithub", "RedPajamaBook", "RedPajamaWikipedia", "RedPajamaArXiv",
                                  "RedPajamaCommonCrawl", "RedPajamaStackExchange", "RedPajamaC4"}
    assert all(d.domain is not None for d in docs if Path(d.source).name == "slim.parquet")


def test_every_document_can_be_read_again_at_its_location(corpus, read_all):
    docs, _ = read_all
    files = list_files([corpus])
    for d in docs:
        assert files[d.file] == Path(d.source)
        name = Path(d.source).name
        if ".parquet" in name:
            pf = pq.ParquetFile(d.source)
            first = sum(pf.metadata.row_group(g).num_rows for g in range(d.offset))
            assert pf.read_row_group(d.offset).column("text")[d.record - first].as_py() == d.text
            continue
        raw = read_span(d.source, d.offset, d.nbytes)
        if d.record == 0:  # a text file
            assert raw.decode("utf-8") == d.text
        else:
            assert json.loads(raw)["text"] == d.text and raw.strip() == raw
    cr = [d for d in docs if Path(d.source).name == "cr-only.jsonl"]
    assert [d.record for d in cr] == [1, 2, 3] and cr[1].offset == cr[0].offset + cr[0].nbytes + 1


def read_one(path: Path, **kw):
    rej = Rejections()
    try:
        return list(iter_documents([path], rejections=rej, **kw)), rej
    except NoDocumentsError:
        return [], rej


@pytest.mark.parametrize("name", ["bomb.jsonl.gz", "bomb.jsonl.zst", "bomb.jsonl.bz2", "bomb.jsonl.xz", "bomb.txt.gz"])
def test_decompression_bombs_hold_a_bounded_buffer(name):
    """32 MB of text from a few KB: counted too_large while Python never holds more than ~2x the
    1 MB limit plus one read (an unbounded reader would hold the whole 32 MB record)."""
    tracemalloc.start()
    try:
        docs, rej = read_one(FIXTURE / name, max_doc_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rej.counts == {"too_large": 1}
    assert len(docs) == (0 if name == "bomb.txt.gz" else 1)
    assert peak < 12 << 20, f"{name}: peak {peak / 2**20:.1f} MiB"


def test_parquet_page_bomb_is_never_decoded():
    """A row group whose text page inflates to 80 MB is counted from its page headers, without
    pyarrow allocating the page; the next row group is read."""
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    old = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        docs, rej = read_one(FIXTURE / "bomb.parquet")
    finally:
        pa.set_memory_pool(old)
    assert rej.counts == {"too_large": 1} and [d.record for d in docs] == [1]
    assert pool.max_memory() < 16 << 20, f"pyarrow peaked at {pool.max_memory() / 2**20:.1f} MiB"


def run_cli(args, capsys) -> tuple[int, str, str]:
    with no_hang():
        rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_run_keeps_every_good_document_and_adds_up(corpus, tmp_path, capsys):
    cfg = {"inputs": [str(corpus)], "out_dir": str(tmp_path / "out"), "progress": False, "domain_field": DOMAIN,
           "embed": {"encoder": "hashing", "dim": 32, "batch_size": 16},
           "select": {"method": "disf", "ratio": 0.25, "batch_size": 16},
           "tokenize": {"vocab_size": 600, "val_fraction": 0.1, "workers": 1}, "report": {"top_k": 5}}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))
    rc, out, err = run_cli(["run", path], capsys)
    assert rc == 0 and "Traceback" not in err + out, err
    o = tmp_path / "out"
    feats = json.loads((o / "features" / "DONE.json").read_text())
    table = json.loads((o / "features" / "table" / "DONE.json").read_text())
    assert feats["n"] == table["rows"] == N_UNIQUE and table["rejected"]["counts"] == TABLE_REASONS  # embed
    counts = json.loads((o / "select.json").read_text())["counts"]  # select
    assert counts["input"] == N_UNIQUE == counts["selected"] + counts["not_selected"] + counts["deduplicated"]
    src = json.loads((o / "tokens" / "manifest.json").read_text())["sources"]  # tokenize
    assert src["documents"] == counts["selected"] and src["read"] == N_UNIQUE
    assert src["documents"] + src["not_selected"] + sum(src["rejected"].values()) == N_GOOD + N_BAD
    assert src["rejected"] == TABLE_REASONS
    acc = json.loads((o / "report.json").read_text())["accounting"]  # run
    assert acc["input_documents"] == N_GOOD + N_BAD and acc["adds_up"]
    assert acc["rejected"]["by_reason"] == TABLE_REASONS
    assert f"{N_GOOD + N_BAD} input" in out


def test_cli_embed_and_tokenize_everything_add_up(corpus, tmp_path, capsys):
    rc, out, err = run_cli(["embed", corpus, "--out", tmp_path / "f", "--encoder", "hashing", "--dim", 16,
                            "--domain-field", DOMAIN, "--no-progress"], capsys)
    assert rc == 0 and "Traceback" not in err + out, err
    assert f"embedded {N_UNIQUE} documents" in out and f"rejected {N_BAD + REPEATS} " in out
    assert f"(input {N_GOOD + N_BAD})" in out
    rc, out, err = run_cli(["tokenize", corpus, "--out", tmp_path / "tok", "--vocab-size", 600, "--workers", 1,
                            "--domain-field", DOMAIN, "--no-progress"], capsys)
    assert rc == 0 and "Traceback" not in err + out, err
    assert f"input: {N_GOOD + N_BAD} = {N_UNIQUE} tokenized + 0 not selected + {N_BAD + REPEATS} rejected" in out
    m = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    sp, src = m["splits"], m["sources"]
    assert sp["train"]["documents"] + sp["val"]["documents"] == src["documents"] == N_UNIQUE
    assert src["not_selected"] == 0 and src["rejected"] == TABLE_REASONS
    assert set(m["domains"]) >= {"RedPajamaC4", "unknown"}
