"""Two-process runs (DDP via torchrun, `accelerate launch`, DeepSpeed ZeRO, FSDP2) match one process with the same
global batch; FSDP2's sharded checkpoints resume on another number of processes (2 -> 1, 1 -> 2)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from pretrain.engines.weights import read_full
from tests.conftest import CENSUS, ROOT, assert_no_gloo_threads_left, base_config, free_port, python_env, read_jsonl, \
    torchrun_cmd, write_config


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


def _assert_same(run, ref, tol, after=0):
    """Same records (steps after ``after``) within ``tol``, and the same final weights (any engine's format)."""
    a, b = _curve(run), [x for x in _curve(ref) if x[1] > after]
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for x, y in zip(a, b):
        assert abs(x[2] - y[2]) <= tol * max(1.0, abs(y[2])), (x, y)
    wa = read_full(run / "checkpoints" / "step-00000008")
    wb = read_full(ref / "checkpoints" / "step-00000008")
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=max(1e-5, tol), rtol=1e-4) for k in wb)


def test_torchrun_ddp_two_processes_match_one(tmp_path, reference):
    cfg, ref = reference
    p = _run(torchrun_cmd(2, "train", str(cfg), f"run_dir={tmp_path / 'ddp'}", port=free_port(), module=CENSUS))
    _assert_same(tmp_path / "ddp", ref, 1e-5)
    assert_no_gloo_threads_left(p.stdout, 2)


def test_accelerate_launch_two_processes_match_one(tmp_path, reference):
    cfg, ref = reference
    env = python_env() | {"ACCELERATE_USE_CPU": "true"}
    p = _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu-2proc.yaml",
              "--main_process_port", str(free_port()), "-m", "pretrain", "train", str(cfg),
              f"run_dir={tmp_path / 'acc'}"], env=env)
    assert "engine accelerate x2" in p.stdout
    _assert_same(tmp_path / "acc", ref, 1e-5)


@pytest.mark.parametrize("stage,ac", [(2, False), (3, True)])
def test_deepspeed_two_processes_match_one(tmp_path, reference, stage, ac):
    """ZeRO-3 runs with activation checkpointing: recomputing the layers changes no loss."""
    cfg, ref = reference
    p = _run(torchrun_cmd(2, "train", str(cfg), f"run_dir={tmp_path / 'ds'}", "dist.engine=deepspeed",
                          f"dist.deepspeed_config=configs/deepspeed/zero{stage}.json",
                          f"model.activation_checkpointing={str(ac).lower()}", port=free_port(), module=CENSUS))
    assert "engine deepspeed x2" in p.stdout
    _assert_same(tmp_path / "ds", ref, 1e-5)
    if stage < 3:  # ZeRO-3 keeps its engine, and so its groups, alive through autograd hooks (DeepSpeed 0.19)
        assert_no_gloo_threads_left(p.stdout, 2)


def test_deepspeed_launcher_zero1_matches_one(tmp_path, reference):
    """The `deepspeed` launcher itself (launch/deepspeed.sh), two CPU processes, ZeRO-1."""
    cfg, ref = reference
    env = python_env() | {"MASTER_PORT": str(free_port()), "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    p = _run(["bash", "launch/deepspeed.sh", "2", "configs/deepspeed/zero1.json", str(cfg),
              f"run_dir={tmp_path / 'dsl'}"], env=env)
    assert "engine deepspeed x2" in p.stdout + p.stderr
    _assert_same(tmp_path / "dsl", ref, 1e-5)


# --------------------------------------------------------------------------- FSDP2


def _fsdp2(cfg, run_dir, nproc, *overrides):
    args = ("train", str(cfg), f"run_dir={run_dir}", "dist.engine=fsdp2", *overrides)
    if nproc == 1:
        return _run([sys.executable, "-m", CENSUS, *args])
    return _run(torchrun_cmd(nproc, *args, port=free_port(), module=CENSUS))


@pytest.fixture(scope="module")
def fsdp2_runs(tmp_path_factory, reference):
    """The reference config under FSDP2 on 1 and on 2 processes, each keeping its step-4 checkpoint."""
    cfg, _ = reference
    tmp = tmp_path_factory.mktemp("fsdp2")
    out = {}
    for nproc in (1, 2):
        p = _fsdp2(cfg, tmp / f"x{nproc}", nproc, "checkpoint.at_steps=[4]")
        assert f"engine fsdp2 x{nproc}" in p.stdout
        assert_no_gloo_threads_left(p.stdout, nproc)
        out[nproc] = tmp / f"x{nproc}"
    return out


def test_fsdp2_one_and_two_processes_match_ddp(reference, fsdp2_runs):
    _, ref = reference
    _assert_same(fsdp2_runs[1], ref, 1e-5)
    _assert_same(fsdp2_runs[2], ref, 1e-5)


def test_fsdp2_checkpoint_is_sharded_and_listed_by_writer(fsdp2_runs):
    """Each rank wrote its own shard (no rank gathered the full state); checkpoint.json names the writer."""
    ckpt = fsdp2_runs[2] / "checkpoints" / "step-00000008"
    listing = {f["path"]: f["rank"] for f in json.loads((ckpt / "checkpoint.json").read_text())["files"]}
    assert listing["dcp/__0_0.distcp"] == 0 and listing["dcp/__1_0.distcp"] == 1 and listing["rng/rank-00001.pt"] == 1
    assert "model.safetensors" not in listing and "optimizer.pt" not in listing
    # each shard holds about half of what the one-process run's single shard holds
    full = (fsdp2_runs[1] / "checkpoints" / "step-00000008" / "dcp" / "__0_0.distcp").stat().st_size
    shards = [(ckpt / "dcp" / f"__{r}_0.distcp").stat().st_size for r in (0, 1)]
    assert all(s < 0.6 * full for s in shards) and abs(sum(shards) - full) < 0.1 * full, (shards, full)


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_fsdp2_resumes_on_another_number_of_processes(tmp_path, reference, fsdp2_runs, before, after):
    """Resharding: the step-4 checkpoint of an N-process run continues on M processes (same global batch)
    and ends where the run that kept N processes ended."""
    cfg, _ = reference
    src = fsdp2_runs[before]
    _fsdp2(cfg, tmp_path / "re", after, f"checkpoint.resume={src / 'checkpoints' / 'step-00000004'}")
    _assert_same(tmp_path / "re", src, 1e-4, after=4)


def test_fsdp2_accelerate_launch_with_activation_checkpointing(tmp_path, reference):
    """`accelerate launch` with the FSDP2 config picks the fsdp2 engine (dist.engine: auto); activation
    checkpointing on top changes no loss."""
    cfg, ref = reference
    env = python_env() | {"ACCELERATE_USE_CPU": "true"}
    p = _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/fsdp2.yaml",
              "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "pretrain", "train", str(cfg),
              f"run_dir={tmp_path / 'acc'}", "model.activation_checkpointing=true"], env=env)
    assert "engine fsdp2 x2" in p.stdout
    _assert_same(tmp_path / "acc", ref, 1e-5)
