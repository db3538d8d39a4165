"""DiSF: the fast greedy must pick exactly what the from-scratch reference picks."""
import numpy as np
import pytest

from data_select import disf


def _corrcoef_score(x):
    """Independent check of the paper's score: off-diagonal squares of np.corrcoef."""
    c = np.corrcoef(x, rowvar=False)
    return float((c**2).sum() - (np.diag(c) ** 2).sum())


def test_score_matches_corrcoef():
    x = np.random.default_rng(1).normal(size=(12, 7))
    assert disf.score(x) == pytest.approx(_corrcoef_score(x), rel=1e-12)
    assert disf.score(x) > 0


def test_score_constant_column_counts_as_uncorrelated():
    x = np.random.default_rng(2).normal(size=(9, 5))
    with_const = np.column_stack([x, np.full(9, 4.2)])
    assert disf.score(with_const) == pytest.approx(disf.score(x), rel=1e-12)


def test_score_of_two_rows_is_all_pairs_correlated():
    x = np.random.default_rng(3).normal(size=(2, 6))
    assert disf.score(x) == pytest.approx(6 * 5)
    assert disf.score(x[:1]) == 0.0


@pytest.mark.parametrize(
    "n,d,k,seed",
    [(40, 8, 10, 0), (30, 60, 12, 1), (25, 3, 8, 2), (60, 20, 16, 3), (16, 120, 9, 4)],
)
def test_greedy_equals_naive(n, d, k, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))  # correlated dims
    x[:, 0] = 1.5  # zero-variance dimension
    x[::3, d - 1] = 0.0  # partly constant: constant over some subsets only
    init = (int(rng.integers(n)),)
    for tie_seed in (0, 7):
        fast = disf.greedy(x, k, init, tie_seed=tie_seed)
        assert fast == disf.naive_greedy(x, k, init, tie_seed=tie_seed)
        assert len(set(fast)) == k and fast[0] == init[0]


def test_greedy_picks_lowest_score_each_step():
    x = np.random.default_rng(5).normal(size=(30, 10))
    picked = disf.greedy(x, 6, (4,))
    for step in range(2, 6):
        chosen = disf.score(x[picked[: step + 1]])
        others = [disf.score(x[picked[:step] + [c]]) for c in range(30) if c not in picked[:step]]
        assert chosen <= min(others) * (1 + 1e-9)


def test_second_pick_is_a_seeded_tie():
    x = np.random.default_rng(6).normal(size=(50, 4))
    seconds = {disf.greedy(x, 2, (0,), tie_seed=s)[1] for s in range(6)}
    assert len(seconds) > 1  # at n = 2 every candidate ties; the seed decides
    for s in range(3):
        assert disf.greedy(x, 2, (0,), tie_seed=s) == disf.naive_greedy(x, 2, (0,), tie_seed=s)


def test_multi_row_init_and_float32_input():
    x = np.random.default_rng(8).normal(size=(35, 12)).astype(np.float32)
    assert disf.greedy(x, 7, (3, 9)) == disf.naive_greedy(x, 7, (3, 9))


def test_bad_input_errors():
    x = np.random.default_rng(9).normal(size=(10, 3))
    with pytest.raises(disf.DisfError, match="k=11"):
        disf.greedy(x, 11, (0,))
    x[4, 1] = np.nan
    with pytest.raises(disf.DisfError, match="row 4"):
        disf.greedy(x, 3, (0,))
    with pytest.raises(disf.DisfError, match="exactly one"):
        disf.select(x, k_per_batch=2, ratio=0.5)
    with pytest.raises(disf.DisfError, match="2-D"):
        disf.select(np.zeros(5), ratio=0.5)


def _pool(n=300, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 3)) @ rng.normal(size=(3, d)) + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def test_select_deterministic_and_independent_of_workers():
    x = _pool()
    a = disf.select(x, ratio=1 / 16, batch_size=64, seed=3)
    assert np.array_equal(a, disf.select(x, ratio=1 / 16, batch_size=64, seed=3))
    assert np.array_equal(a, disf.select(x, ratio=1 / 16, batch_size=64, seed=3, workers=2))
    assert not np.array_equal(a, disf.select(x, ratio=1 / 16, batch_size=64, seed=4))
    assert len(np.unique(a)) == len(a) and a.min() >= 0 and a.max() < len(x)


@pytest.mark.parametrize("kw,expected", [({"ratio": 1 / 16}, [8, 8, 3]), ({"k_per_batch": 8}, [8, 8, 3]),
                                         ({"k_per_batch": 1}, [1, 1, 1])])
def test_partial_last_batch_gets_its_share(kw, expected):
    x = _pool(n=300)  # batches of 128, 128, 44
    sel = disf.select(x, batch_size=128, seed=1, **kw)
    plan = disf.batch_plan(300, 128, 1)
    counts = [int(np.isin(sel, p).sum()) for p in plan]
    assert counts == expected
    assert len(sel) == sum(expected)
    # by batch, then pick order: each batch's picks are contiguous in the output
    bounds = np.cumsum([0] + expected)
    for b, p in enumerate(plan):
        assert np.isin(sel[bounds[b] : bounds[b + 1]], p).all()


def test_rank_sharding_merges_to_select():
    x = _pool(n=500)
    plan = disf.batch_plan(len(x), 64, 11)
    parts = [disf.select_batches(x, plan, range(r, len(plan), 3), ratio=0.1, batch_size=64, seed=11) for r in range(3)]
    assert np.array_equal(disf.merge_batches(parts), disf.select(x, ratio=0.1, batch_size=64, seed=11))


def test_select_batch_matches_greedy_in_batch():
    x = _pool(n=200)
    plan = disf.batch_plan(200, 100, 0)
    picks = disf.select_batch(x, plan[1], 5, seed=0, batch_id=1)
    assert len(picks) == 5 and np.isin(picks, plan[1]).all()
    local = [int(np.flatnonzero(plan[1] == p)[0]) for p in picks]
    rng = np.random.default_rng([0, 1])  # the batch's own stream: start, then tie seed
    assert local[0] == int(rng.integers(len(plan[1])))
    assert disf.naive_greedy(x[plan[1]], 5, local[:1], tie_seed=int(rng.integers(2**63 - 1))) == local


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_equals_naive_on_discrete_features(seed):
    """Binary features: many exact ties and sets where dimensions turn constant."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, size=(20, 6)).astype(np.float64)
    assert disf.greedy(x, 8, (0,), tie_seed=seed) == disf.naive_greedy(x, 8, (0,), tie_seed=seed)


# --------------------------------------------------------------------------- the released variant


def naive_released_score(u: np.ndarray) -> np.float32:
    """The released script's score, written from its description: float32 throughout, epsilon
    under the square root of the ddof-1 variance, d x d correlation, off-diagonal squares / 10000."""
    u = np.asarray(u, dtype=np.float32)
    n = u.shape[0]
    z = u - u.mean(axis=0, keepdims=True)
    z = z / np.sqrt(np.float32(1e-8) + z.var(axis=0, ddof=1, keepdims=True))
    corr = z.T @ z / np.float32(n - 1)
    off = corr[~np.eye(corr.shape[0], dtype=bool)]
    return (off * off).sum() / np.float32(10000)


def naive_released_select(x, *, batch_size, k, processes, seed):
    """The released loops: per process a contiguous range of n // processes rows, consecutive full
    batches, first pick uniform (seeded by (seed, batch number) as documented), then every
    candidate in index order, kept only if strictly below the best so far (which starts at 10000).
    Returns the picks and the smallest relative gap between a pick and the runner-up."""
    n = len(x)
    per = n // processes
    picks, gaps, batch_id = [], [], 0
    for p in range(processes):
        for it in range(per // batch_size):
            base = p * per + it * batch_size
            batch = x[base:base + batch_size]
            sel = [int(np.random.default_rng([seed, batch_id]).integers(batch_size))]
            batch_id += 1
            for _ in range(k - 1):
                best, best_j, runner_up = np.float32(10000), -1, np.inf
                for j in range(batch_size):
                    if j in sel:
                        continue
                    s = naive_released_score(batch[sel + [j]])
                    if s < best:
                        best, best_j, runner_up = s, j, best
                    elif s < runner_up:
                        runner_up = s
                sel.append(best_j)
                gaps.append((runner_up - best) / best if best else np.inf)
            picks.extend(base + j for j in sel)
    return picks, min(gaps)


@pytest.mark.parametrize("n,d,batch_size,k,processes,seed", [(203, 6, 16, 4, 3, 0), (100, 12, 24, 5, 1, 3),
                                                             (130, 5, 20, 3, 2, 7)])
def test_released_equals_the_naive_released_loops(n, d, batch_size, k, processes, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.05).astype(np.float32)  # encoder-like scale
    want, gap = naive_released_select(x, batch_size=batch_size, k=k, processes=processes, seed=seed)
    assert gap > 2e-6, "test data must not leave a choice to the float32 summation order"
    for workers in (1, 2):
        got = disf.select(x, k_per_batch=k, batch_size=batch_size, seed=seed, variant="released",
                          processes=processes, workers=workers)
        assert got.tolist() == want
    per = n // processes
    considered = {p * per + i for p in range(processes) for i in range(per // batch_size * batch_size)}
    assert set(want) <= considered and len(want) == processes * (per // batch_size) * k


def test_released_scores_match_the_naive_score():
    """Both are float32; they sum in different orders (Gram n x n vs correlation d x d), which
    moves a score by well under 1e-6 of itself: any two candidates further apart are ordered alike."""
    rng = np.random.default_rng(5)
    for d, m in ((4, 1), (17, 3), (40, 8), (9, 15)):
        x = (rng.normal(size=(30, d)) @ rng.normal(size=(d, d)) * 0.05).astype(np.float32)
        picked = [int(i) for i in rng.choice(30, m, replace=False)]
        fast = disf.released_scores(x, picked)
        for c in set(range(30)) - set(picked):
            assert fast[c] == pytest.approx(naive_released_score(x[picked + [c]]), rel=1e-6)


def test_released_ties_go_to_the_lowest_index():
    """Exact twins score bit-identically; the strict '<' scan keeps the first of them."""
    rng = np.random.default_rng(11)
    half = (rng.normal(size=(12, 5)) * 0.05).astype(np.float32)
    x = np.concatenate([half, half])  # row j + 12 is a copy of row j
    want, _ = naive_released_select(x, batch_size=24, k=6, processes=1, seed=2)
    got = disf.select(x, k_per_batch=6, batch_size=24, seed=2, variant="released").tolist()
    assert got == want
    assert all(not (j >= 12 and j - 12 not in got[:i]) for i, j in enumerate(got[1:], 1)), got


def test_released_second_pick_is_decided_by_the_epsilon():
    """At n = 2 every |correlation| is 1 but for the epsilon: the released score prefers the
    candidate that nearly equals the first file in one dimension; exact sees a seeded tie."""
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(30, 8)) * 0.05).astype(np.float32)
    first = int(np.random.default_rng([0, 0]).integers(30))
    near = (first + 7) % 30
    x[near, 3] = x[first, 3] + np.float32(1e-4)
    assert disf.select(x, k_per_batch=2, batch_size=30, variant="released").tolist() == [first, near]
    assert len({int(disf.select(x, k_per_batch=2, batch_size=30, seed=s)[1]) for s in range(6)}) > 1


def test_released_is_float32():
    """From the first file, moves of 4 and of 1 in both dimensions: in float32 the epsilon is
    absorbed by either variance and the two z-scores are bit-identical (a tie, so the lower index);
    in float64 the epsilon still weighs on the smaller move, which would win."""
    x = np.array([[0, 0], [4, 4], [1, 1]], np.float32)
    assert naive_released_score(x[[0, 1]]) == naive_released_score(x[[0, 2]])
    assert disf.released_greedy(x, 2, 0) == [0, 1]
    u = x.astype(np.float64)

    def score64(rows):
        z = u[rows] - u[rows].mean(axis=0)
        z /= np.sqrt(1e-8 + z.var(axis=0, ddof=1))
        c = z.T @ z
        return (c * c).sum() - (np.diag(c) ** 2).sum()

    assert score64([0, 2]) < score64([0, 1])


def test_released_layout_and_clear_errors():
    assert [b.tolist() for b in disf.batch_plan(11, 2, 0, variant="released", processes=2)] == [[0, 1], [2, 3], [5, 6], [7, 8]]
    with pytest.raises(disf.DisfError, match="full batches"):
        disf.select(np.zeros((10, 3), np.float32), k_per_batch=2, batch_size=8, variant="released", processes=2)
    with pytest.raises(disf.DisfError, match="unknown DiSF variant"):
        disf.batch_plan(10, 2, 0, variant="paper")
