import json
import os
import tracemalloc

import numpy as np
import pytest

from pretrain.config import from_dict
from pretrain.data import DataError, OneEpochLoader, TokenData, eval_batches
from pretrain.trainer import Trainer
from tests.conftest import base_config, write_manifest, write_sparse_manifest


def _stream(manifest, split="train"):
    m = json.loads(manifest.read_text())
    return np.concatenate([np.load(manifest.parent / s["path"]) for s in m["splits"][split]["shards"]])


def _reshard(manifest, sizes):
    """Rewrite the train split of ``manifest`` as shards of ``sizes`` tokens (the same stream)."""
    stream, m = _stream(manifest), json.loads(manifest.read_text())
    assert sum(sizes) == len(stream)
    for s in m["splits"]["train"]["shards"]:
        (manifest.parent / s["path"]).unlink()
    shards, lo = [], 0
    for i, n in enumerate(sizes):
        np.save(manifest.parent / f"train-{i:05d}.npy", stream[lo:lo + n])
        shards.append({"path": f"train-{i:05d}.npy", "tokens": n})
        lo += n
    m["splits"]["train"]["shards"] = shards
    manifest.write_text(json.dumps(m))
    return stream


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_sequences_cross_shards_and_cover_the_stream(synthetic_data):
    data = TokenData(synthetic_data)
    stream = _stream(synthetic_data)
    n = data.num_sequences("train", 32)
    seqs = data.sequences("train", np.arange(n), 32)
    assert np.array_equal(seqs.reshape(-1), stream[: n * 32])


def test_ranks_partition_each_global_batch(synthetic_data):
    data = TokenData(synthetic_data)
    one = OneEpochLoader(data, seq_len=32, global_batch_size=8, micro_batch_size=4, seed=3)
    ranks = [OneEpochLoader(data, seq_len=32, global_batch_size=8, micro_batch_size=2, rank=r, world_size=2, seed=3)
             for r in range(2)]
    for _ in range(3):
        whole = np.concatenate([t.numpy() for t in one.next_batch()])
        parts = np.concatenate([np.concatenate([t.numpy() for t in r.next_batch()]) for r in ranks])
        assert np.array_equal(whole, parts)


def test_budget_beyond_one_epoch_is_refused_with_both_numbers(synthetic_data):
    loader = OneEpochLoader(TokenData(synthetic_data), seq_len=32, global_batch_size=8, micro_batch_size=8)
    loader.check_budget(loader.steps_per_epoch)
    with pytest.raises(DataError) as e:
        loader.check_budget(loader.steps_per_epoch + 1)
    msg = str(e.value)
    assert f"{(loader.steps_per_epoch + 1) * 8 * 32:,}" in msg and f"{loader.num_sequences * 32:,}" in msg


def test_state_restores_position_and_refuses_other_data(tmp_path, synthetic_data):
    data = TokenData(synthetic_data)
    a = OneEpochLoader(data, seq_len=32, global_batch_size=8, micro_batch_size=8, seed=1)
    for _ in range(5):
        a.next_batch()
    b = OneEpochLoader(data, seq_len=32, global_batch_size=8, micro_batch_size=8, seed=1)
    b.load_state(a.state().to_dict())
    assert np.array_equal(a.next_batch()[0].numpy(), b.next_batch()[0].numpy())
    other = TokenData(write_manifest(tmp_path / "other", seed=9, tag="other"))
    c = OneEpochLoader(other, seq_len=32, global_batch_size=8, micro_batch_size=8, seed=1)
    with pytest.raises(DataError, match="fingerprint"):
        c.load_state(a.state().to_dict())


def test_never_wraps(tmp_path):
    data = TokenData(write_manifest(tmp_path / "small", train_tokens=32 * 20, val_tokens=64))
    loader = OneEpochLoader(data, seq_len=32, global_batch_size=8, micro_batch_size=8)
    loader.next_batch(), loader.next_batch()
    with pytest.raises(DataError, match="never wraps"):
        loader.next_batch()


def test_missing_manifest_and_shard(tmp_path):
    with pytest.raises(DataError, match="not found"):
        TokenData(tmp_path / "nothing")
    m = write_manifest(tmp_path / "d")
    (m.parent / "train-00001.npy").unlink()
    with pytest.raises(DataError, match="missing"):
        TokenData(m).num_tokens("train")


def test_eval_batches_are_fixed_strided_and_equal_in_count(tmp_path):
    data = TokenData(write_manifest(tmp_path / "d", val_tokens=32 * 9))  # 9 sequences: batches of 4, 4, 1
    full = eval_batches(data, seq_len=32, micro_batch_size=4, max_batches=0)
    r0 = eval_batches(data, seq_len=32, micro_batch_size=4, max_batches=0, rank=0, world_size=2)
    r1 = eval_batches(data, seq_len=32, micro_batch_size=4, max_batches=0, rank=1, world_size=2)
    assert [len(t) for t, _ in full] == [4, 4, 1] and all(c for _, c in full)
    assert len(r0) == len(r1) == 2  # every rank runs the same number of forwards (they are collectives)
    assert [c for _, c in r0] == [True, True] and [c for _, c in r1] == [True, False]
    assert np.array_equal(full[1][0].numpy(), r1[0][0].numpy())
    counted = sorted(t[0, 0].item() for r in (r0, r1) for t, c in r if c)
    assert counted == sorted(t[0, 0].item() for t, _ in full)


def test_many_small_shards_are_opened_lazily_and_a_bounded_number_at_once(tmp_path):
    manifest = write_manifest(tmp_path / "d", train_tokens=3_000, val_tokens=64)
    sizes = [5, 40, 0, 3, 100, 17, 1, 1, 900, 33, 0, 64, 64, 500, 1272]  # empty and sub-sequence shards
    stream = _reshard(manifest, sizes)
    before = _open_fds()
    data = TokenData(manifest, max_open_files=3)
    n = data.num_sequences("train", 32)
    assert n == 3_000 // 32 and _open_fds() == before  # sized from the manifest, nothing opened
    ids = np.random.default_rng(0).permutation(n)
    for batch in np.array_split(ids, 7):
        assert np.array_equal(data.sequences("train", batch, 32), stream[batch[:, None] * 32 + np.arange(32)])
        assert _open_fds() <= before + 3


def test_broken_shards_are_named(tmp_path):
    m = write_manifest(tmp_path / "short")
    os.truncate(m.parent / "train-00001.npy", (m.parent / "train-00001.npy").stat().st_size - 10)
    data = TokenData(m)
    data.sequences("train", np.arange(1_800), 32)
    with pytest.raises(DataError, match="train-00001.npy: file ends before its token 29,995"):
        data.sequences("train", np.array([1_874]), 32)  # found when its last tokens are read
    m = write_manifest(tmp_path / "in-a-subdirectory")
    (m.parent / "sub").mkdir()
    man = json.loads(m.read_text())
    for sh in man["splits"]["train"]["shards"]:
        (m.parent / sh["path"]).rename(m.parent / "sub" / sh["path"])
        sh["path"] = "sub/" + sh["path"]
    m.write_text(json.dumps(man))
    assert np.array_equal(TokenData(m).sequences("train", np.arange(1_875), 32).reshape(-1), _stream(m)[:60_000])
    for sh in man["splits"]["train"]["shards"]:
        (m.parent / sh["path"]).unlink()
    with pytest.raises(DataError, match=r"shard .*sub/train-00000.npy is missing \(and 1 more\)"):
        TokenData(m).num_tokens("train")
    m = write_manifest(tmp_path / "other-length")
    np.save(m.parent / "train-00001.npy", np.zeros(40_000, dtype=np.uint16))  # larger than listed: stat passes
    data = TokenData(m)
    data.sequences("train", np.arange(10), 32)  # the first shard is fine
    with pytest.raises(DataError, match=r"train-00001.npy: expected 30,000 tokens of uint16, found shape \(40000,\)"):
        data.sequences("train", np.array([1_000]), 32)
    m = write_manifest(tmp_path / "not-npy")
    (m.parent / "train-00000.npy").write_bytes(b"x" * 100_000)
    with pytest.raises(DataError, match="train-00000.npy: not a token shard"):
        TokenData(m).sequences("train", np.arange(2), 32)


def test_one_epoch_is_every_sequence_once_in_the_same_order_for_any_world_size(tmp_path):
    data = TokenData(write_manifest(tmp_path / "d", train_tokens=32 * 40 + 7, val_tokens=64))
    orders = {}
    for world in (1, 2, 4):
        ledgers = [tmp_path / f"w{world}" / f"rank-{r}.jsonl" for r in range(world)]
        loaders = [OneEpochLoader(data, seq_len=32, global_batch_size=8, micro_batch_size=8 // world, rank=r,
                                  world_size=world, seed=5, ledger_path=ledgers[r]) for r in range(world)]
        for _ in range(5):
            for ld in loaders:
                ld.next_batch()
        lines = [json.loads(ln) for f in ledgers for ln in f.read_text().splitlines()]
        orders[world] = [i for step in range(5) for r in sorted(lines, key=lambda x: x["rank"])
                         if r["step"] == step for i in r["ids"]]
    assert orders[1] == orders[2] == orders[4]
    assert sorted(orders[1]) == list(range(40))


def test_loader_state_records_its_order_and_refuses_an_unknown_one(synthetic_data):
    data = TokenData(synthetic_data)
    a = OneEpochLoader(data, seq_len=32, global_batch_size=8, micro_batch_size=8, seed=1)
    state = a.state().to_dict()
    assert state["order"] == {"name": "feistel", "version": 1, "rounds": 8}
    b = OneEpochLoader(data, seq_len=32, global_batch_size=8, micro_batch_size=8, seed=1)
    with pytest.raises(DataError, match="feistel/2 .*does not know that order"):
        b.load_state(state | {"order": {"name": "feistel", "version": 2, "rounds": 8}})


def _traced_peak(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_start_up_memory_does_not_grow_with_the_data(tmp_path):
    """2**30 tokens (33.5M sequences) against 2**20: a materialised order alone would be 268 MB of int64."""
    small, big = (write_sparse_manifest(tmp_path / f"d{b}", train_tokens=1 << b, shard_tokens=1 << 28, vocab=256,
                                        val_tokens=1 << (b - 6)) for b in (20, 30))

    def loader_and_eval():
        data = TokenData(big)
        loader = OneEpochLoader(data, seq_len=32, global_batch_size=8, micro_batch_size=4, seed=0)
        loader.check_budget(loader.steps_per_epoch)
        assert [t.shape for t in loader.next_batch()] == [(4, 32), (4, 32)]
        val = eval_batches(data, seq_len=32, micro_batch_size=4, max_batches=0)  # the whole split, read when used
        assert len(val) == (1 << 24) // 32 // 4 and val[-1][0].shape == (4, 32)

    assert _traced_peak(loader_and_eval) < 1 << 20

    def trainer(manifest):  # budget probe, loader, validation check: a whole epoch's budget
        steps = TokenData(manifest).num_sequences("train", 32) // 8
        cfg = from_dict(base_config(manifest, tmp_path / "run", data={"manifest": str(manifest), "seq_len": 32},
                                    budget={"steps": steps}))
        return lambda: Trainer(cfg).engine.close()

    trainer(small)()  # imports done once, outside the measurement
    assert _traced_peak(trainer(big)) - _traced_peak(trainer(small)) < 1 << 20
