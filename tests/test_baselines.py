"""Baselines: random, DSIR importance resampling, near-duplicate removal, composition."""
import numpy as np
import pytest

from data_select import baselines


def test_random_select_distinct_seeded():
    a = baselines.random_select(100, 10, seed=1)
    assert len(np.unique(a)) == 10 and a.min() >= 0 and a.max() < 100
    assert np.array_equal(a, baselines.random_select(100, 10, seed=1))
    assert not np.array_equal(a, baselines.random_select(100, 10, seed=2))
    with pytest.raises(baselines.BaselineError, match="k=101"):
        baselines.random_select(100, 101, seed=0)


def _toy_texts(rng):
    code_words = "def return import class self lambda yield print range len".split()
    prose_words = "the river mountain summer garden village morning quiet old story".split()
    code = [" ".join(rng.choice(code_words, 30)) for _ in range(100)]
    prose = [" ".join(rng.choice(prose_words, 30)) for _ in range(100)]
    return code + prose  # indices 0..99 are code-like


def test_dsir_prefers_target_like_texts():
    rng = np.random.default_rng(0)
    texts = _toy_texts(rng)
    target = [" ".join(rng.choice("def return import class self yield".split(), 25)) for _ in range(20)]
    sel = baselines.dsir_select(texts, target, 40, num_buckets=4096, seed=3)
    assert len(np.unique(sel)) == 40
    assert (sel < 100).mean() >= 0.9
    assert np.array_equal(sel, baselines.dsir_select(texts, target, 40, num_buckets=4096, seed=3))
    rnd = baselines.random_select(200, 40, seed=3)
    assert (rnd < 100).mean() < 0.8


def test_dsir_needs_target():
    with pytest.raises(baselines.BaselineError, match="target_texts"):
        baselines.dsir_select(["a b"], [], 1)


def test_dedup_finds_planted_duplicates_keeps_first():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 32)).astype(np.float32)
    # plant near-copies later in the pool, some in the same block, some across blocks
    planted = {120: 3, 121: 3, 350: 100, 499: 250, 60: 10}
    for dup, src in planted.items():
        x[dup] = 2.0 * x[src] + 0.01 * rng.normal(size=32)  # scale does not matter for cosine
    keep, dup_of = baselines.dedup(x, threshold=0.95, batch_size=128)
    assert set(np.flatnonzero(dup_of >= 0)) == set(planted)
    for dup, src in planted.items():
        assert dup_of[dup] == src
    assert np.array_equal(keep, np.flatnonzero(dup_of < 0))
    # same answer with other block sizes (cross-block vs in-block paths)
    for bs in (1, 7, 1000):
        assert np.array_equal(baselines.dedup(x, threshold=0.95, batch_size=bs)[1], dup_of)


def test_dedup_ivf_matches_exact_when_probing_all_cells():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(800, 16)).astype(np.float32)
    x[400:450] = x[:50] + 0.01 * rng.normal(size=(50, 16))
    exact = baselines.dedup(x, threshold=0.95, batch_size=100)
    full = baselines.dedup(x, threshold=0.95, batch_size=100, nlist=16, nprobe=16)
    assert np.array_equal(full[1], exact[1])
    keep, dup_of = baselines.dedup(x, threshold=0.95, batch_size=100, nlist=16, nprobe=2)
    assert set(range(400, 450)) <= set(np.flatnonzero(dup_of >= 0))
    assert (dup_of[400:450] == np.arange(50)).all()


def test_dedup_chain_maps_to_kept_row():
    base = np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)
    x = np.repeat(base, 4, axis=0)
    keep, dup_of = baselines.dedup(x, threshold=0.99, batch_size=2)
    assert keep.tolist() == [0] and dup_of.tolist() == [-1, 0, 0, 0]


def test_dedup_bad_input():
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 0] = np.inf
    with pytest.raises(baselines.BaselineError, match="row 2"):
        baselines.dedup(x)
    with pytest.raises(baselines.BaselineError, match="threshold"):
        baselines.dedup(np.ones((2, 2)), threshold=1.5)


def test_compose_maps_back_to_pool():
    pool = np.array([5, 8, 13, 21])
    assert baselines.compose(pool, np.array([0, 3])).tolist() == [5, 21]
    with pytest.raises(baselines.BaselineError):
        baselines.compose(pool, np.array([4]))


def test_dedup_switches_to_ivf_lists_above_the_flat_size(monkeypatch):
    """Above FLAT_MAX rows dedup works list by list (IVF, default 2·sqrt(n) lists); the planted
    near-copies are still found, and the result does not depend on the block size."""
    import faiss

    trained = []
    real = faiss.Kmeans

    def spy(d, k, **kw):
        trained.append(k)
        return real(d, k, **kw)

    monkeypatch.setattr(faiss, "Kmeans", spy)
    monkeypatch.setattr(baselines, "FLAT_MAX", 300)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(900, 24)).astype(np.float32)
    x[600:640] = x[100:140] * 3 + 0.01 * rng.normal(size=(40, 24))
    keep, dup_of = baselines.dedup(x, threshold=0.95, batch_size=64)
    assert trained == [baselines.default_nlist(900)] == [60]
    assert set(np.flatnonzero(dup_of >= 0)) == set(range(600, 640)) and (dup_of[600:640] == np.arange(100, 140)).all()
    assert np.array_equal(baselines.dedup(x, threshold=0.95, batch_size=7)[1], dup_of)
    monkeypatch.setattr(baselines, "FLAT_MAX", 10_000)
    assert np.array_equal(baselines.dedup(x, threshold=0.95)[1], dup_of) and trained == [60, 60]  # exact: no lists
