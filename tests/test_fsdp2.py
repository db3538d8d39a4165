"""FSDP2's sharded (DCP) checkpoints outside the training run: export to HF, branch, integrity, and
how they move (or are refused) between engines."""
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from pretrain import checkpoint as ckpt_io
from pretrain.cli import main as pretrain_main
from pretrain.config import from_dict
from pretrain.engines.weights import read_full
from pretrain.trainer import train
from tests.conftest import ROOT, base_config, free_port, python_env, read_jsonl, torchrun_cmd, write_config
from tests.test_export import assert_loads_without_project_code_with_loss

WSD = {"name": "wsd", "warmup_steps": 2, "decay_steps": 4, "decay_shape": "1-sqrt", "min_lr_ratio": 0.0}


def _run(cmd, expect=0):
    p = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == expect, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory, fixture_tokens):
    """A 10-step WSD run (decay over the last 4) on 2 processes, keeping the checkpoint where the decay starts."""
    tmp = tmp_path_factory.mktemp("fsdp2-run")
    cfg = base_config(fixture_tokens, tmp / "main", budget={"steps": 10}, schedule=WSD, data={"seq_len": 64},
                      checkpoint={"at_steps": [6]}, eval={"every": 0, "batches": 2}, dist={"engine": "fsdp2"})
    _run(torchrun_cmd(2, "train", str(write_config(tmp / "cfg.yaml", cfg)), port=free_port()))
    return tmp / "main"


def test_export_consolidates_the_shards_into_an_hf_model(tmp_path, fsdp2_run, fixture_tokens):
    out = tmp_path / "hf"
    assert pretrain_main(["export", str(fsdp2_run), "--out", str(out)]) == 0
    summary = read_jsonl(fsdp2_run / "metrics.jsonl")[-1]
    assert summary["type"] == "eval" and summary["step"] == 10
    assert_loads_without_project_code_with_loss(out, fixture_tokens, summary["val_loss"], "LlamaForCausalLM", batches=2)


def test_branch_from_a_sharded_checkpoint_on_one_process(tmp_path, fsdp2_run):
    """The WSD main run decayed from step 6 on 2 processes; a branch from its step-6 checkpoint decays the
    same way on 1 process (the checkpoint reshards) and ends at the main run's loss and weights."""
    res = pretrain_main(["branch", "--from", str(fsdp2_run / "checkpoints" / "step-00000006"), "--decay-steps", "4",
                         "--out", str(tmp_path / "b")])
    assert res == 0
    main_log = {(r["type"], r["step"]): r for r in read_jsonl(fsdp2_run / "metrics.jsonl")}
    for r in read_jsonl(tmp_path / "b" / "metrics.jsonl"):
        key = "loss" if r["type"] == "train" else "val_loss"
        assert r[key] == pytest.approx(main_log[(r["type"], r["step"])][key], abs=1e-4), r
    a, b = read_full(fsdp2_run / "checkpoints" / "step-00000010"), read_full(tmp_path / "b" / "checkpoints" / "step-00000010")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert (tmp_path / "b" / "hf" / "model.safetensors").is_file()


def test_damaged_shard_is_named_with_its_writer(tmp_path, fsdp2_run):
    bad = tmp_path / "bad"
    shutil.copytree(fsdp2_run / "checkpoints" / "step-00000010", bad)
    with open(bad / "dcp" / "__1_0.distcp", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ckpt_io.CheckpointError, match=r"corrupt: dcp/__1_0.distcp \(written by rank 1\)"):
        ckpt_io.verify(bad)


def test_engines_refuse_each_others_optimizer_state_and_share_weights(tmp_path, fsdp2_run, fixture_tokens, capsys):
    """Resuming across fsdp2 <-> accelerate is refused with both engines named and the way out; that way
    (a new run from the weights alone) loads exactly the checkpoint's weights, in both directions."""
    sharded = fsdp2_run / "checkpoints" / "step-00000006"
    cfg = base_config(fixture_tokens, tmp_path / "acc", budget={"steps": 10}, schedule=WSD, data={"seq_len": 64},
                      eval={"every": 0, "batches": 1}, checkpoint={"resume": str(sharded)})
    with pytest.raises(ckpt_io.CheckpointError, match="written by the fsdp2 engine.*uses the accelerate engine.*"
                                                      "dist.engine=fsdp2.*init.load_optimizer=false"):
        train(from_dict(cfg))

    # the way out: weights only (lr 0 keeps them as loaded); the saved full weights equal the consolidated shards
    cfg["checkpoint"]["resume"], cfg["budget"]["steps"], cfg["optim"]["lr"] = "none", 7, 0.0
    cfg["init"] = {"checkpoint": str(sharded), "load_optimizer": False}
    res = train(from_dict(cfg))
    got, want = load_file(str(res.checkpoint / "model.safetensors")), read_full(sharded)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

    # and the reverse: the accelerate checkpoint refused by fsdp2 for a resume, accepted for its weights
    path = write_config(tmp_path / "f.yaml", base_config(fixture_tokens, tmp_path / "f", budget={"steps": 10},
                                                         schedule=WSD, data={"seq_len": 64}, optim={"lr": 0.0},
                                                         eval={"every": 0, "batches": 1}, dist={"engine": "fsdp2"}))
    p = _run([sys.executable, "-m", "pretrain", "train", str(path), f"checkpoint.resume={res.checkpoint}"], expect=2)
    assert "written by the accelerate engine and this run uses the fsdp2 engine" in p.stderr
    _run([sys.executable, "-m", "pretrain", "train", str(path), f"init.checkpoint={res.checkpoint}",
          "init.load_optimizer=false", "budget.steps=8", "dist.cpu_offload=true"])  # offloaded shards: same numbers
    back = read_full(tmp_path / "f" / "checkpoints" / "step-00000008")
    assert all(torch.equal(back[k], want[k]) for k in want)


def test_deepspeed_takes_the_weights_of_a_sharded_checkpoint(tmp_path, fsdp2_run, fixture_tokens):
    """ZeRO keeps fp32 master weights apart from the module: a weights-only start must reach them too
    (lr 0: the step copies the masters back into the module, so stale masters would show)."""
    sharded = fsdp2_run / "checkpoints" / "step-00000006"
    path = write_config(tmp_path / "ds.yaml", base_config(
        fixture_tokens, tmp_path / "ds", budget={"steps": 7}, schedule=WSD, data={"seq_len": 64}, optim={"lr": 0.0},
        eval={"every": 0, "batches": 1}, init={"checkpoint": str(sharded), "load_optimizer": False},
        dist={"engine": "deepspeed", "deepspeed_config": str(ROOT / "configs/deepspeed/zero2.json")}))
    _run([sys.executable, "-m", "pretrain", "train", str(path)])
    got, want = read_full(tmp_path / "ds" / "checkpoints" / "step-00000007"), read_full(sharded)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
