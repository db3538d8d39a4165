"""The document table and the numpy key sets behind repeat detection (issue 9, points 1, 5, 6)."""
from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_select import keyset, sources
from data_select import table as T
from data_select.embed import embed_corpus
from data_select.keyset import KeySet, split_keys
from data_select.parts import Shard
from data_select.sources import Rejections, iter_documents


def test_keyset_answers_like_a_python_set():
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 2**63, size=(3000, 2), dtype=np.uint64)
    pool[10:20, 0] = pool[0, 0]  # keys that share their first 64 bits
    ks, ref = KeySet(), set()
    for _ in range(40):
        batch = pool[rng.integers(0, len(pool), size=int(rng.integers(1, 300)))]
        got = ks.check_add(batch[:, 0], batch[:, 1])
        want = []
        for h, l in batch.tolist():
            want.append((h, l) in ref)
            ref.add((h, l))
        assert got.tolist() == want
    assert len(ks) == len(ref) and ks.nbytes == 16 * len(ref)
    probe = rng.integers(0, 2**63, size=(50, 2), dtype=np.uint64)
    assert not ks.contains(probe[:, 0], probe[:, 1]).any()


def test_keys_are_blake2b_128():
    import hashlib

    assert keyset.digest(b"abc") == hashlib.blake2b(b"abc", digest_size=16).digest()
    hi, lo = split_keys(keyset.digest(b"abc") + keyset.digest(b"abd"))
    assert hi.dtype == np.uint64 and len(hi) == len(lo) == 2


def _records(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


@pytest.fixture
def repeats(tmp_path):
    """Files whose ids and texts repeat within and across files (read with id_field="id")."""
    root = tmp_path / "in"
    root.mkdir()
    _records(root / "a.jsonl", [{"id": "1", "text": "alpha"}, {"id": "2", "text": "beta"},
                                {"id": "1", "text": "gamma"},  # repeated id
                                {"id": "3", "text": "beta"}])  # repeated text
    _records(root / "b.jsonl", [{"id": "4", "text": "alpha"},  # text of a.jsonl: duplicate_content ...
                                {"id": "4", "text": "delta"},  # ... yet its id counts: duplicate_id
                                {"id": "2", "text": "epsilon"},  # id of a.jsonl
                                {"id": "5", "text": "zeta"}])
    with gzip.open(root / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"id": "6", "text": "eta"}) + "\n" + json.dumps({"id": "7", "text": "gamma"}) + "\n")
    pq.write_table(pa.Table.from_pylist([{"id": "8", "text": "theta"}, {"id": "9", "text": "zeta"}]),
                   root / "d.parquet", row_group_size=1)
    return root


KEPT = ["alpha", "beta", "zeta", "eta", "theta"]
REASONS = {"duplicate_id": 3, "duplicate_content": 4}  # ids: a:3, b:2, b:3; texts: a:4, b:1, c:2, d:1


def test_reader_drops_repeats_a_window_at_a_time(repeats, monkeypatch):
    for window in (1000, 2):
        monkeypatch.setattr(sources, "_WINDOW_DOCS", window)
        rej = Rejections(max_examples=10)
        docs = list(iter_documents([repeats], id_field="id", dedup_content=True, rejections=rej))
        assert [d.text for d in docs] == KEPT and rej.counts == REASONS
        assert [e["where"].rsplit("/", 1)[1] for e in rej.examples["duplicate_id"]] == \
            ["a.jsonl:3", "b.jsonl:2", "b.jsonl:3"]
    rej = Rejections()
    assert len(list(iter_documents([repeats], id_field="id", rejections=rej))) == 12 - 3  # ids only
    assert rej.counts == {"duplicate_id": 3}


def test_parts_merge_to_the_table_of_one_process(repeats, tmp_path):
    settings = T.table_settings([str(repeats)], id_field="id")
    one = T.build_table(tmp_path / "one" / "table", settings, progress=False)
    assert one["rows"] == 5 and one["rejected"]["counts"] == REASONS
    for i in range(3):
        T.index_corpus([str(repeats)], tmp_path / "three", id_field="id", shard=Shard(i, 3), progress=False)
    assert (tmp_path / "three" / "parts").is_dir()
    merged = T.merge_index(tmp_path / "three", progress=False)
    assert not (tmp_path / "three" / "parts").exists()
    assert merged == one
    for name in sorted(os.listdir(tmp_path / "one" / "table")):
        assert (tmp_path / "one" / "table" / name).read_bytes() == (tmp_path / "three" / "table" / name).read_bytes(), name
    table = T.Table(tmp_path / "three" / "table")
    assert [t for _, t in table.texts(range(table.n))] == KEPT
    assert table.ids(np.arange(5)) == ["1", "2", "5", "6", "8"]
    assert table.column("kind").tolist() == [0, 0, 0, 0, 2] and table.column("record").tolist() == [1, 2, 4, 1, 0]


def test_texts_are_read_back_at_their_locations_and_changes_are_caught(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    docs = [f"document number {i} " * (i + 1) for i in range(40)]
    _records(root / "a.jsonl", [{"text": t} for t in docs[:20]])
    with gzip.open(root / "b.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in docs[20:35])
    for i, t in enumerate(docs[35:]):
        (root / "sub" / f"t{i}.txt").write_text(t)
    embed_corpus([root], tmp_path / "f", encoder="hashing", dim=4, progress=False)
    table = T.Table(tmp_path / "f" / "table")
    rows = np.array([0, 7, 19, 20, 26, 34, 35, 39])
    assert [t for _, t in table.texts(rows)] == [docs[i] for i in rows]
    with pytest.raises(T.TableError, match="ascending"):
        list(table.texts(np.array([3, 1])))
    _records(root / "a.jsonl", [{"text": t.upper()} for t in docs[:20]])  # same sizes, other texts
    with pytest.raises(T.TableError, match=r"a\.jsonl: the document of row 0 changed"):
        list(table.texts(rows))
    (root / "b.jsonl.gz").unlink()
    with pytest.raises(T.TableError, match=r"b\.jsonl\.gz: cannot read it again"):
        list(table.texts(rows[3:]))


def test_commits_rewrite_counters_only(tmp_path):
    """features.json / table.json (settings, the input list) are written once; each commit
    rewrites progress.json, whose size does not grow with the inputs."""
    root = tmp_path / "in"
    root.mkdir()
    for i in range(30):  # a long input list
        _records(root / f"f{i:03d}.jsonl", [{"text": f"text {i} {j}"} for j in range(20)])
    seen = []

    def snapshot(rows):
        f = tmp_path / "f"
        seen.append(((f / "features.json").stat().st_mtime_ns, (f / "table" / "table.json").stat().st_mtime_ns,
                     (f / "progress.json").stat().st_size, (f / "table" / "progress.json").stat().st_size))

    embed_corpus([root], tmp_path / "f", encoder="hashing", dim=4, batch_size=8, commit_every=2, commit_seconds=0,
                 on_commit=snapshot, progress=False)
    assert len(seen) >= 30
    assert len({s[:2] for s in seen}) == 1, "settings files rewritten by a commit"
    assert max(s[2] for s in seen) < 40 and max(s[3] for s in seen) < 80
    assert (tmp_path / "f" / "features.json").stat().st_size > 30 * 50  # the input list is in there, once


def test_a_domain_field_that_is_not_a_label_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "MAX_DOMAINS", 3)
    _records(tmp_path / "a.jsonl", [{"text": f"t{i}", "domain": f"url-{i}"} for i in range(5)])
    with pytest.raises(Exception, match="more than 3 distinct values"):
        T.build_table(tmp_path / "t", T.table_settings([str(tmp_path / "a.jsonl")]), progress=False)


def test_reader_ids_can_only_repeat_through_a_file_named_like_a_record(tmp_path):
    """The reader's own ids are unique, so no id set is kept, unless a file is named like a
    record of another file: then `a.jsonl:2` (a text file) repeats the id of line 2 of a.jsonl."""
    _records(tmp_path / "a.jsonl", [{"text": f"record {i}"} for i in range(3)])
    listing = sources.scan_inputs([tmp_path])
    assert not sources.ids_may_repeat(listing, None) and sources.ids_may_repeat(listing, "id")
    (tmp_path / "a.jsonl:2").write_text("a text file named like a record")
    assert sources.ids_may_repeat(sources.scan_inputs([tmp_path]), None)
    rej = Rejections()
    docs = list(iter_documents([tmp_path], rejections=rej))
    assert [d.id for d in docs] == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3"] and rej.counts == {"duplicate_id": 1}
