"""Two-process runs (DDP via torchrun, `accelerate launch`, DeepSpeed ZeRO) match one process with the same global batch."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, base_config, free_port, python_env, read_jsonl, torchrun_cmd, write_config


def _run(cmd, env=None):
    p = subprocess.run(cmd, cwd=ROOT, env=env or python_env(), capture_output=True, text=True, timeout=480)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-4000:]
    return p


def _curve(run):
    return [(r["type"], r["step"], r.get("loss", r.get("val_loss"))) for r in read_jsonl(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, synthetic_data):
    """One process, global batch 8 as 2 micro-batches of 4."""
    tmp = tmp_path_factory.mktemp("ref")
    cfg = base_config(synthetic_data, tmp / "run", budget={"steps": 8, "global_batch_size": 8, "micro_batch_size": 4},
                      eval={"every": 4, "batches": 2})
    path = write_config(tmp / "cfg.yaml", cfg)
    _run([sys.executable, "-m", "pretrain", "train", str(path)])
    return path, tmp / "run"


def _assert_same(run, ref, tol):
    a, b = _curve(run), _curve(ref)
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for x, y in zip(a, b):
        assert abs(x[2] - y[2]) <= tol * max(1.0, abs(y[2])), (x, y)
    wa = load_file(str(run / "checkpoints" / "step-00000008" / "model.safetensors"))
    wb = load_file(str(ref / "checkpoints" / "step-00000008" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4) for k in wb)


def test_torchrun_ddp_two_processes_match_one(tmp_path, reference):
    cfg, ref = reference
    _run(torchrun_cmd(2, "train", str(cfg), f"run_dir={tmp_path / 'ddp'}", port=free_port()))
    _assert_same(tmp_path / "ddp", ref, 1e-5)


def test_accelerate_launch_two_processes_match_one(tmp_path, reference):
    cfg, ref = reference
    env = python_env() | {"ACCELERATE_USE_CPU": "true"}
    p = _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu-2proc.yaml",
              "--main_process_port", str(free_port()), "-m", "pretrain", "train", str(cfg),
              f"run_dir={tmp_path / 'acc'}"], env=env)
    assert "engine accelerate x2" in p.stdout
    _assert_same(tmp_path / "acc", ref, 1e-5)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_processes_match_one(tmp_path, reference, stage):
    cfg, ref = reference
    p = _run(torchrun_cmd(2, "train", str(cfg), f"run_dir={tmp_path / 'ds'}", "dist.engine=deepspeed",
                          f"dist.deepspeed_config=configs/deepspeed/zero{stage}.json", port=free_port()))
    assert "engine deepspeed x2" in p.stdout
    _assert_same(tmp_path / "ds", ref, 1e-5)


def test_deepspeed_launcher_zero1_matches_one(tmp_path, reference):
    """The `deepspeed` launcher itself (launch/deepspeed.sh), two CPU processes, ZeRO-1."""
    cfg, ref = reference
    env = python_env() | {"MASTER_PORT": str(free_port()), "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    p = _run(["bash", "launch/deepspeed.sh", "2", "configs/deepspeed/zero1.json", str(cfg),
              f"run_dir={tmp_path / 'dsl'}"], env=env)
    assert "engine deepspeed x2" in p.stdout + p.stderr
    _assert_same(tmp_path / "dsl", ref, 1e-5)
