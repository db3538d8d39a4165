"""Proxy-encoder features: encoders, resumable writing, corruption checks, shard + merge."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from data_select.embed import (FEATURES, IDS, META, EmbedError, HashingEncoder, embed_corpus, get_encoder,
                               load_features, merge_shards, minilm_path)

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
    meta = embed_corpus([corpus], tmp_path / "f", encoder="hashing", dim=32, batch_size=8, progress=False)
    feats, ids, meta2 = load_features(tmp_path / "f")
    assert meta == meta2 and meta["status"] == "complete"
    assert feats.shape == (120, 32) and len(ids) == 120
    assert meta["rejected_total"] == 2 and meta["rejected"]["counts"] == {"empty": 1, "malformed_json": 1}
    assert [r["domain"] for r in ids[:3]] == list(DOMAINS)
    texts = [json.loads(line)["text"] for line in open(corpus).readlines()[:120]]
    np.testing.assert_allclose(feats, HashingEncoder(32).encode(texts), atol=1e-6)
    assert [r["n_chars"] for r in ids] == [len(t) for t in texts]


def test_resume_after_interruption_equals_uninterrupted(corpus, tmp_path):
    kw = dict(encoder="hashing", dim=16, batch_size=4, commit_every=2, progress=False)
    full = embed_corpus([corpus], tmp_path / "full", **kw)

    class Stop(Exception):
        pass

    def stop_after_three_commits(rows):
        if rows >= 24:
            raise Stop

    with pytest.raises(Stop):
        embed_corpus([corpus], tmp_path / "part", on_commit=stop_after_three_commits, **kw)
    meta = json.loads((tmp_path / "part" / META).read_text())
    assert meta["status"] == "partial" and meta["rows_done"] == 24
    with pytest.raises(EmbedError, match="partial"):
        load_features(tmp_path / "part")
    # A crash mid-window leaves uncommitted bytes: the resume must drop them.
    with open(tmp_path / "part" / FEATURES, "ab") as f:
        f.write(b"\x01" * 100)
    with open(tmp_path / "part" / IDS, "a") as f:
        f.write('{"id": "half-written')
    seen = []
    resumed = embed_corpus([corpus], tmp_path / "part", on_commit=seen.append, **kw)
    assert seen[0] == 32  # continued after the last commit, not from zero
    a, ids_a, _ = load_features(tmp_path / "full")
    b, ids_b, _ = load_features(tmp_path / "part")
    np.testing.assert_array_equal(a, b)
    assert ids_a == ids_b and resumed["ids_sha256"] == full["ids_sha256"]
    # A complete run with the same settings is reused as is.
    assert embed_corpus([corpus], tmp_path / "part", on_commit=seen.append, **kw) == resumed
    assert seen[-1] == 120


def test_other_settings_refused_unless_overwrite(corpus, tmp_path):
    embed_corpus([corpus], tmp_path / "f", encoder="hashing", dim=16, progress=False)
    with pytest.raises(EmbedError, match="hashing-16.*hashing-8"):
        embed_corpus([corpus], tmp_path / "f", encoder="hashing", dim=8, progress=False)
    meta = embed_corpus([corpus], tmp_path / "f", encoder="hashing", dim=8, overwrite=True, progress=False)
    assert load_features(tmp_path / "f")[0].shape == (120, 8) and meta["dim"] == 8


def test_corrupted_features_are_detected(corpus, tmp_path):
    d = tmp_path / "f"
    embed_corpus([corpus], d, encoder="hashing", dim=16, progress=False)
    good_ids = (d / IDS).read_bytes()
    lines = good_ids.decode().splitlines(keepends=True)
    (d / IDS).write_text("".join(lines[:-1]))  # a row lost
    with pytest.raises(EmbedError, match="checksum"):
        load_features(d)
    (d / IDS).write_text("".join([lines[1], lines[0], *lines[2:]]))  # same count, rows swapped
    with pytest.raises(EmbedError, match="checksum"):
        load_features(d)
    (d / IDS).write_bytes(good_ids)
    with open(d / FEATURES, "ab") as f:
        f.truncate(os.path.getsize(d / FEATURES) - 4)
    with pytest.raises(EmbedError, match="expected n\\*dim\\*4"):
        load_features(d)
    (d / META).write_text("{not json")
    with pytest.raises(EmbedError, match="not valid JSON"):
        load_features(d)
    with pytest.raises(EmbedError, match="no features.json"):
        load_features(tmp_path / "nothing-here")


def test_shards_merge_to_the_single_process_result(corpus, tmp_path):
    kw = dict(encoder="hashing", dim=16, batch_size=8, progress=False)
    embed_corpus([corpus], tmp_path / "one", **kw)
    with pytest.raises(EmbedError, match="no rank-NNNNN"):
        merge_shards(tmp_path / "sharded", progress=False)
    for rank in range(3):
        shard = embed_corpus([corpus], tmp_path / "sharded", rank=rank, world_size=3, **kw)
        assert shard["n"] == 40 and (tmp_path / "sharded" / f"rank-{rank:05d}").is_dir()
    merged = merge_shards(tmp_path / "sharded", progress=False)
    a, ids_a, meta_a = load_features(tmp_path / "one")
    b, ids_b, meta_b = load_features(tmp_path / "sharded")
    np.testing.assert_array_equal(a, b)
    assert ids_a == ids_b and merged["ids_sha256"] == meta_a["ids_sha256"]
    assert meta_b["rejected"] == meta_a["rejected"] and meta_b["merged_from"] == 3


def test_merge_refuses_missing_or_partial_shards(corpus, tmp_path):
    kw = dict(encoder="hashing", dim=16, batch_size=4, commit_every=1, progress=False)
    embed_corpus([corpus], tmp_path / "s", rank=0, world_size=2, **kw)
    with pytest.raises(EmbedError, match="expected ranks 0..1"):
        merge_shards(tmp_path / "s", progress=False)

    def crash(rows):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_corpus([corpus], tmp_path / "s", rank=1, world_size=2, on_commit=crash, **kw)
    with pytest.raises(EmbedError, match="partial"):
        merge_shards(tmp_path / "s", progress=False)


@pytest.mark.slow
def test_torchrun_shards_and_merges(corpus, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    embed_corpus([corpus], tmp_path / "one", encoder="hashing", dim=16, progress=False)
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "data_select", "embed", str(corpus), "--out", str(tmp_path / "tr"), "--encoder", "hashing",
           "--dim", "16", "--no-progress"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, ids_a, _ = load_features(tmp_path / "one")
    b, ids_b, meta = load_features(tmp_path / "tr")
    np.testing.assert_array_equal(a, b)
    assert ids_a == ids_b and meta["merged_from"] == 2
