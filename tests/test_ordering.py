"""The epoch order: a seeded bijection of [0, N) computed per position, recorded in the loader state."""
import json

import numpy as np
import pytest

from pretrain import checkpoint as ckpt_io
from pretrain.config import from_dict
from pretrain.data import DataError
from pretrain.ordering import FeistelOrder, PermutationOrder, make_order
from pretrain.trainer import train
from tests.conftest import base_config, read_jsonl

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def _mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _feistel_reference(n, seed, p):
    """feistel/1 as docs/FORMATS.md defines it, in plain Python integers, one position at a time."""
    b = max(2, (n - 1).bit_length())
    lo = b // 2
    keys = [_mix((seed + (i + 1) * GAMMA) & M64) for i in range(8)]

    def perm(x):
        left, right, wl, wr = x >> lo, x & ((1 << lo) - 1), b - lo, lo
        for k in keys:
            left, right, wl, wr = right, left ^ (_mix(right ^ k) & ((1 << wl) - 1)), wr, wl
        return (left << wr) | right

    x = perm(p)
    while x >= n:
        x = perm(x)
    return x


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 31, 100, 1023, 1024, 1025, 4097, 65_537, 99_991])
@pytest.mark.parametrize("seed", [0, 7])
def test_feistel_order_is_a_permutation(n, seed):
    ids = FeistelOrder(n, seed)(np.arange(n))
    assert ids.dtype == np.int64
    assert np.array_equal(np.sort(ids), np.arange(n))


def test_feistel_matches_its_documented_definition():
    for n, seed in ((1, 0), (3, 5), (1000, 0), (1025, 123), (3_000_000_000_000 // 2048, 42)):
        positions = np.unique(np.linspace(0, n - 1, 40).astype(np.int64))
        got = FeistelOrder(n, seed)(positions)
        assert got.tolist() == [_feistel_reference(n, seed, int(p)) for p in positions]


def test_feistel_order_looks_uniformly_random():
    n = 100_003
    ids = FeistelOrder(n, 1)(np.arange(n)).astype(np.float64)
    # for a uniform random permutation: correlation of position and id ~ N(0, 1/n); E|id(p+1) - id(p)| = n/3;
    # fixed points ~ Poisson(1)
    assert abs(np.corrcoef(np.arange(n), ids)[0, 1]) < 5 / np.sqrt(n)
    assert np.mean(np.abs(np.diff(ids))) / n == pytest.approx(1 / 3, abs=0.01)
    assert np.sum(ids == np.arange(n)) < 10
    other = FeistelOrder(n, 2)(np.arange(n))
    assert np.mean(other == ids) < 0.001  # another seed is another order


def test_positions_are_computed_independently():
    order = FeistelOrder(10_007, 3)
    whole = order(np.arange(10_007))
    assert all(order(np.array([p]))[0] == whole[p] for p in (0, 1, 5_000, 10_006))
    assert np.array_equal(order(np.arange(300, 700)), whole[300:700])
    with pytest.raises(IndexError):
        order(np.array([10_007]))


def test_legacy_permutation_is_numpys():
    assert np.array_equal(PermutationOrder(50, 4)(np.arange(50)), np.random.default_rng(4).permutation(50))
    with pytest.raises(ValueError, match="unknown order"):
        make_order("shuffle", 10, 0)


def _strip_order(ckpt):
    """Make ``ckpt`` look written before orders were recorded (and keep its integrity listing true)."""
    state = json.loads((ckpt / "trainer.json").read_text())
    del state["loader"]["order"]
    (ckpt / "trainer.json").write_text(json.dumps(state))
    listing = json.loads((ckpt / ckpt_io.MANIFEST).read_text())
    f = ckpt / "trainer.json"
    for entry in listing["files"]:
        if entry["path"] == "trainer.json":
            entry["bytes"], entry["sha256"] = f.stat().st_size, ckpt_io.sha256_file(f)
    (ckpt / ckpt_io.MANIFEST).write_text(json.dumps(listing))


def test_resume_refuses_another_order_and_old_checkpoints_continue_in_theirs(tmp_path, synthetic_data):
    def run(run_dir, stop_at=None, **data):  # one budget of 4 steps throughout: only the order differs
        return train(from_dict(base_config(synthetic_data, run_dir, budget={"steps": 4, "stop_at": stop_at},
                                           eval={"batches": 1}, data={"ledger": True, **data},
                                           checkpoint={"resume": "auto"})))

    new = tmp_path / "new"
    ckpt = run(new, 2).checkpoint
    assert json.loads((ckpt / "trainer.json").read_text())["loader"]["order"] == FeistelOrder.spec
    with pytest.raises(DataError, match=r"order is feistel/1 \(rounds=8\), this run's is permutation/0.*"
                                        r"set data.order=feistel"):
        run(new, order="permutation")

    old = tmp_path / "old"  # what budgetlm wrote before the order was recorded: numpy's permutation, no "order"
    _strip_order(run(old, 2, order="permutation").checkpoint)
    with pytest.raises(DataError, match=r"permutation/0 \(not recorded.*this run's is feistel/1.*"
                                        r"set data.order=permutation"):
        run(old)
    run(old, order="permutation")
    seen = [i for r in read_jsonl(old / "ledger" / "rank-00000.jsonl") for i in r["ids"]]
    n = 60_000 // 32  # the synthetic data's sequences of 32 tokens
    assert seen == np.random.default_rng(0).permutation(n)[:4 * 8].tolist()
