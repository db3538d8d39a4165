"""Baseline selections to compare DiSF against: random, DSIR, and near-duplicate removal.

Every function returns indices into the pool it was given, so methods compose: run one on a
sub-pool and map its answer back with :func:`compose` (e.g. dedup, then DiSF on the survivors).
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
from tqdm.auto import tqdm


class BaselineError(ValueError):
    """Bad input to a baseline selection; the message names the argument."""


def compose(pool_idx: np.ndarray, sub_idx: np.ndarray) -> np.ndarray:
    """Map a selection made on ``features[pool_idx]`` back to indices of ``features``."""
    pool_idx = np.asarray(pool_idx, dtype=np.int64)
    sub_idx = np.asarray(sub_idx, dtype=np.int64)
    if sub_idx.size and (sub_idx.min() < 0 or sub_idx.max() >= len(pool_idx)):
        raise BaselineError(f"sub-selection indices must lie in [0, {len(pool_idx)})")
    return pool_idx[sub_idx]


def _check_k(n: int, k: int) -> None:
    if not 0 <= k <= n:
        raise BaselineError(f"k={k} must lie between 0 and the pool size {n}")


def random_select(n: int, k: int, seed: int) -> np.ndarray:
    """k distinct indices of range(n), uniformly at random, in ascending order."""
    _check_k(n, k)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(np.int64)


def _hashed_ngram_counts(texts: Sequence[str], num_buckets: int, ngrams: tuple[int, int]):
    """Sparse (docs × buckets) counts of lower-cased word n-grams, hashed with murmur3 (stable)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vec = HashingVectorizer(n_features=num_buckets, ngram_range=ngrams, alternate_sign=False,
                            norm=None, lowercase=True, token_pattern=r"(?u)\b\w+\b|[^\w\s]")
    return vec.transform(texts)


def dsir_select(
    texts: Sequence[str],
    target_texts: Sequence[str],
    k: int,
    *,
    num_buckets: int = 10_000,
    ngrams: tuple[int, int] = (1, 2),
    seed: int = 0,
    pseudocount: float = 1.0,
) -> np.ndarray:
    """DSIR (Xie et al. 2023): importance resampling of ``texts`` towards ``target_texts``.

    Both distributions are bags of hashed n-grams with add-``pseudocount`` smoothing; a
    document's log importance weight is Σ_b count_b · (log p_target(b) − log p_raw(b)). k
    documents are drawn without replacement ∝ weight via the Gumbel top-k trick. Returns the
    chosen indices in ascending order.
    """
    _check_k(len(texts), k)
    if len(target_texts) == 0:
        raise BaselineError("target_texts is empty: DSIR needs target examples")
    if num_buckets < 2:
        raise BaselineError(f"num_buckets must be >= 2, got {num_buckets}")
    raw = _hashed_ngram_counts(texts, num_buckets, ngrams)
    tgt = _hashed_ngram_counts(target_texts, num_buckets, ngrams)
    log_p_raw = np.log(np.asarray(raw.sum(axis=0)).ravel() + pseudocount)
    log_p_tgt = np.log(np.asarray(tgt.sum(axis=0)).ravel() + pseudocount)
    log_ratio = (log_p_tgt - np.logaddexp.reduce(log_p_tgt)) - (log_p_raw - np.logaddexp.reduce(log_p_raw))
    log_w = raw @ log_ratio
    keys = log_w + np.random.default_rng(seed).gumbel(size=len(texts))
    top = np.argpartition(-keys, k - 1)[:k] if k else np.empty(0, dtype=np.int64)
    return np.sort(top).astype(np.int64)


@contextmanager
def _faiss_blas_threshold(value: int):
    """Small query batches take faiss's slow non-BLAS path unless this global is lowered."""
    import faiss

    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = value
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = old


def _dedup_index(features: np.ndarray, nlist: int | None, nprobe: int, seed: int, train_size: int):
    """Inner-product index over kept rows: exact flat, or IVF (trained on a seeded sample)."""
    import faiss

    n, d = features.shape
    if nlist is None:
        return faiss.IndexIDMap(faiss.IndexFlatIP(d))
    if nlist < 1 or nprobe < 1:
        raise BaselineError(f"nlist and nprobe must be >= 1, got nlist={nlist}, nprobe={nprobe}")
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, max(train_size, 39 * nlist)), replace=False))
    sample = np.array(features[rows], dtype=np.float32)
    if not np.isfinite(sample).all():
        raise BaselineError(f"features hold NaN/inf at row {int(rows[np.argmax(~np.isfinite(sample).all(axis=1))])}")
    faiss.normalize_L2(sample)
    if len(sample) < nlist:
        raise BaselineError(f"nlist={nlist} exceeds the {len(sample)} rows available to train it")
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(sample)
    index.nprobe = nprobe
    return index


def dedup(features: np.ndarray, *, threshold: float = 0.95, batch_size: int = 4096,
          nlist: int | None = None, nprobe: int = 8, seed: int = 0, train_size: int = 100_000,
          progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicate removal by cosine similarity, keeping the first occurrence in pool order.

    Rows are L2-normalised and processed in order in blocks: a row is a duplicate if some earlier
    *kept* row (a faiss search over earlier blocks, a matrix product inside its own block) has
    cosine ≥ ``threshold``. Returns ``keep_idx`` (ascending) and ``dup_of`` (length n: for a
    duplicate the most similar earlier kept row, −1 for kept rows). All-zero rows have no
    direction: cosine 0 to everything.

    ``nlist=None`` searches exactly (IndexFlatIP): O(n · kept · d), about 2 min for 100k × 384
    on 2 cores, so hours at 1M. For large pools pass ``nlist`` (≈ √n): an IndexIVFFlat probing
    ``nprobe`` cells, which can miss a duplicate whose original fell in an unprobed cell (rare at
    cosine ≥ 0.95; 1M × 384 with nlist=1024, nprobe=8 took 7 min on 2 cores and found all 9,952
    planted near-copies, see tools/bench/bench_disf.py). Memory stays O(batch_size² + kept · d).
    """
    import faiss

    if getattr(features, "ndim", None) != 2:
        raise BaselineError(f"features must be a 2-D (files, dims) array, got shape {getattr(features, 'shape', None)}")
    if not -1.0 <= threshold <= 1.0:
        raise BaselineError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    if batch_size < 1:
        raise BaselineError(f"batch_size must be >= 1, got {batch_size}")
    n, d = features.shape
    dup_of = np.full(n, -1, dtype=np.int64)
    index = _dedup_index(features, nlist, nprobe, seed, train_size)
    with _faiss_blas_threshold(1):
        for lo in tqdm(range(0, n, batch_size), desc="dedup", disable=not progress):
            x = np.array(features[lo : lo + batch_size], dtype=np.float32)
            if not np.isfinite(x).all():
                bad = lo + int(np.argmax(~np.isfinite(x).all(axis=1)))
                raise BaselineError(f"features hold NaN/inf at row {bad}")
            faiss.normalize_L2(x)
            b = len(x)
            best_sim = np.full(b, -np.inf, dtype=np.float32)
            best_id = np.full(b, -1, dtype=np.int64)
            if index.ntotal:
                sims, ids = index.search(x, 1)
                found = ids[:, 0] >= 0
                best_sim[found], best_id[found] = sims[found, 0], ids[found, 0]
            # Within the block: row i against earlier rows j < i that end up kept.
            inner = x @ x.T
            inner[np.arange(b)[:, None] <= np.arange(b)[None, :]] = -np.inf
            is_dup = best_sim >= threshold
            dup_of[lo : lo + b][is_dup] = best_id[is_dup]
            kept_local = ~is_dup
            for i in np.flatnonzero((inner >= threshold).any(axis=1)):
                cand = np.flatnonzero((inner[i, :i] >= threshold) & kept_local[:i])
                if cand.size:
                    j = cand[np.argmax(inner[i, cand])]
                    kept_local[i] = False
                    if inner[i, j] > best_sim[i]:
                        dup_of[lo + i] = lo + j
            keep_rows = np.flatnonzero(kept_local)
            if keep_rows.size:
                index.add_with_ids(x[keep_rows], (lo + keep_rows).astype(np.int64))
    return np.flatnonzero(dup_of < 0).astype(np.int64), dup_of
