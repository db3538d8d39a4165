"""Baseline selections to compare DiSF against: random, DSIR, and near-duplicate removal.

Every function returns indices into the pool it was given, so methods compose: run one on a
sub-pool and map its answer back with :func:`compose` (e.g. dedup, then DiSF on the survivors).
"""
from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

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


def vectorizer(num_buckets: int, ngrams: tuple[int, int]):
    """Lower-cased word n-grams hashed with murmur3 into ``num_buckets`` counts (stable)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=num_buckets, ngram_range=ngrams, alternate_sign=False,
                             norm=None, lowercase=True, token_pattern=r"(?u)\b\w+\b|[^\w\s]")


def chunked(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(texts)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def ngram_totals(texts: Iterable[str], *, num_buckets: int = 10_000, ngrams: tuple[int, int] = (1, 2),
                 chunk: int = 1024) -> np.ndarray:
    """Summed hashed n-gram counts of ``texts``, streamed a chunk at a time."""
    vec = vectorizer(num_buckets, ngrams)
    total = np.zeros(num_buckets, dtype=np.float64)
    for part in chunked(texts, chunk):
        total += np.asarray(vec.transform(part).sum(axis=0)).ravel()
    return total


def dsir_log_ratio(raw_counts: np.ndarray, target_counts: np.ndarray, pseudocount: float = 1.0) -> np.ndarray:
    """log p_target(b) − log p_raw(b) per bucket, both add-``pseudocount`` smoothed."""
    log_p_raw = np.log(raw_counts + pseudocount)
    log_p_tgt = np.log(target_counts + pseudocount)
    return (log_p_tgt - np.logaddexp.reduce(log_p_tgt)) - (log_p_raw - np.logaddexp.reduce(log_p_raw))


def dsir_log_weights(texts: Iterable[str], n: int, log_ratio: np.ndarray, *, ngrams: tuple[int, int] = (1, 2),
                     chunk: int = 1024) -> np.ndarray:
    """Log importance weight Σ_b count_b · log_ratio_b of each of the ``n`` texts, streamed."""
    vec = vectorizer(len(log_ratio), ngrams)
    out = np.empty(n, dtype=np.float64)
    at = 0
    for part in chunked(texts, chunk):
        out[at:at + len(part)] = vec.transform(part) @ log_ratio
        at += len(part)
    if at != n:
        raise BaselineError(f"dsir: {at} texts read, {n} expected")
    return out


def gumbel_keys(log_w: np.ndarray, seed: int) -> np.ndarray:
    """Sampling keys: the k largest are a draw of k items without replacement ∝ exp(log_w)."""
    return log_w + np.random.default_rng(seed).gumbel(size=len(log_w))


def top_k(keys: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest keys, ascending."""
    _check_k(len(keys), k)
    top = np.argpartition(-keys, k - 1)[:k] if k else np.empty(0, dtype=np.int64)
    return np.sort(top).astype(np.int64)


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
    chosen indices in ascending order. (The pipeline streams the same computation over a
    document table: :func:`ngram_totals`, :func:`dsir_log_ratio`, :func:`dsir_log_weights`.)
    """
    _check_k(len(texts), k)
    if len(target_texts) == 0:
        raise BaselineError("target_texts is empty: DSIR needs target examples")
    if num_buckets < 2:
        raise BaselineError(f"num_buckets must be >= 2, got {num_buckets}")
    ratio = dsir_log_ratio(ngram_totals(texts, num_buckets=num_buckets, ngrams=ngrams),
                           ngram_totals(target_texts, num_buckets=num_buckets, ngrams=ngrams), pseudocount)
    return top_k(gumbel_keys(dsir_log_weights(texts, len(texts), ratio, ngrams=ngrams), seed), k)


# --------------------------------------------------------------------------- near-duplicates

FLAT_MAX = 100_000  # pools up to this size are compared exactly (one list); larger ones through IVF lists
DEFAULT_NPROBE = 4
_GROUP_ENTRIES = 1 << 22  # (row, list) entries per group of lists held at once


def default_nlist(n: int) -> int:
    """IVF lists for a pool of n above :data:`FLAT_MAX`: 2·√n (about 2,000 at 1M rows)."""
    return max(1, int(round(2 * np.sqrt(n))))


def _normalised(features, rows: np.ndarray) -> np.ndarray:
    x = np.array(features[rows], dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise BaselineError(f"features hold NaN/inf at row {int(np.asarray(rows)[np.argmax(bad)])}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norm, out=x, where=norm > 0)
    return x


class _Pairs:
    """Candidate pairs (x, y, cosine) with y < x, spilled to files by x range so that the greedy
    pass holds one range at a time."""

    def __init__(self, workdir: Path, n: int, buckets: int):
        self.dir, self.n, self.buckets = workdir, n, max(1, buckets)
        self.width = -(-max(n, 1) // self.buckets)
        self.count = 0

    def add(self, x: np.ndarray, y: np.ndarray, sim: np.ndarray) -> None:
        b = x // self.width
        for k in np.unique(b).tolist():
            m = b == k
            rec = np.empty(int(m.sum()), dtype=[("x", "<i8"), ("y", "<i8"), ("s", "<f4")])
            rec["x"], rec["y"], rec["s"] = x[m], y[m], sim[m]
            with open(self.dir / f"pairs-{k:05d}.bin", "ab") as f:
                rec.tofile(f)
            self.count += len(rec)

    def ranges(self) -> Iterator[np.ndarray]:
        for k in range(self.buckets):
            path = self.dir / f"pairs-{k:05d}.bin"
            if path.is_file():
                yield np.fromfile(path, dtype=[("x", "<i8"), ("y", "<i8"), ("s", "<f4")])


def _list_pairs(features, queries: np.ndarray, homes: np.ndarray, threshold: float, pairs: _Pairs, block: int,
                homes_in_queries: bool = False) -> None:
    """Pairs (x in ``queries``, y in ``homes``, y < x) with cosine >= threshold, block by block
    (both sorted ascending). A list small enough for one block is read once."""
    once = homes_in_queries and len(queries) <= block
    x_all = _normalised(features, queries) if once else None
    for qa in range(0, len(queries), block):
        q = queries[qa:qa + block]
        xq = x_all if once else _normalised(features, q)
        limit = int(np.searchsorted(homes, q[-1], "left"))  # homes from the last query on cannot be earlier
        for ha in range(0, limit, block):
            h = homes[ha:min(ha + block, limit)]
            xh = x_all[np.searchsorted(queries, h)] if once else _normalised(features, h)
            sim = xq @ xh.T
            qi, hi = np.nonzero((sim >= threshold) & (h[None, :] < q[:, None]))
            if qi.size:
                pairs.add(q[qi], h[hi], sim[qi, hi])


def dedup(features, *, threshold: float = 0.95, batch_size: int = 4096, nlist: int | None = None,
          nprobe: int = DEFAULT_NPROBE, seed: int = 0, train_size: int = 100_000, workdir: str | Path | None = None,
          progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicate removal by cosine similarity, keeping the first occurrence in pool order.

    A row is a duplicate if some earlier *kept* row among its candidates has cosine ≥
    ``threshold``; ``dup_of`` names the most similar such row (−1 for kept rows). Returns
    ``keep_idx`` (ascending) and ``dup_of`` (length n). All-zero rows have no direction: cosine 0.

    Candidates: with ``nlist`` None and n ≤ :data:`FLAT_MAX` every earlier row (exact). Otherwise
    IVF: ``nlist`` (default :func:`default_nlist`) spherical k-means centroids trained on a seeded
    sample of ``max(train_size, 39·nlist)`` rows; each row lives in the list of its nearest
    centroid and its candidates are the earlier rows living in its ``nprobe`` nearest lists (what
    a faiss IVF search with ``nprobe`` would see; a duplicate whose original lies in an unprobed
    list is missed). Work goes list by list: the (row, list) entries are spilled to ``workdir`` in
    groups of lists, each list's similarities are computed block by block, candidate pairs are
    spilled by row range, and a last pass keeps rows in pool order. Memory: a block of features,
    one group of entries and 17 bytes per row (``dup_of`` and a flag), never all features.
    """
    if getattr(features, "ndim", None) != 2:
        raise BaselineError(f"features must be a 2-D (files, dims) array, got shape {getattr(features, 'shape', None)}")
    if not -1.0 <= threshold <= 1.0:
        raise BaselineError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    if batch_size < 1:
        raise BaselineError(f"batch_size must be >= 1, got {batch_size}")
    if nlist is not None and (nlist < 1 or nprobe < 1):
        raise BaselineError(f"nlist and nprobe must be >= 1, got nlist={nlist}, nprobe={nprobe}")
    n, d = features.shape
    dup_of = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return np.empty(0, dtype=np.int64), dup_of
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".dedup-") as tmp:
        pairs = _Pairs(Path(tmp), n, buckets=1 + n // (1 << 20))
        if nlist is None and n <= FLAT_MAX:
            rows = np.arange(n, dtype=np.int64)
            for qa in tqdm(range(0, n, batch_size), desc="dedup (exact)", disable=not progress):
                _list_pairs(features, rows[qa:qa + batch_size], rows, threshold, pairs, batch_size)
        else:
            nlist = nlist or default_nlist(n)
            _ivf_pairs(features, nlist, min(nprobe, nlist), seed, train_size, threshold, pairs, Path(tmp),
                       batch_size, progress)
        _greedy(pairs, dup_of)
    return np.flatnonzero(dup_of < 0).astype(np.int64), dup_of


def _greedy(pairs: _Pairs, dup_of: np.ndarray) -> None:
    """Walk rows in pool order: a row with a kept candidate becomes its duplicate (the most similar one)."""
    removed = np.zeros(len(dup_of), dtype=bool)
    for rec in pairs.ranges():
        order = np.lexsort((rec["y"], -rec["s"], rec["x"]))
        xs, ys = rec["x"][order], rec["y"][order]
        starts = np.flatnonzero(np.concatenate([[True], xs[1:] != xs[:-1]]))
        ends = np.concatenate([starts[1:], [len(xs)]])
        for a, b in zip(starts.tolist(), ends.tolist()):
            for y in ys[a:b].tolist():
                if not removed[y]:
                    x = int(xs[a])
                    removed[x] = True
                    dup_of[x] = y
                    break


def _bernoulli_rows(n: int, m: int, seed: int) -> np.ndarray:
    """About m of range(n), ascending, each row kept with probability m/n (seeded), drawn a chunk
    at a time: no permutation of n is ever held."""
    if m >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    step = 1 << 20
    return np.concatenate([lo + np.flatnonzero(rng.random(min(step, n - lo)) < m / n) for lo in range(0, n, step)])


def _ivf_pairs(features, nlist: int, nprobe: int, seed: int, train_size: int, threshold: float, pairs: _Pairs,
               tmp: Path, block: int, progress: bool) -> None:
    import faiss

    n, d = features.shape
    sample = _bernoulli_rows(n, min(n, max(train_size, 39 * nlist)), seed)
    if len(sample) < nlist:
        raise BaselineError(f"nlist={nlist} exceeds the {len(sample)} rows available to train it")
    km = faiss.Kmeans(d, nlist, niter=10, seed=seed, spherical=True, verbose=False)
    km.train(np.concatenate([_normalised(features, sample[a:a + 65536]) for a in range(0, len(sample), 65536)]))
    del sample
    per_group = max(1, int(_GROUP_ENTRIES * nlist // max(1, n * nprobe)))
    groups = -(-nlist // per_group)
    entry = np.dtype([("row", "<i8"), ("list", "<i4"), ("home", "u1")])
    for lo in tqdm(range(0, n, 65536), desc="dedup: assign to lists", disable=not progress):
        rows = np.arange(lo, min(n, lo + 65536), dtype=np.int64)
        _, probes = km.index.search(_normalised(features, rows), nprobe)
        rec = np.empty(probes.size, dtype=entry)
        rec["row"] = np.repeat(rows, nprobe)
        rec["list"] = probes.ravel()
        rec["home"] = np.tile(np.arange(nprobe) == 0, len(rows))
        g = rec["list"] // per_group
        for k in np.unique(g).tolist():
            with open(tmp / f"lists-{k:05d}.bin", "ab") as f:
                rec[g == k].tofile(f)
    for k in tqdm(range(groups), desc="dedup: lists", disable=not progress):
        path = tmp / f"lists-{k:05d}.bin"
        if not path.is_file():
            continue
        rec = np.fromfile(path, dtype=entry)
        path.unlink()
        rec = rec[np.lexsort((rec["row"], rec["list"]))]
        cuts = np.flatnonzero(np.diff(rec["list"])) + 1
        for part in np.split(rec, cuts):
            homes = part["row"][part["home"] == 1]
            if homes.size:
                _list_pairs(features, part["row"], homes, threshold, pairs, block, homes_in_queries=True)
