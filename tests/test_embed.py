"""Proxy-encoder features: encoders, resumable writing, corruption checks, shard + merge."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from data_select.embed import (FEATURES, META, PROGRESS, EmbedError, HashingEncoder, embed_corpus, get_encoder,
                               load_features, merge_features, minilm_path)
from data_select.errors import DataSelectError

torch.set_num_threads(1)
DOMAINS = ("code", "law", "bio")


def make_corpus(path, n=120, seed=0):
    """JSONL of n short documents over three word vocabularies, plus two bad lines."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            d = DOMAINS[i % 3]
            words = [f"{d}{j}" for j in rng.integers(0, 40, size=rng.integers(3, 60))]
            f.write(json.dumps({"text": " ".join(words), "domain": d}) + "\n")
        f.write("{broken json\n")
        f.write(json.dumps({"text": "   ", "domain": "code"}) + "\n")
    return path


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "corpus.jsonl")


def test_hashing_encoder_is_deterministic_and_shaped():
    texts = ["the cat sat on the mat", "The cat sat on the mat", "a completely different text", ""]
    a = HashingEncoder(64).encode(texts)
    b = HashingEncoder(64).encode(texts)
    assert a.shape == (4, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0], a[1])  # lower-cased words
    assert not np.allclose(a[0], a[2])
    assert not a[3].any()  # no words, no features
    assert not np.allclose(HashingEncoder(64, seed=1).encode(texts[:1]), a[:1])
    # word order matters through the bigrams
    c = HashingEncoder(64).encode(["cat the sat mat the on"])
    assert not np.allclose(c[0], a[0])


def test_hashing_encoder_max_tokens_truncates():
    enc = HashingEncoder(32, max_tokens=3)
    a = enc.encode(["alpha beta gamma delta epsilon", "alpha beta gamma"])
    np.testing.assert_array_equal(a[0], a[1])


def test_minilm_offline_masked_mean_pooling():
    enc = get_encoder("minilm")
    assert enc.dim == 384 and enc.max_tokens == 256 and enc.name == "minilm"
    short = "hello world"
    batch = enc.encode([short, "a much longer sentence that forces padding of the first one in this batch"])
    alone = enc.encode([short])
    assert batch.shape == (2, 384) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-5)
    # Agrees with sentence-transformers' own pipeline (which L2-normalises; ours does not).
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_path()), device="cpu").encode([short])
    assert abs(np.linalg.norm(alone[0]) - 1.0) > 1e-3
    np.testing.assert_allclose(alone[0] / np.linalg.norm(alone[0]), st[0], atol=1e-5)


def test_hf_encoder_truncates_long_text_exactly():
    enc = get_encoder(str(minilm_path()), max_tokens=8)  # a local model directory
    assert enc.max_tokens == 8 and enc.name == str(minilm_path().resolve())
    long = "word " * 5000  # clipped before tokenising; the first 8 tokens are the same
    a = enc.encode([long, "word " * 20])
    np.testing.assert_allclose(a[0], a[1], atol=1e-5)


def test_unknown_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(EmbedError, match="unknown encoder"):
        get_encoder("no-such-encoder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbedError, match="config.json"):
        get_encoder(str(tmp_path / "empty"))


def test_embed_corpus_writes_rows_in_document_order(corpus, tmp_path):
    done = embed_corpus([corpus], tmp_path / "f", encoder="hashing", dim=32, batch_size=8, progress=False)
    f = load_features(tmp_path / "f")
    assert f.done == done and (f.n, f.dim) == (120, 32) and f.table.n == 120
    assert f.table.rejected.counts == {"empty": 1, "malformed_json": 1}
    assert f.table.domain_names(f.table.column("domain", np.arange(3))) == list(DOMAINS)
    texts = [json.loads(line)["text"] for line in open(corpus).readlines()[:120]]
    np.testing.assert_allclose(f.matrix[:], HashingEncoder(32).encode(texts), atol=1e-6)
    assert f.table.column("chars").tolist() == [len(t) for t in texts]
    assert f.table.column("bytes").tolist() == [len(t.encode()) for t in texts]
    assert f.table.ids(np.array([2, 0])) == [f"{corpus.name}:3", f"{corpus.name}:1"]
    assert [t for _, t in f.table.texts(np.array([0, 5, 119]))] == [texts[0], texts[5], texts[119]]


def test_feature_matrix_reads_rows_on_demand(corpus, tmp_path):
    embed_corpus([corpus], tmp_path / "f", encoder="hashing", dim=16, progress=False)
    m = load_features(tmp_path / "f").matrix
    whole = np.fromfile(tmp_path / "f" / FEATURES, dtype=np.float32).reshape(120, 16)
    rows = np.array([7, 3, 3, 119, 0, 4, 5])
    np.testing.assert_array_equal(m[rows], whole[rows])
    np.testing.assert_array_equal(m[10:20], whole[10:20])
    np.testing.assert_array_equal(m[-1], whole[-1])
    assert m[np.array([], dtype=np.int64)].shape == (0, 16)
    with pytest.raises(IndexError):
        m[np.array([120])]


def test_resume_after_interruption_equals_uninterrupted(corpus, tmp_path):
    kw = dict(encoder="hashing", dim=16, batch_size=4, commit_every=2, commit_seconds=0, progress=False)
    full = embed_corpus([corpus], tmp_path / "full", **kw)

    class Stop(Exception):
        pass

    def stop_after_three_commits(rows):
        if rows >= 24:
            raise Stop

    with pytest.raises(Stop):
        embed_corpus([corpus], tmp_path / "part", on_commit=stop_after_three_commits, **kw)
    assert json.loads((tmp_path / "part" / PROGRESS).read_text()) == {"rows": 24}
    with pytest.raises(EmbedError, match="unfinished"):
        load_features(tmp_path / "part")
    # A crash mid-window leaves uncommitted bytes: the resume must drop them.
    with open(tmp_path / "part" / FEATURES, "ab") as f:
        f.write(b"\x01" * 100)
    with open(tmp_path / "part" / "table" / "ids.bin", "ab") as f:
        f.write(b"half-written")
    seen = []
    resumed = embed_corpus([corpus], tmp_path / "part", on_commit=seen.append, **kw)
    assert seen[0] == 32  # continued after the last commit, not from zero
    a, b = load_features(tmp_path / "full"), load_features(tmp_path / "part")
    np.testing.assert_array_equal(a.matrix[:], b.matrix[:])
    assert resumed == full and a.table.fingerprint == b.table.fingerprint
    # A complete run with the same settings is reused as is.
    assert embed_corpus([corpus], tmp_path / "part", on_commit=seen.append, **kw) == resumed
    assert seen[-1] == 120


def test_other_settings_refused_unless_overwrite(corpus, tmp_path):
    embed_corpus([corpus], tmp_path / "f", encoder="hashing", dim=16, progress=False)
    with pytest.raises(EmbedError, match="hashing-16.*hashing-8"):
        embed_corpus([corpus], tmp_path / "f", encoder="hashing", dim=8, progress=False)
    with pytest.raises(DataSelectError, match="text_field='text'.*text_field='body'"):
        embed_corpus([corpus], tmp_path / "f", encoder="hashing", dim=16, text_field="body", progress=False)
    done = embed_corpus([corpus], tmp_path / "f", encoder="hashing", dim=8, overwrite=True, progress=False)
    assert load_features(tmp_path / "f").matrix.shape == (120, 8) and done["dim"] == 8
    old = tmp_path / "old"
    old.mkdir()
    (old / META).write_text(json.dumps({"format": "budgetlm-features/1", "n": 3}))
    with pytest.raises(EmbedError, match="older format.*--overwrite"):
        load_features(old)
    with pytest.raises(EmbedError, match="older format"):
        embed_corpus([corpus], old, encoder="hashing", dim=8, progress=False)
    assert embed_corpus([corpus], old, encoder="hashing", dim=8, overwrite=True, progress=False)["n"] == 120


def test_corrupted_features_are_detected(corpus, tmp_path):
    d = tmp_path / "f"
    embed_corpus([corpus], d, encoder="hashing", dim=16, progress=False)
    ids = (d / "table" / "ids.bin").read_bytes()
    (d / "table" / "ids.bin").write_bytes(ids[:-1])  # a byte lost
    with pytest.raises(DataSelectError, match="ids.bin.*DONE.json says"):
        load_features(d)
    (d / "table" / "ids.bin").write_bytes(ids)
    with open(d / FEATURES, "ab") as f:
        f.truncate(os.path.getsize(d / FEATURES) - 4)
    with pytest.raises(EmbedError, match="expected n\\*dim\\*4"):
        load_features(d)
    (d / META).write_text("{not json")
    with pytest.raises(EmbedError, match="not valid JSON"):
        load_features(d)
    with pytest.raises(EmbedError, match="no features.json"):
        load_features(tmp_path / "nothing-here")


def test_parts_merge_to_the_single_process_result(corpus, tmp_path, monkeypatch):
    from data_select.parts import PartError, Shard
    from data_select.table import index_corpus, merge_index

    kw = dict(encoder="hashing", dim=16, batch_size=8, progress=False)
    make_corpus(tmp_path / "b.jsonl", n=30, seed=1)
    inputs = [corpus, tmp_path / "b.jsonl"]
    embed_corpus(inputs, tmp_path / "one", **kw)
    with pytest.raises(PartError, match="no embed parts"):
        merge_features(tmp_path / "one", progress=False)
    for i in range(3):
        index_corpus(inputs, tmp_path / "sharded", shard=Shard(i, 3), progress=False)
    merge_index(tmp_path / "sharded", progress=False)
    # whole files, balanced by bytes: corpus.jsonl (~25 KB) falls to part 1, b.jsonl (~6 KB) to part 2;
    # a part opens no input file of another part
    from data_select import sources

    opened, real = [], sources.open_decoded
    monkeypatch.setattr(sources, "open_decoded", lambda path: opened.append(Path(path).name) or real(path))
    rows = []
    for i in range(3):
        opened.clear()
        rows.append(embed_corpus(inputs, tmp_path / "sharded", shard=Shard(i, 3), **kw)["rows"])
        assert set(opened) == [set(), {"corpus.jsonl"}, {"b.jsonl"}][i]
    assert rows == [[0, 0], [0, 120], [120, 150]]
    merged = merge_features(tmp_path / "sharded", progress=False)
    one = tmp_path / "one"
    assert merged == json.loads((one / "DONE.json").read_text())
    for name in ("features.f32", "features.json", "table/DONE.json", "table/ids.bin", "table/key.bin"):
        assert (one / name).read_bytes() == (tmp_path / "sharded" / name).read_bytes(), name


def test_merge_refuses_missing_unfinished_or_foreign_parts(corpus, tmp_path):
    from data_select.parts import PartError, Shard
    from data_select.table import index_corpus, merge_index

    make_corpus(tmp_path / "b.jsonl", n=30, seed=1)
    inputs = [corpus, tmp_path / "b.jsonl"]
    index_corpus(inputs, tmp_path / "s", shard=Shard(0, 2), progress=False)
    with pytest.raises(PartError, match="parts 1/2 are missing"):
        merge_index(tmp_path / "s", progress=False)
    index_corpus(inputs, tmp_path / "s", shard=Shard(1, 2), text_field="body", progress=False)
    with pytest.raises(PartError, match="different runs.*text_field='text'.*text_field='body'"):
        merge_index(tmp_path / "s", progress=False)
    index_corpus(inputs, tmp_path / "s", shard=Shard(1, 2), progress=False)  # redone with this run's settings
    merge_index(tmp_path / "s", progress=False)
    kw = dict(encoder="hashing", dim=16, batch_size=4, commit_every=1, commit_seconds=0, progress=False)
    embed_corpus(inputs, tmp_path / "s", shard=Shard(0, 2), **kw)

    def crash(rows):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_corpus(inputs, tmp_path / "s", shard=Shard(1, 2), on_commit=crash, **kw)
    with pytest.raises(PartError, match="1/2 has no completion marker"):
        merge_features(tmp_path / "s", progress=False)
    embed_corpus(inputs, tmp_path / "s", shard=Shard(1, 2), **kw)  # resumed, then marked
    assert merge_features(tmp_path / "s", progress=False)["n"] == 150
