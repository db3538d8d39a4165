"""Exact resume in every engine: a run stopped by a signal (it saves the step it is in), resumed, SIGKILLed (it
loses what followed its last checkpoint), and resumed again with checkpoint.resume=auto, equals an uninterrupted
run bit for bit: every logged loss, the final weights and the optimizer's whole state (both Adam moments and the
step count). Attention dropout is on, so every step draws random numbers: without the restored random state the
resumed losses differ. The signal reaches the run as it would on a cluster: to the process, to one worker of two
(the ranks must agree), to torchrun (which forwards it), or from Slurm's early warning through launch/slurm.sbatch
(faked Slurm commands), which then requeues the job.

The two-process FSDP2 and DeepSpeed runs (uninterrupted and interrupted alike) also meet a non-finite value on
rank 1 at step 2 with optim.skip_nonfinite: the step is skipped on both ranks, the same way in both runs."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from pretrain.engines.weights import read_full
from pretrain.guard import PREEMPTED_EXIT
from tests.checkpoints import assert_step_skipped, different_entries, optimizer_state
from tests.conftest import ROOT, base_config, free_port, python_env, read_jsonl, torchrun_cmd, write_config


def _cmd(nproc, cfg_path, *overrides, module="pretrain"):
    if nproc == 1:
        return [sys.executable, "-m", module, "train", str(cfg_path), *overrides]
    return torchrun_cmd(nproc, "train", str(cfg_path), *overrides, port=free_port(), module=module)


def _run(cmd, env=None, expect=0):
    p = subprocess.run(cmd, cwd=ROOT, env=env or python_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == expect, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _descendants(pid):
    """All processes below ``pid`` (torchrun starts its workers in sessions of their own)."""
    children = {}
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _workers(pid):
    """{rank: pid} of the training processes below ``pid``."""
    found = {}
    for c in _descendants(pid):
        try:
            env = dict(v.split("=", 1) for v in open(f"/proc/{c}/environ").read().split("\0") if "=" in v)
        except OSError:
            continue
        if "TORCHELASTIC_RUN_ID" in env and "RANK" in env:
            found[int(env["RANK"])] = c
    return found


def _signal(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _interrupt(cmd, metrics, after_step, deliver, env=None):
    """Start training; once the log shows ``after_step``, ``deliver(popen)``; return the finished process."""
    p = subprocess.Popen(cmd, cwd=ROOT, env=env or python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    deadline, size = time.time() + 240, -1
    while time.time() < deadline and p.poll() is None:  # a light poll: the workers need the cores
        now = metrics.stat().st_size if metrics.exists() else -1
        if now != size and any(r["type"] == "train" and r["step"] >= after_step for r in read_jsonl(metrics)):
            deliver(p)
            break
        size = now
        time.sleep(0.02)
    out, err = p.communicate(timeout=240)
    return p.returncode, out, err


def _kill_all(p):
    _signal([p.pid, *_descendants(p.pid)], signal.SIGKILL)


DELIVERIES = {  # how a stop signal reaches the run
    "process": lambda p: _signal([p.pid], signal.SIGTERM),
    "rank 1 only": lambda p: _signal([_workers(p.pid)[1]], signal.SIGTERM),
    "torchrun": lambda p: _signal([p.pid], signal.SIGTERM),
    "slurm": lambda p: _signal([p.pid], signal.SIGUSR1),  # --signal=B:USR1@N reaches the batch script
}

FAKE_SLURM = {  # one node, one task: enough to run launch/slurm.sbatch as Slurm would
    "srun": 'while [[ $1 == --* ]]; do shift; done\necho $$ > "$FAKE_SLURM/step.pid"\nexec "$@"\n',
    "scancel": 'kill -s "${1#--signal=}" "$(cat "$FAKE_SLURM/step.pid")"\n',  # the step's task (torchrun)
    "scontrol": 'case $1 in show) echo 127.0.0.1 ;; requeue) echo "requeue $2" >> "$FAKE_SLURM/requeued" ;; esac\n',
}


def _slurm(tmp_path, cfg_path, *overrides):
    """``sbatch launch/slurm.sbatch CFG ...`` on a faked one-node, two-process Slurm allocation."""
    fake = tmp_path / "slurm"
    if not fake.is_dir():
        (fake / "bin").mkdir(parents=True)
        for name, body in FAKE_SLURM.items():
            (fake / "bin" / name).write_text("#!/usr/bin/env bash\n" + body)
            (fake / "bin" / name).chmod(0o755)
    env = python_env() | {"FAKE_SLURM": str(fake), "PATH": f"{fake / 'bin'}:{os.path.dirname(sys.executable)}:"
                          f"{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node1",
                          "SLURM_NNODES": "1", "SLURM_NODEID": "0", "GPUS_PER_NODE": "2",
                          "MASTER_PORT": str(free_port())}
    return ["bash", "launch/slurm.sbatch", str(cfg_path), *overrides], env


def _losses(metrics):
    return [(r["type"], r["step"], r.get("loss", r.get("val_loss"))) for r in read_jsonl(metrics)]


ZERO = "configs/deepspeed/zero{}.json"
CASES = {  # nproc, dist section, how a stop signal arrives (None: SIGKILL only), fault on rank 1 at step 2
    "1-accelerate": (1, {"engine": "accelerate"}, "process", None),
    "2-accelerate": (2, {"engine": "accelerate"}, "slurm", None),
    "2-fsdp2": (2, {"engine": "fsdp2"}, "rank 1 only", "grad:1:2"),  # the norm reduced over the mesh
    "2-zero2": (2, {"engine": "deepspeed", "deepspeed_config": str(ROOT / ZERO.format(2))}, "torchrun",
                "loss:1:2"),  # DeepSpeed made to drop the step
    "2-zero3": (2, {"engine": "deepspeed", "deepspeed_config": str(ROOT / ZERO.format(3))}, None,
                "grad:1:2"),  # DeepSpeed's own check
}


def _stop(cmd, env, metrics, how, nproc, cut):
    """Segment 1: a stop signal; every rank finishes its step, the checkpoint of that very step is saved."""
    rc, _, err = _interrupt(cmd, metrics, 4, DELIVERIES[how], env)
    stopped = [r["step"] for r in read_jsonl(metrics) if r["type"] == "train"][-1]
    signame = "SIGUSR1" if how == "slurm" else "SIGTERM"
    # torchrun forwards a signal to its workers one by one: a rank may see it one agreement later than another
    ranks = "1" if how == "rank 1 only" else "[1-9]" if nproc > 1 else "1"
    line = (f"pretrain: stopped by {signame} on {ranks} of {nproc} rank{'s' if nproc > 1 else ''} at step {stopped}: "
            f"checkpoint {re.escape(str(cut / 'checkpoints' / f'step-{stopped:08d}'))} is saved; continue with "
            f"checkpoint.resume=auto")
    assert re.search(line, err), err[-3000:]
    assert rc == PREEMPTED_EXIT if nproc == 1 else rc != 0
    assert (cut / "checkpoints" / "latest").read_text().strip() == f"step-{stopped:08d}" and stopped < 16
    return stopped


@pytest.mark.parametrize("case", CASES)
def test_stop_kill_and_resume_is_bit_exact(tmp_path, synthetic_data, case):
    nproc, dist, how, fault = CASES[case]
    cfg = base_config(synthetic_data, tmp_path / "x", budget={"steps": 16, "global_batch_size": 8, "micro_batch_size": 2},
                      model={"attention_dropout": 0.1}, checkpoint={"every": 3, "keep_last": 2},
                      eval={"every": 5, "batches": 2}, data={"ledger": True}, optim={"skip_nonfinite": True}, dist=dist)
    cfg_path = write_config(tmp_path / "cfg.yaml", cfg)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    metrics = cut / "metrics.jsonl"
    env = python_env() | ({"BUDGETLM_FAULT": fault} if fault else {})

    def command(*overrides):
        if how == "slurm":
            return _slurm(tmp_path, cfg_path, f"run_dir={cut}", *overrides)
        return _cmd(nproc, cfg_path, f"run_dir={cut}", *overrides, module="tests.faults" if fault else "pretrain"), env

    ref_cmd = _cmd(nproc, cfg_path, f"run_dir={ref}", "checkpoint.at_steps=[1,2,3]", module="tests.faults" if fault
                   else "pretrain")
    _run(ref_cmd, env)
    if fault:
        assert_step_skipped(ref, 2)
    last = _stop(*command(), metrics, how, nproc, cut) if how else 0
    if how == "slurm":
        assert (tmp_path / "slurm" / "requeued").read_text() == "requeue 7\n"

    # resumed (or started), then SIGKILLed: the work after the last checkpoint is lost and redone
    cmd, env = command("checkpoint.resume=auto")
    rc, _, _ = _interrupt(cmd, metrics, last + 5, _kill_all, env)
    assert rc == -signal.SIGKILL and not (cut / "summary.json").exists()
    # resumed to the end
    _run(*command("checkpoint.resume=auto"))

    assert _losses(metrics) == _losses(ref / "metrics.jsonl")
    a, b = (run / "checkpoints" / "step-00000016" for run in (ref, cut))
    wa, wb = read_full(a), read_full(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa, ob = optimizer_state(a), optimizer_state(b)
    assert {k.rsplit(".", 1)[-1] for k in oa} >= {"exp_avg", "exp_avg_sq", "step"}
    assert different_entries(oa, ob) == []

    # the ledger proves every sequence was consumed once: none twice, none skipped, across ranks and interruptions
    seen = [i for rank in range(nproc) for r in read_jsonl(cut / "ledger" / f"rank-{rank:05d}.jsonl") for i in r["ids"]]
    ref_seen = [i for rank in range(nproc) for r in read_jsonl(ref / "ledger" / f"rank-{rank:05d}.jsonl") for i in r["ids"]]
    assert len(seen) == len(set(seen)) == 16 * 8
    assert sorted(seen) == sorted(ref_seen)

    if case == "2-zero2":  # on another world size: refused before any work, both sizes and the fix named
        p = _run(_cmd(1, cfg_path, f"run_dir={cut}", "checkpoint.resume=auto"), expect=2)
        assert re.search(r"pretrain: error: checkpoint \S+step-00000016 was written by 2 DeepSpeed processes and "
                         r"this run has 1: .* Continue it on 2 processes, or start a new run from its weights alone "
                         r"with init.checkpoint=\S+ init.load_optimizer=false", p.stderr), p.stderr
        assert "Traceback" not in p.stderr
