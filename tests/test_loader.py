import json

import numpy as np
import pytest

from pretrain.data import DataError, OneEpochLoader, TokenData, eval_batches
from tests.conftest import write_manifest


def test_sequences_cross_shards_and_cover_the_stream(synthetic_data):
    data = TokenData(synthetic_data)
    stream = np.concatenate([np.load(synthetic_data.parent / s["path"]) for s in
                             json.loads(synthetic_data.read_text())["splits"]["train"]["shards"]])
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
