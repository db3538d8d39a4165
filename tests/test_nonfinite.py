"""Never a broken state: a non-finite loss, gradient norm or weight on any rank is caught before the step is
applied or a checkpoint written; the run stops in one line, or (optim.skip_nonfinite) skips and counts the step.
One process in-process for the plain paths; two processes for each engine's own path."""
import json
import subprocess
import sys

import pytest
import torch

from pretrain import checkpoint as ckpt_io
from pretrain import trainer as trainer_mod
from pretrain.config import from_dict
from pretrain.engines.weights import read_full
from pretrain.guard import NonFiniteError
from tests.conftest import ROOT, base_config, free_port, python_env, read_jsonl, torchrun_cmd, write_config
from tests.faults import faulty
from tests.test_resume import different_entries, optimizer_state


def _cfg(manifest, run_dir, **sections):
    return base_config(manifest, run_dir, budget={"steps": 5}, checkpoint={"every": 1, "keep_last": 10},
                       eval={"every": 0, "batches": 1}, **sections)


def _ckpt(run, step):
    return run / "checkpoints" / ckpt_io.step_dir_name(step)


def _assert_all_finite(run):
    for ckpt in sorted((run / "checkpoints").glob("step-*")):
        assert all(torch.isfinite(w).all() for w in read_full(ckpt).values()), ckpt


def assert_step_skipped(run, step):
    """The skipped step changed nothing: its checkpoint holds the previous step's weights and optimizer state
    (Adam's moments and step count), the next step did change them, and the log marks and counts the skip."""
    before, at, after = (_ckpt(run, s) for s in (step - 1, step, step + 1))
    wa, wb, wc = read_full(before), read_full(at), read_full(after)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wb[k], wc[k]) for k in wb)
    assert different_entries(optimizer_state(before), optimizer_state(at)) == []
    records = {r["step"]: r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "train"}
    assert records[step].get("skipped") and not any(records[s].get("skipped") for s in records if s != step)
    assert json.loads((run / "summary.json").read_text())["skipped_steps"] == 1
    assert json.loads((_ckpt(run, step) / "trainer.json").read_text())["skipped_steps"] == 1
    _assert_all_finite(run)


@pytest.mark.parametrize("kind", ["grad", "loss", "weights"])
def test_nonfinite_stops_before_anything_is_applied_or_saved(tmp_path, synthetic_data, monkeypatch, kind):
    monkeypatch.setattr(trainer_mod, "make_engine", faulty(trainer_mod.make_engine, f"{kind}:0:3"))
    run = tmp_path / "run"
    want = {"grad": "step 3: non-finite gradient norm", "loss": "step 3: non-finite loss nan on rank 0",
            "weights": "the weights at step 3 are not finite on 1 rank"}[kind]
    with pytest.raises(NonFiniteError, match=want) as err:
        trainer_mod.train(from_dict(_cfg(synthetic_data, run)))
    assert str(_ckpt(run, 2)) in str(err.value) and "checkpoint.resume=auto" in str(err.value)
    assert ckpt_io.latest(run / "checkpoints") == _ckpt(run, 2) and not _ckpt(run, 3).exists()
    assert not list((run / "checkpoints").glob(".tmp-*"))
    ckpt_io.verify(_ckpt(run, 2))
    _assert_all_finite(run)


@pytest.mark.parametrize("kind", ["grad", "loss"])
def test_skip_nonfinite_skips_and_counts_the_step(tmp_path, synthetic_data, monkeypatch, capsys, kind):
    monkeypatch.setattr(trainer_mod, "make_engine", faulty(trainer_mod.make_engine, f"{kind}:0:3"))
    trainer_mod.train(from_dict(_cfg(synthetic_data, tmp_path / "run", optim={"skip_nonfinite": True})))
    assert_step_skipped(tmp_path / "run", 3)
    assert "step 3: non-finite" in capsys.readouterr().out


def _torchrun(cfg_path, fault, *overrides, expect):
    env = python_env() | {"BUDGETLM_FAULT": fault}
    p = subprocess.run(torchrun_cmd(2, "train", str(cfg_path), *overrides, port=free_port(), module="tests.faults"),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert (p.returncode == 0) == (expect == 0), p.stdout[-3000:] + p.stderr[-3000:]
    return p


ZERO = {"engine": "deepspeed", "deepspeed_config": str(ROOT / "configs/deepspeed/zero{}.json")}


@pytest.mark.parametrize("dist,fault", [
    ({"engine": "fsdp2"}, "grad:1:3"),  # the sharded norm, reduced over the mesh, is non-finite on every rank
    ({**ZERO, "deepspeed_config": ZERO["deepspeed_config"].format(2)}, "loss:1:3"),  # DeepSpeed made to skip
    ({**ZERO, "deepspeed_config": ZERO["deepspeed_config"].format(3)}, "grad:1:3"),  # DeepSpeed's own check
], ids=["fsdp2-grad", "zero2-loss", "zero3-grad"])
def test_two_processes_skip_a_step_that_one_rank_found_nonfinite(tmp_path, synthetic_data, dist, fault):
    """Only rank 1 sees the fault; both ranks skip the same step, in each engine."""
    cfg = _cfg(synthetic_data, tmp_path / "run", optim={"skip_nonfinite": True}, dist=dist,
               checkpoint={"every": 0, "at_steps": [2, 3, 4], "keep_last": 0})
    p = _torchrun(write_config(tmp_path / "cfg.yaml", cfg), fault, expect=0)
    assert "step 3: non-finite" in p.stdout
    assert_step_skipped(tmp_path / "run", 3)


def test_two_processes_stop_in_one_line_when_one_rank_sees_a_nan_loss(tmp_path, synthetic_data):
    """DDP: rank 1's loss is NaN but its gradients are finite; both ranks stop before the step, rank 0 prints
    one line, and torchrun's summary names it as the root cause (its error file) instead of a traceback."""
    cfg = write_config(tmp_path / "cfg.yaml", _cfg(synthetic_data, tmp_path / "run"))
    p = _torchrun(cfg, "loss:1:3", expect=2)
    line = (f"pretrain: error: step 3: non-finite loss nan on rank 1; the step was not applied and nothing was "
            f"saved after it (the last checkpoint is {_ckpt(tmp_path / 'run', 2)})")
    assert p.stderr.count(line) == 2, p.stderr  # rank 0's line, and torchrun's root cause
    assert "pretrain/" not in p.stderr.split("ChildFailedError")[0]  # no worker traceback
    assert ckpt_io.latest(tmp_path / "run" / "checkpoints") == _ckpt(tmp_path / "run", 2)
    _assert_all_finite(tmp_path / "run")
