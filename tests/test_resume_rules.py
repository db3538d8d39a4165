"""What a resume may change and what it refuses, resume=auto falling back past broken checkpoints, time-based
checkpoints, and integrity work spread over ranks (one process, in-process)."""
import os
import shutil
import signal

import pytest
import torch

from pretrain import checkpoint as ckpt_io
from pretrain.cli import main as pretrain_main
from pretrain.config import ConfigError, from_dict
from pretrain.guard import StopSignals
from pretrain.trainer import train
from tests.conftest import base_config, read_jsonl, write_config, write_manifest


def _cfg(manifest, run_dir, **sections):
    sections.setdefault("eval", {"every": 0, "batches": 1})
    return base_config(manifest, run_dir, **sections)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, synthetic_data):
    """A cosine run of 8 steps stopped at step 4 (its checkpoint at 2 and 4)."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    train(from_dict(_cfg(synthetic_data, run, budget={"steps": 8, "stop_at": 4}, checkpoint={"every": 2})))
    return run


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("change,named", [
    ({"budget": {"steps": 10}}, "budget 8 -> 10 steps"),
    ({"schedule": {"name": "cosine", "warmup_steps": 3}}, "schedule.warmup_steps 2 -> 3"),
    ({"budget": {"global_batch_size": 16}}, "budget.global_batch_size 8 -> 16"),
])
def test_a_resume_that_changes_schedule_or_budget_is_refused(tmp_path, synthetic_data, stopped, change, named, capsys):
    run = _copy(stopped, tmp_path)
    sections = {"budget": {"steps": 8}, "checkpoint": {"every": 2, "resume": "auto"}}
    for key, value in change.items():
        sections[key] = {**sections.get(key, {}), **value}
    cfg = write_config(tmp_path / "cfg.yaml", _cfg(synthetic_data, run, **sections))
    assert pretrain_main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pretrain: error: checkpoint {run / 'checkpoints' / 'step-00000004'} "
                                               f"was trained under another schedule or budget than this run asks for "
                                               f"({named}); ")
    assert "`pretrain branch --from" in err[0] and "checkpoint.allow_schedule_change=true" in err[0]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "train"][-1] == 4  # no work


def test_the_override_allows_it_and_says_so(tmp_path, synthetic_data, stopped, capsys):
    run = _copy(stopped, tmp_path)
    train(from_dict(_cfg(synthetic_data, run, budget={"steps": 10},
                         checkpoint={"every": 2, "resume": "auto", "allow_schedule_change": True})))
    out = capsys.readouterr().out
    assert ("pretrain: resuming with a changed schedule or budget (budget 8 -> 10 steps), as "
            "checkpoint.allow_schedule_change=true allows") in out
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "train"][-1] == 10


def test_configured_optimizer_hyperparameters_win_over_the_saved_ones(tmp_path, synthetic_data, stopped, capsys):
    run = _copy(stopped, tmp_path)
    res = train(from_dict(_cfg(synthetic_data, run, budget={"steps": 8}, checkpoint={"every": 2, "resume": "auto"},
                               optim={"betas": [0.8, 0.9], "eps": 1e-6, "weight_decay": 0.05})))
    out = capsys.readouterr().out
    assert ("optimizer hyper-parameters differ from the checkpoint's; using the configured ones: "
            "optim.betas (0.9, 0.95) -> (0.8, 0.9) (decayed group); optim.eps 1e-08 -> 1e-06 (decayed group); "
            "optim.weight_decay 0.1 -> 0.05 (decayed group); optim.betas (0.9, 0.95) -> (0.8, 0.9) (undecayed group); "
            "optim.eps 1e-08 -> 1e-06 (undecayed group)") in out
    groups = torch.load(res.checkpoint / "optimizer.pt", weights_only=True)["param_groups"]
    assert [(tuple(g["betas"]), g["eps"], g["weight_decay"]) for g in groups] == [((0.8, 0.9), 1e-6, 0.05),
                                                                                ((0.8, 0.9), 1e-6, 0.0)]


def test_starting_over_on_the_checkpoints_own_data_is_refused(tmp_path, synthetic_data, stopped):
    ckpt = stopped / "checkpoints" / "step-00000004"
    init = {"checkpoint": str(ckpt), "load_data_state": False}
    with pytest.raises(ConfigError, match=r"has trained on 1,024 tokens of this very data .* "
                                          r"init.allow_repeat_data=true to repeat them on purpose"):
        train(from_dict(_cfg(synthetic_data, tmp_path / "a", budget={"steps": 6}, init=init)))
    assert not (tmp_path / "a" / "metrics.jsonl").exists()
    train(from_dict(_cfg(synthetic_data, tmp_path / "b", budget={"steps": 6}, init={**init, "allow_repeat_data": True})))
    other = write_manifest(tmp_path / "other", seed=3, tag="other")  # other data: nothing repeats
    res = train(from_dict(_cfg(other, tmp_path / "c", budget={"steps": 6}, init=init)))
    assert res.step == 6


def _damage(ckpt, rel):
    with open(ckpt / rel, "r+b") as f:
        f.seek(64)
        f.write(b"\xff\xfe\xfd")


def test_resume_auto_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path, synthetic_data, stopped, capsys):
    run = _copy(stopped, tmp_path)
    _damage(run / "checkpoints" / "step-00000004", "optimizer.pt")
    cfg = _cfg(synthetic_data, run, budget={"steps": 8}, checkpoint={"every": 2, "resume": "auto"})
    train(from_dict(cfg))
    out = capsys.readouterr().out
    assert (f"pretrain: resume=auto skips a checkpoint: checkpoint {run / 'checkpoints' / 'step-00000004'} is corrupt: "
            "optimizer.pt (written by rank 0) does not match its recorded sha256") in out
    assert f"resumed from {run / 'checkpoints' / 'step-00000002'} at step 2" in out
    # the redone steps equal the first attempt's
    first = {r["step"]: r["loss"] for r in read_jsonl(stopped / "metrics.jsonl") if r["type"] == "train"}
    again = {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "train"}
    assert all(again[s] == first[s] for s in (3, 4)) and max(again) == 8



def test_resume_auto_with_nothing_that_verifies_fails_in_one_line(tmp_path, synthetic_data, stopped, capsys):
    """Each checkpoint named with its problem; never a fresh start over the old run."""
    run = _copy(stopped, tmp_path)
    _damage(run / "checkpoints" / "step-00000004", "optimizer.pt")
    (run / "checkpoints" / "step-00000002" / "checkpoint.json").unlink()
    cfg = write_config(tmp_path / "cfg.yaml", _cfg(synthetic_data, run, budget={"steps": 8},
                                                   checkpoint={"every": 2, "resume": "auto"}))
    assert pretrain_main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pretrain: error: no checkpoint in {run / 'checkpoints'} verifies (")
    assert "step-00000004 is corrupt: optimizer.pt" in err[0]
    assert "step-00000002 is partial or corrupt: no checkpoint.json" in err[0]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "train"][-1] == 4


def test_checkpoints_after_latest_are_never_resumed(tmp_path, stopped):
    """A resume from an earlier step (checkpoint.resume=PATH) moved `latest` back: the later directories
    belong to the abandoned history."""
    root = _copy(stopped, tmp_path) / "checkpoints"
    assert ckpt_io.resume_candidates(root) == ([root / "step-00000004", root / "step-00000002"], [])
    (root / "latest").write_text("step-00000002\n")
    assert ckpt_io.resume_candidates(root) == ([root / "step-00000002"], [])
    (root / "latest").write_text("step-00000003\n")
    assert ckpt_io.resume_candidates(root) == ([root / "step-00000002"],
                                               [f"{root / 'latest'} points to step-00000003, which does not exist"])


def test_verification_is_shared_between_ranks(tmp_path, synthetic_data, stopped):
    """Each rank checks a share of the files, balanced by size; together they check each file once, and a
    damaged file is found by the rank whose share holds it."""
    ckpt = _copy(stopped, tmp_path) / "checkpoints" / "step-00000004"
    files = ckpt_io.read_listing(ckpt)["files"]
    for world in (1, 2, 3, 8):
        shares = [ckpt_io.share(files, r, world) for r in range(world)]
        assert sorted(e["path"] for s in shares for e in s) == sorted(e["path"] for e in files)
        loads = [sum(e["bytes"] for e in s) for s in shares]
        assert max(loads) - min(loads) <= max(e["bytes"] for e in files)
    _damage(ckpt, "model.safetensors")
    found = [ckpt_io.problems(ckpt, ckpt_io.share(files, r, 2)) for r in range(2)]
    owner = next(r for r in range(2) if any(e["path"] == "model.safetensors" for e in ckpt_io.share(files, r, 2)))
    assert found[owner] == [f"checkpoint {ckpt} is corrupt: model.safetensors (written by rank 0) does not match its "
                            "recorded sha256"] and found[1 - owner] == []
    (ckpt / "config.yaml").write_text("x")
    assert any("config.yaml (written by rank 0) has 1 bytes" in p for r in range(2)
               for p in ckpt_io.problems(ckpt, ckpt_io.share(files, r, 2)))


def test_time_based_checkpoints(tmp_path, synthetic_data):
    train(from_dict(_cfg(synthetic_data, tmp_path / "run", budget={"steps": 4},
                         checkpoint={"every_minutes": 1e-9, "keep_last": 0})))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == \
        [f"step-{s:08d}" for s in (1, 2, 3, 4)]


def test_stop_signals_are_recorded_and_the_previous_handlers_restored():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stops:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # the first one counts
        assert stops.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before


def test_a_stop_signal_saves_before_an_evaluation_due_at_that_step(tmp_path, synthetic_data, monkeypatch):
    """The grace period after SIGTERM is for the checkpoint: an evaluation due at the same step runs after it."""
    from pretrain import guard
    from pretrain.trainer import Trainer

    take_step, evaluate, seen = Trainer._train_step, Trainer.evaluate, {}

    def signalled_step(self, stops):
        if self.step == 3:  # received while step 4 is computed: the ranks agree on it at step 4
            os.kill(os.getpid(), signal.SIGTERM)
        return take_step(self, stops)

    def watched_evaluate(self):
        seen[self.step] = (self.ckpt_root / ckpt_io.step_dir_name(self.step)).is_dir()
        return evaluate(self)

    monkeypatch.setattr(Trainer, "_train_step", signalled_step)
    monkeypatch.setattr(Trainer, "evaluate", watched_evaluate)
    run = tmp_path / "run"
    with pytest.raises(guard.Preempted) as stop:
        train(from_dict(_cfg(synthetic_data, run, budget={"steps": 8}, eval={"every": 2, "batches": 1})))
    assert stop.value.step == 4 and seen == {2: False, 4: True}
    ckpt_io.verify(run / "checkpoints" / "step-00000004")
