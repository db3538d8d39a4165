"""Never a broken state: a non-finite loss, gradient norm or weight on any rank is caught before the step is
applied or a checkpoint written; the run stops in one line, or (optim.skip_nonfinite) skips and counts the step.
One process in-process, and two under torchrun (rank 1 alone sees a NaN loss). Skips in two processes under
FSDP2, ZeRO-2 (DeepSpeed made to drop the step) and ZeRO-3 (DeepSpeed's own check) are part of the
exact-resume runs of tests/test_resume.py."""
import subprocess

import pytest

from pretrain import checkpoint as ckpt_io
from pretrain import trainer as trainer_mod
from pretrain.config import from_dict
from pretrain.guard import NonFiniteError
from tests.checkpoints import assert_all_finite, assert_step_skipped, ckpt_of
from tests.conftest import ROOT, base_config, free_port, python_env, torchrun_cmd, write_config
from tests.faults import inject


def _cfg(manifest, run_dir, **sections):
    return base_config(manifest, run_dir, budget={"steps": 5}, checkpoint={"every": 1, "keep_last": 10},
                       eval={"every": 0, "batches": 1}, **sections)


@pytest.mark.parametrize("kind", ["grad", "loss", "weights"])
def test_nonfinite_stops_before_anything_is_applied_or_saved(tmp_path, synthetic_data, monkeypatch, kind):
    inject(f"{kind}:0:3", monkeypatch.setattr)
    run = tmp_path / "run"
    want = {"grad": "step 3: non-finite gradient norm", "loss": "step 3: non-finite loss nan on rank 0",
            "weights": "the weights at step 3 are not finite on 1 rank"}[kind]
    with pytest.raises(NonFiniteError, match=want) as err:
        trainer_mod.train(from_dict(_cfg(synthetic_data, run)))
    assert str(ckpt_of(run, 2)) in str(err.value) and "checkpoint.resume=auto" in str(err.value)
    assert ckpt_io.latest(run / "checkpoints") == ckpt_of(run, 2) and not ckpt_of(run, 3).exists()
    assert not list((run / "checkpoints").glob(".tmp-*"))
    ckpt_io.verify(ckpt_of(run, 2))
    assert_all_finite(run)


@pytest.mark.parametrize("kind", ["grad", "loss"])
def test_skip_nonfinite_skips_and_counts_the_step(tmp_path, synthetic_data, monkeypatch, capsys, kind):
    inject(f"{kind}:0:3", monkeypatch.setattr)
    trainer_mod.train(from_dict(_cfg(synthetic_data, tmp_path / "run", optim={"skip_nonfinite": True})))
    assert_step_skipped(tmp_path / "run", 3)
    assert "step 3: non-finite" in capsys.readouterr().out


def _torchrun(cfg_path, fault, *overrides, expect):
    env = python_env() | {"BUDGETLM_FAULT": fault}
    p = subprocess.run(torchrun_cmd(2, "train", str(cfg_path), *overrides, port=free_port(), module="tests.faults"),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert (p.returncode == 0) == (expect == 0), p.stdout[-3000:] + p.stderr[-3000:]
    return p


def test_two_processes_stop_in_one_line_when_one_rank_sees_a_nan_loss(tmp_path, synthetic_data):
    """DDP: rank 1's loss is NaN but its gradients are finite; both ranks stop before the step, rank 0 prints
    one line, and torchrun's summary names it as the root cause (its error file) instead of a traceback."""
    cfg = write_config(tmp_path / "cfg.yaml", _cfg(synthetic_data, tmp_path / "run"))
    p = _torchrun(cfg, "loss:1:3", expect=2)
    line = (f"pretrain: error: step 3: non-finite loss nan on rank 1; the step was not applied and nothing was "
            f"saved after it (the last checkpoint is {ckpt_of(tmp_path / 'run', 2)})")
    first, rest = p.stderr.split("\n", 1)
    assert first.startswith(line) and first.endswith("then resume with checkpoint.resume=auto)"), p.stderr
    printed = [x for x in p.stderr.splitlines() if "pretrain: error:" in x and not x.strip().startswith("traceback :")]
    assert printed == [first]  # once, by rank 0; torchrun's summary repeats it per rank from the error files
    root_cause = rest.split("Root Cause (first observed failure):")[1]
    assert first in root_cause  # torchrun's summary shows it, not a pointer to its docs
    # no worker traceback; the one traceback left is torchrun's own ChildFailedError, from its launcher
    ours = [f'File "{ROOT / part}' for part in ("pretrain", "tests")]
    assert not any(f in p.stderr for f in ours) and p.stderr.count("Traceback") == 1, p.stderr
    assert ckpt_io.latest(tmp_path / "run" / "checkpoints") == ckpt_of(tmp_path / "run", 2)
    assert_all_finite(tmp_path / "run")
