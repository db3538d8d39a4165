import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from pretrain import checkpoint as ckpt_io
from pretrain.config import ConfigError, from_dict
from pretrain.data import DataError
from pretrain.trainer import train
from tests.conftest import base_config, read_jsonl, write_manifest


def _train(manifest, run_dir, **sections):
    return train(from_dict(base_config(manifest, run_dir, **sections)))


def test_training_logs_learns_and_checkpoints(tmp_path, synthetic_data):
    res = _train(synthetic_data, tmp_path / "run", budget={"steps": 16}, checkpoint={"every": 4, "keep_last": 2},
                 eval={"every": 8, "batches": 2})
    train_lines = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in train_lines if r["type"] == "train"]
    evals = [r for r in train_lines if r["type"] == "eval"]
    assert [r["step"] for r in steps] == list(range(1, 17))
    assert [r["step"] for r in evals] == [8, 16]
    for key in ("loss", "lr", "lr_mult", "grad_norm", "tokens_per_s", "tokens"):
        assert key in steps[0]
    assert steps[-1]["tokens"] == 16 * 8 * 32
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.3
    # cosine with 2 warmup steps and floor 0.1, peak 3e-3: the trainer applies the schedule per step
    assert steps[0]["lr"] == pytest.approx(3e-3 * 0.5) and steps[1]["lr"] == pytest.approx(3e-3)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert ckpts == ["step-00000012", "step-00000016"]  # keep_last=2
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000016"
    assert res.final_val_loss == evals[-1]["val_loss"]
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "lr: 0.003" in saved and str(synthetic_data) in saved
    info = ckpt_io.verify(res.checkpoint)
    assert {f["path"] for f in info["files"]} >= {"model.safetensors", "optimizer.pt", "trainer.json",
                                                  "config.yaml", "rng/rank-00000.pt"}


def test_no_weight_decay_on_norms(tmp_path, synthetic_data):
    res = _train(synthetic_data, tmp_path / "run", budget={"steps": 2}, optim={"lr": 0.0, "weight_decay": 0.5},
                 schedule={"name": "constant", "warmup_steps": 0, "min_lr_ratio": 0.0}, eval={"batches": 1})
    opt = torch.load(res.checkpoint / "optimizer.pt", weights_only=True)
    decays = sorted(g["weight_decay"] for g in opt["param_groups"])
    assert decays == [0.0, 0.5]
    assert len(opt["param_groups"][1]["params"]) == 2 * 2 + 1  # 2 norms per layer x 2 layers + final norm


def test_corrupt_and_partial_checkpoints_are_named(tmp_path, synthetic_data):
    res = _train(synthetic_data, tmp_path / "run", budget={"steps": 4}, eval={"batches": 1})
    ck = res.checkpoint
    bad = tmp_path / "corrupt"
    shutil.copytree(ck, bad)
    with open(bad / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ckpt_io.CheckpointError, match="corrupt.*model.safetensors"):
        ckpt_io.verify(bad)
    partial = tmp_path / "partial"
    shutil.copytree(ck, partial)
    (partial / "checkpoint.json").unlink()
    with pytest.raises(ckpt_io.CheckpointError, match="partial"):
        ckpt_io.verify(partial)
    missing = tmp_path / "missing"
    shutil.copytree(ck, missing)
    (missing / "optimizer.pt").unlink()
    with pytest.raises(ckpt_io.CheckpointError, match="optimizer.pt is missing"):
        ckpt_io.verify(missing)
    # and the trainer refuses to resume from it
    with pytest.raises(ckpt_io.CheckpointError, match="corrupt"):
        _train(synthetic_data, tmp_path / "run2", budget={"steps": 6}, checkpoint={"resume": str(bad)})


def test_bad_inputs_fail_early(tmp_path, synthetic_data):
    with pytest.raises(DataError, match="one epoch"):
        _train(synthetic_data, tmp_path / "r1", budget={"steps": 10_000})
    with pytest.raises(ConfigError, match="smaller than the tokenizer"):
        _train(synthetic_data, tmp_path / "r2", model={"vocab_size": 64})
    with pytest.raises(DataError, match="not found"):
        _train(tmp_path / "nowhere" / "manifest.json", tmp_path / "r3")
    res = _train(synthetic_data, tmp_path / "r4", budget={"steps": 3}, eval={"batches": 1})
    other = write_manifest(tmp_path / "other", seed=5, tag="other")
    with pytest.raises(DataError, match="fingerprint"):
        _train(other, tmp_path / "r5", budget={"steps": 4}, checkpoint={"resume": str(res.checkpoint)})


def test_token_budget_and_wandb_offline(tmp_path, synthetic_data):
    res = _train(synthetic_data, tmp_path / "run", budget={"steps": None, "tokens": 3 * 8 * 32 + 5},
                 logging={"wandb_mode": "offline"}, eval={"batches": 1})
    assert res.step == 3
    assert any((tmp_path / "run" / "wandb").glob("offline-run-*"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step"] == 3 and summary["tokens"] == 3 * 8 * 32
    assert load_file(str(res.checkpoint / "model.safetensors"))


def test_prune_keeps_the_new_checkpoint_among_later_ones(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    for step in (200, 250, 300, 50):
        tmp = ckpt_io.begin(root, step)
        (tmp / "x").write_text(str(step))
        ckpt_io.finalize(root, tmp, step, keep_last=3)
    assert ckpt_io.latest(root).name == "step-00000050"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000050", "step-00000200", "step-00000250",
                                                          "step-00000300"]


def test_fresh_start_into_a_used_run_dir_is_refused_and_resume_continues(tmp_path, synthetic_data):
    _train(synthetic_data, tmp_path / "run", budget={"steps": 5, "stop_at": 3}, eval={"batches": 1})
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        _train(synthetic_data, tmp_path / "run", budget={"steps": 5}, eval={"batches": 1})
    # a torn last line (crash mid-write) does not stop the resume, and no record is duplicated
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "step": 4, "lo')
    _train(synthetic_data, tmp_path / "run", budget={"steps": 5}, eval={"batches": 1}, checkpoint={"resume": "auto"})
    steps = [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["type"] == "train"]
    assert steps == [1, 2, 3, 4, 5]


def test_too_short_validation_split_and_bad_numbers_fail_before_training(tmp_path):
    short = write_manifest(tmp_path / "short", val_tokens=20)
    with pytest.raises(DataError, match="validation split holds 20 tokens"):
        _train(short, tmp_path / "r1")
    assert not (tmp_path / "r1").exists()
    for section, bad in (("model", {"num_heads": 0}), ("logging", {"log_every": 0}), ("data", {"seq_len": 1}),
                         ("eval", {"batches": -1})):
        with pytest.raises(ConfigError, match="must be"):
            from_dict(base_config(short, tmp_path / "r2", **{section: bad}))
