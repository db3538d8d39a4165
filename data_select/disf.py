"""DiSF: diversified file selection (Fan et al., ICLR 2025), exact and vectorised.

The score of a set U of n files (rows) with d feature dimensions is the paper's

    Z = column-wise z-score of U (ddof=1),   C = ZᵀZ / (n-1),   score(U) = Σ_{i≠j} C_ij²

Minimising it with the trace fixed flattens the eigen-spectrum of C (Σλ² falls), so the picked
files are decorrelated. The released code divides the score by 10000; that constant does not
move the arg-min, so it is left out here.

Zero-variance dimensions: a dimension that is exactly constant over U (max == min) has no
z-score; we define z = 0 there, i.e. it is uncorrelated with everything and contributes nothing
(C_jj = 0 too, so it is not counted on the diagonal either). One consequence: at n = 2 an exact
duplicate of the first file makes every dimension constant and scores 0, so run near-duplicate
removal (:func:`data_select.baselines.dedup`) before DiSF on pools that may hold copies.

Greedy (per batch): start from one seeded random file and repeatedly add the candidate with the
lowest score of (selected ∪ {candidate}). :func:`naive_greedy` does literally that with
:func:`score`; :func:`greedy` gets the same picks far faster via ‖ZᵀZ‖_F = ‖ZZᵀ‖_F: for every
candidate at once it forms the (n×n) Gram matrix of the standardised rows from running sums of
the selected set (the candidate shifts each dimension's mean by δ = (x_c − mean_S)/n and sets its
variance to (q + m(m+1)δ² − 2δr)/(n−1)), so each pick costs one (N×d)·(d×m²/2) matrix product.

Ties: scores within 1e-9·(best + d) of the best are equal (at n = 2 every candidate ties in
exact arithmetic, and the two methods round differently; best + d bounds ‖C‖_F², the scale of
the rounding error); among tied candidates the one earliest in a seeded random priority order
wins. Both methods share that rule, so they pick identically.

Two variants (``variant=``, CLI ``--disf-variant``, YAML ``select.disf_variant``):

- ``exact`` (default): everything above: float64, the paper's z-score (constant columns z = 0),
  the tolerance/seeded-priority tie rule, the pool shuffled with ``seed`` before it is cut into
  batches, a last partial batch given its proportional share of picks.
- ``released``: what the published selection script (MediaBrain-SJTU/DiSF, select_disf.py) does,
  as the project's method notes (PAPERS.md) record it. It differs from ``exact`` in exactly these places:
  1. precision: features stay float32 and every step of the score is float32;
  2. standardisation: z = (x − mean) / sqrt(1e-8 + var) with var of ddof 1 — the epsilon shrinks
     the z-score of a dimension whose values nearly agree, so at n = 2 (where ``exact`` sees a
     pure tie) the second pick is the candidate closest to the first file in some dimension;
  3. score: divided by 10000, and 10000 is also the "no candidate yet" bound, so a candidate is
     taken only if its score is below it (always, for d ≤ 10000; above that it is an error);
  4. ties: candidates are scanned in index order and replace the best only if strictly lower,
     so the lowest index wins and float32 rounding, not a seed, settles near-ties;
  5. batches: no shuffle; ``processes`` contiguous ranges of floor(n / processes) files (the
     script uses ``cpu_count()``), each cut into consecutive full batches of ``batch_size``;
     files past the last full batch of a range, and past processes·floor(n / processes), are
     never considered;
  6. first pick: uniform in the batch like the script's ``random.randint(0, batch_size − 1)``,
     but drawn from ``numpy.random.default_rng([seed, batch_id])`` (batch_id = position in the
     plan) instead of unseeded Python ``random``, so a run can be repeated.
  Picks are those of the released loops up to float32 rounding: where two candidates' scores
  agree within float32 rounding the order of summation decides, here as between two GPUs.

``exact`` is the default because its choices depend on the features only: no epsilon bias toward
files that copy the first pick in one dimension, no rounding or file-order effects, every file of
the pool considered (the released layout silently drops up to processes·batch_size files and
batches files in storage order, so one batch may hold a single domain), and the same selection on
every machine (the released layout depends on the selecting machine's CPU count).

Distributed use: :func:`batch_plan` is a pure function of (n, batch_size, seed) and each batch's
random start depends only on (seed, batch_id), so under torchrun rank r may run
``select_batches(features, plan, range(r, len(plan), world), ...)`` and the union of all ranks'
results, merged in batch-id order with :func:`merge_batches`, equals ``select(...)``.
"""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

TIE_RTOL = 1e-9
VARIANTS = ("exact", "released")
RELEASED_EPS = 1e-8  # the released script's epsilon under the square root of the variance
RELEASED_SCALE = 10000.0  # its score divisor, and the initial "best score" every pick must beat
_RELEASED_CHUNK = 1 << 22  # float32 values per candidate chunk (16 MiB per buffer)


class DisfError(ValueError):
    """Bad input to DiSF selection; the message says which argument or row."""


def _standardise(x: np.ndarray) -> np.ndarray:
    """Column z-scores (ddof=1) with z = 0 on exactly-constant columns."""
    x = np.asarray(x, dtype=np.float64)
    const = x.max(axis=0) == x.min(axis=0)
    mu = x.mean(axis=0)
    sd = x.std(axis=0, ddof=1)
    sd[const] = 1.0
    z = (x - mu) / sd
    z[:, const] = 0.0
    return z


def score(features_subset: np.ndarray) -> float:
    """DiSF score Σ_{i≠j} C_ij² of a set of rows (the paper's formula, d×d form, no /10000).

    Sets with fewer than 2 rows have no correlation and score 0.
    """
    x = np.asarray(features_subset, dtype=np.float64)
    if x.ndim != 2:
        raise DisfError(f"score() needs a 2-D (files, dims) array, got shape {x.shape}")
    n = x.shape[0]
    if n < 2:
        return 0.0
    z = _standardise(x)
    c = z.T @ z / (n - 1)
    return float((c * c).sum() - (np.diag(c) ** 2).sum())


def _priority(n: int, tie_seed: int) -> np.ndarray:
    """Rank of each candidate in a seeded random order (lower wins a tie)."""
    rank = np.empty(n, dtype=np.int64)
    rank[np.random.default_rng(tie_seed).permutation(n)] = np.arange(n)
    return rank


def _argmin_tied(scores: np.ndarray, cand: np.ndarray, rank: np.ndarray, d: int) -> int:
    """The shared tie rule: scores within TIE_RTOL·(best + d) of the best tie (‖C‖_F² ≤ best + d
    sets the scale of rounding error); among them the lowest priority rank wins."""
    best = scores.min()
    tied = cand[scores <= best + TIE_RTOL * (abs(best) + d)]
    return int(tied[np.argmin(rank[tied])])


def _check(features: np.ndarray, k: int, init: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise DisfError(f"features must be a 2-D (files, dims) array, got shape {x.shape}")
    n = x.shape[0]
    init = [int(i) for i in init]
    if not init:
        raise DisfError("init must hold at least one starting row")
    if len(set(init)) != len(init) or min(init) < 0 or max(init) >= n:
        raise DisfError(f"init {init} must be distinct row indices in [0, {n})")
    if not len(init) <= k <= n:
        raise DisfError(f"k={k} must lie between len(init)={len(init)} and the number of rows {n}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DisfError(f"features hold NaN/inf in {int(bad.sum())} row(s), first at row {int(np.argmax(bad))}")
    return x, init


def naive_greedy(features: np.ndarray, k: int, init: Sequence[int] = (0,), *, tie_seed: int = 0) -> list[int]:
    """Reference greedy: re-score every candidate from scratch with :func:`score` (tests/bench only)."""
    x, picked = _check(features, k, init)
    rank = _priority(x.shape[0], tie_seed)
    while len(picked) < k:
        cand = np.setdiff1d(np.arange(x.shape[0]), picked)
        scores = np.array([score(x[picked + [c]]) for c in cand])
        picked.append(_argmin_tied(scores, cand, rank, x.shape[1]))
    return picked


class _Workspace:
    """Buffers reused across picks: fresh (rows × dims) temporaries every pick cost more in
    page faults than in arithmetic. The pair buffers grow (doubling) when a token quota makes
    the number of picks unknown in advance."""

    def __init__(self, rows: int, dims: int, k: int):
        self.delta = np.empty((rows, dims))
        self.w = np.empty((rows, dims))
        self.wd = np.empty((rows, dims))
        self.pair_flat = self.tmp_flat = np.empty(0)
        self._grow(rows * max(1, k * (k - 1) // 2))

    def _grow(self, size: int) -> None:
        self.pair_flat = np.empty(size)
        self.tmp_flat = np.empty(size)

    def pairs(self, rows: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        if rows * count > self.pair_flat.size:
            self._grow(max(rows * count, 2 * self.pair_flat.size))
        return (self.pair_flat[: rows * count].reshape(rows, count),
                self.tmp_flat[: rows * count].reshape(rows, count))


def _candidate_scores(x: np.ndarray, picked: list[int], ws: _Workspace | None = None) -> np.ndarray:
    """score(x[picked + [c]]) for every row c of x at once, via the (m+1)×(m+1) Gram matrices.

    Entries for rows already in ``picked`` are meaningless; callers mask them.
    """
    rows, d = x.shape
    s = x[picked]
    m = len(picked)
    n = m + 1
    if ws is None:
        ws = _Workspace(rows, d, n)
    mean_s = s.mean(axis=0)
    u = s - mean_s  # (m, d) deviations of the selected rows from their own mean
    q = (u * u).sum(axis=0)
    r = u.sum(axis=0)  # ~0; kept so the variance update stays exact to rounding
    col_const = s.max(axis=0) == s.min(axis=0)

    delta = np.subtract(x, mean_s, out=ws.delta)
    delta *= 1.0 / n  # shift of each dimension's mean when the candidate joins
    var = np.multiply(delta, m * (m + 1), out=ws.w)
    var -= 2.0 * r
    var *= delta
    var += q  # sum of squared deviations of selected ∪ {candidate}, per dimension
    nonconst = np.full(rows, float(d))
    cc = np.flatnonzero(col_const)
    if cc.size:
        # Constant over the new set: constant over the selection and the candidate equals it.
        const = x[:, cc] == s[0, cc]
        sub = var[:, cc]
        sub[const] = 1.0
        var[:, cc] = sub
        nonconst -= const.sum(axis=1)
    w = np.divide(n - 1, var, out=var)  # 1/σ² per candidate and dimension
    if cc.size:
        sub = w[:, cc]
        sub[const] = 0.0
        w[:, cc] = sub
    wd = np.multiply(w, delta, out=ws.wd)
    wdd = np.einsum("cj,cj->c", wd, delta)

    ia, ib = np.triu_indices(m)
    g_ss, tmp = ws.pairs(rows, len(ia))
    np.matmul(w, (u[ia] * u[ib]).T, out=g_ss)  # Σ_j w_cj u_aj u_bj for pairs a ≤ b
    lin = wd @ u.T  # Σ_j w_cj δ_cj u_aj
    g_ss -= np.take(lin, ia, axis=1, out=tmp)
    g_ss -= np.take(lin, ib, axis=1, out=tmp)
    g_ss += wdd[:, None]
    g_ss *= g_ss
    g_sc = m * (lin - wdd[:, None])
    g_cc = m * m * wdd
    sumsq = g_ss @ np.where(ia == ib, 1.0, 2.0) + 2.0 * (g_sc * g_sc).sum(axis=1) + g_cc * g_cc
    return sumsq / float(m * m) - nonconst


def _quota_left(picked: list[int], costs: np.ndarray | None, quota: float | None) -> bool:
    """Whether a token quota still asks for another pick (always, without a quota)."""
    return quota is None or float(np.sum(costs[picked])) < quota


def greedy(features: np.ndarray, k: int, init: Sequence[int] = (0,), *, tie_seed: int = 0,
           costs: np.ndarray | None = None, quota: float | None = None) -> list[int]:
    """Exact fast DiSF greedy: the same picks as :func:`naive_greedy`, in pick order.

    With ``costs`` (estimated tokens per row) and ``quota``, picking stops as soon as the picks'
    costs reach the quota (or after k picks). Memory: three (rows × dims) float64 buffers plus
    (rows × picks²/2) for the Gram entries.
    """
    x, picked = _check(features, k, init)
    rank = _priority(x.shape[0], tie_seed)
    available = np.ones(x.shape[0], dtype=bool)
    available[picked] = False
    ws = _Workspace(*x.shape, k if quota is None else min(k, 16))
    with np.errstate(divide="ignore", invalid="ignore"):  # rows already picked are masked below
        while len(picked) < k and _quota_left(picked, costs, quota):
            cand = np.flatnonzero(available)
            scores = _candidate_scores(x, picked, ws)[cand]
            c = _argmin_tied(scores, cand, rank, x.shape[1])
            picked.append(c)
            available[c] = False
    return picked


def released_scores(x: np.ndarray, picked: list[int]) -> np.ndarray:
    """The released score of ``picked + [c]`` for every row c of float32 ``x``, in float32.

    Per set U (n rows): z = (U − mean) / sqrt(1e-8 + var_ddof1), score = Σ_{i≠j} (zᵀz/(n−1))_ij²
    / 10000, computed through the n×n Gram matrix G = zzᵀ (Σ_ij (zᵀz)_ij² = Σ_ab G_ab², minus the
    diagonal Σ_j (Σ_a z_aj²)²) for all candidates at once. Entries of rows in ``picked`` are
    meaningless; callers mask them.
    """
    rows, d = x.shape
    s = x[picked]
    n = len(picked) + 1
    eps = np.float32(RELEASED_EPS)
    out = np.empty(rows, dtype=np.float32)
    step = max(1, _RELEASED_CHUNK // (n * d))
    for lo in range(0, rows, step):
        c = x[lo:lo + step]
        u = np.concatenate([np.broadcast_to(s, (len(c), n - 1, d)), c[:, None, :]], axis=1)  # (chunk, n, d)
        u = u - u.mean(axis=1, keepdims=True, dtype=np.float32)
        var = (u * u).sum(axis=1, keepdims=True, dtype=np.float32) / np.float32(n - 1)
        u /= np.sqrt(eps + var)
        g = np.matmul(u, u.transpose(0, 2, 1))
        diag = (u * u).sum(axis=1, dtype=np.float32)
        total = (g * g).sum(axis=(1, 2), dtype=np.float32) - (diag * diag).sum(axis=1, dtype=np.float32)
        out[lo:lo + step] = total / np.float32((n - 1) ** 2) / np.float32(RELEASED_SCALE)
    return out


def released_greedy(features: np.ndarray, k: int, first: int, *, costs: np.ndarray | None = None,
                    quota: float | None = None) -> list[int]:
    """The released greedy in one batch: start at ``first``; each pick is the first candidate (in
    index order) with the lowest float32 score, which must be below 10000 (a token ``quota``
    stops it as in :func:`greedy`)."""
    x = np.asarray(features, dtype=np.float32)
    _, picked = _check(x, k, (first,))
    while len(picked) < k and _quota_left(picked, costs, quota):
        scores = released_scores(x, picked)
        scores[picked] = np.inf
        c = int(np.argmin(scores))  # the first minimum: a strict '<' scan in index order
        if not scores[c] < RELEASED_SCALE:
            raise DisfError(f"released DiSF: no candidate scores below {RELEASED_SCALE:g} (d = {x.shape[1]} > 10000); "
                            "the released script would record index -1 here: use the exact variant")
        picked.append(c)
    return picked


def released_plan(n: int, batch_size: int, processes: int) -> list[np.ndarray]:
    """The released script's batches: ``processes`` contiguous ranges of floor(n / processes)
    files, each cut into consecutive full batches; the rest of the pool is never considered."""
    if processes < 1:
        raise DisfError(f"processes must be >= 1, got {processes}")
    per = n // processes
    return [np.arange(p * per + i * batch_size, p * per + (i + 1) * batch_size)
            for p in range(processes) for i in range(per // batch_size)]


def batch_plan(n: int, batch_size: int, seed: int, *, variant: str = "exact", processes: int = 1) -> list[np.ndarray]:
    """The batches of a pool of n: ``exact`` shuffles with ``seed`` and cuts (the last may be
    partial); ``released`` is :func:`released_plan`."""
    if batch_size < 1:
        raise DisfError(f"batch_size must be >= 1, got {batch_size}")
    if variant not in VARIANTS:
        raise DisfError(f"unknown DiSF variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if variant == "released":
        return released_plan(n, batch_size, processes)
    perm = np.random.default_rng(seed).permutation(n)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def batch_lengths(n: int, batch_size: int, *, variant: str = "exact", processes: int = 1) -> list[int]:
    """Lengths of the batches :func:`batch_plan` cuts a pool of n into (without drawing it)."""
    if variant == "released":
        return [batch_size] * (processes * ((n // processes) // batch_size))
    return [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])


def batch_k(batch_len: int, *, batch_size: int, k_per_batch: int | None = None, ratio: float | None = None) -> int:
    """Files to pick from a batch of ``batch_len``: a partial batch gets its proportional share, ≥ 1."""
    if (k_per_batch is None) == (ratio is None):
        raise DisfError("give exactly one of k_per_batch or ratio")
    if batch_len == 0:
        return 0
    if ratio is not None:
        if not 0.0 < ratio <= 1.0:
            raise DisfError(f"ratio must be in (0, 1], got {ratio}")
        k = round(ratio * batch_len)
    else:
        if k_per_batch < 1:
            raise DisfError(f"k_per_batch must be >= 1, got {k_per_batch}")
        k = k_per_batch if batch_len == batch_size else round(k_per_batch * batch_len / batch_size)
    return int(min(batch_len, max(1, k)))


def select_batch(features: np.ndarray, pool_idx: np.ndarray, k: int, *, seed: int, batch_id: int,
                 variant: str = "exact", costs: np.ndarray | None = None, quota: float | None = None) -> np.ndarray:
    """Greedy DiSF inside one batch; returns pool indices in pick order. With ``costs`` (of the
    batch's rows) and ``quota``, up to k picks until their costs reach the quota.

    The random start and the tie order depend only on (seed, batch_id), never on which worker
    or rank runs the batch.
    """
    pool_idx = np.asarray(pool_idx)
    if k == 0 or len(pool_idx) == 0 or quota is not None and quota <= 0:
        return pool_idx[:0]
    rng = np.random.default_rng([seed, batch_id])
    start = int(rng.integers(len(pool_idx)))
    tie_seed = int(rng.integers(2**63 - 1))
    x = np.asarray(features[pool_idx], dtype=np.float32 if variant == "released" else np.float64)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DisfError(f"features hold NaN/inf at row {int(pool_idx[np.argmax(bad)])} (batch {batch_id})")
    quota_kw = dict(costs=None if costs is None else np.asarray(costs, dtype=np.float64), quota=quota)
    if variant == "released":
        return pool_idx[released_greedy(x, k, start, **quota_kw)]
    return pool_idx[greedy(x, k, (start,), tie_seed=tie_seed, **quota_kw)]


def batch_jobs(plan: Sequence[np.ndarray], *, k_per_batch: int | None = None, ratio: float | None = None,
               batch_size: int = 1024, costs: np.ndarray | None = None,
               budget: float | None = None) -> list[tuple[int, float | None]]:
    """(k, quota) for every batch of ``plan``.

    By count: k from :func:`batch_k`, no quota. By tokens (``costs``: estimated tokens of every
    row, ``budget``): each batch's quota is its share of the budget in proportion to its own
    estimated tokens, budget · T_b / Σ T, and its greedy picks until its picks' tokens reach the
    quota (k = the batch's length is only the bound). Proportional quotas keep batches
    independent (any worker, rank or task can run any batch) and give every batch the same
    token ratio, as a fixed k gives every batch the same file ratio; the total reaches the
    budget and exceeds it by less than one document per batch.
    """
    if budget is None:
        return [(batch_k(len(b), batch_size=batch_size, k_per_batch=k_per_batch, ratio=ratio), None) for b in plan]
    if costs is None:
        raise DisfError("a token budget needs the estimated tokens of every row (costs)")
    totals = np.array([float(np.sum(costs[b])) for b in plan])
    whole = totals.sum()
    if budget <= 0 or whole <= 0:
        raise DisfError(f"token budget must be positive and below the pool's {whole:.0f} estimated tokens")
    return [(len(b), float(budget * t / whole)) for b, t in zip(plan, totals)]


def select_batches(
    features: np.ndarray,
    plan: Sequence[np.ndarray],
    batch_ids: Iterable[int],
    *,
    k_per_batch: int | None = None,
    ratio: float | None = None,
    batch_size: int = 1024,
    seed: int = 0,
    variant: str = "exact",
    costs: np.ndarray | None = None,
    budget: float | None = None,
    progress: bool = False,
) -> dict[int, np.ndarray]:
    """Run the batches ``batch_ids`` of ``plan`` (e.g. ``range(rank, len(plan), world)``)."""
    jobs = batch_jobs(plan, k_per_batch=k_per_batch, ratio=ratio, batch_size=batch_size, costs=costs, budget=budget)
    out = {}
    for b in tqdm(list(batch_ids), desc="DiSF batches", disable=not progress):
        k, quota = jobs[b]
        out[b] = select_batch(features, plan[b], k, seed=seed, batch_id=b, variant=variant,
                              costs=None if costs is None else costs[plan[b]], quota=quota)
    return out


def merge_batches(results: Iterable[dict[int, np.ndarray]]) -> np.ndarray:
    """Union of per-rank results, in batch-id order then pick order."""
    merged: dict[int, np.ndarray] = {}
    for part in results:
        merged.update(part)
    if not merged:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([merged[b] for b in sorted(merged)]).astype(np.int64)


_WORKER_FEATURES: np.ndarray | None = None


def _init_worker(features: np.ndarray) -> None:
    """Keep one reference per worker (inherited, not copied, under fork); one BLAS thread each."""
    global _WORKER_FEATURES
    _WORKER_FEATURES = features
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def _worker_batch(job: tuple) -> tuple[int, np.ndarray]:
    b, pool_idx, k, seed, variant, costs, quota = job
    return b, select_batch(_WORKER_FEATURES, pool_idx, k, seed=seed, batch_id=b, variant=variant, costs=costs,
                           quota=quota)


def plan_for(n: int, *, batch_size: int = 1024, seed: int = 0, variant: str = "exact",
             processes: int = 1) -> list[np.ndarray]:
    """:func:`batch_plan`, refusing a released layout that holds no full batch."""
    plan = batch_plan(n, batch_size, seed, variant=variant, processes=processes)
    if not plan:
        raise DisfError(f"released DiSF reads only full batches of {batch_size} inside {processes} range(s) of "
                        f"floor({n} / {processes}) = {n // processes} files: this pool has none; lower batch_size "
                        "or processes, or use the exact variant")
    return plan


def select(
    features: np.ndarray,
    *,
    k_per_batch: int | None = None,
    ratio: float | None = None,
    batch_size: int = 1024,
    seed: int = 0,
    variant: str = "exact",
    processes: int = 1,
    workers: int = 1,
    costs: np.ndarray | None = None,
    budget: float | None = None,
    batches: range | None = None,
    progress: bool = False,
) -> np.ndarray:
    """DiSF selection over a whole pool: indices into ``features``, by batch then pick order.

    ``exact``: unlike the released code, the last partial batch is not dropped: it gets its
    proportional share (see :func:`batch_k`). ``released``: the released script's layout over
    ``processes`` ranges and its scoring (module docstring). ``costs`` + ``budget``: a token
    budget instead of a count (:func:`batch_jobs`). ``batches``: run only those batches of the
    plan (one part of a sharded selection; the parts' results concatenate in batch order to the
    whole). The result does not depend on ``workers``.
    """
    if getattr(features, "ndim", None) != 2:
        raise DisfError(f"features must be a 2-D (files, dims) array, got shape {getattr(features, 'shape', None)}")
    n = features.shape[0]
    plan = plan_for(n, batch_size=batch_size, seed=seed, variant=variant, processes=processes)
    ids = range(len(plan)) if batches is None else batches
    jobs = batch_jobs(plan, k_per_batch=k_per_batch, ratio=ratio, batch_size=batch_size, costs=costs, budget=budget)
    if workers <= 1 or len(ids) <= 1:
        res = select_batches(features, plan, ids, k_per_batch=k_per_batch, ratio=ratio, batch_size=batch_size,
                             seed=seed, variant=variant, costs=costs, budget=budget, progress=progress)
        return merge_batches([res])
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    work = [(b, plan[b], jobs[b][0], seed, variant, None if costs is None else costs[plan[b]], jobs[b][1]) for b in ids]
    res = {}
    with mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(features,)) as pool:
        it = pool.imap_unordered(_worker_batch, work, chunksize=max(1, len(work) // (workers * 16)))
        for b, picked in tqdm(it, total=len(work), desc="DiSF batches", disable=not progress):
            res[b] = picked
    return merge_batches([res])
