"""Exact resume: a run SIGKILLed at an arbitrary step and resumed equals an uninterrupted run, bit for bit
(DDP on 1 and 2 processes, FSDP2 with its sharded checkpoints on 2)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pretrain.engines.weights import read_dcp, read_full
from tests.conftest import ROOT, base_config, free_port, python_env, read_jsonl, torchrun_cmd, write_config


def _cmd(nproc, cfg_path, *overrides):
    if nproc == 1:
        return [sys.executable, "-m", "pretrain", "train", str(cfg_path), *overrides]
    return torchrun_cmd(nproc, "train", str(cfg_path), *overrides, port=free_port())


def _run(cmd):
    p = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


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


def _run_and_kill(cmd, metrics, kill_after_step):
    """Start training, SIGKILL it and every worker once the log shows ``kill_after_step``."""
    p = subprocess.Popen(cmd, cwd=ROOT, env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if metrics.exists() and any(r["type"] == "train" and r["step"] >= kill_after_step for r in read_jsonl(metrics)):
            for pid in [p.pid, *_descendants(p.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        time.sleep(0.005)
    p.wait()
    assert p.returncode == -signal.SIGKILL, f"training ended before it could be killed: {p.stderr.read()[-2000:]}"


def _losses(metrics):
    return [(r["type"], r["step"], r.get("loss", r.get("val_loss"))) for r in read_jsonl(metrics)]


def _final_state(ckpt):
    """Full weights and the Adam second moments of a checkpoint, whichever engine wrote it."""
    if (ckpt / "dcp").is_dir():
        optim = read_dcp(ckpt / "dcp", "optim")
        return read_full(ckpt), [optim[k] for k in sorted(optim) if k.endswith(".exp_avg_sq")]
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)["state"]
    return read_full(ckpt), [state[i]["exp_avg_sq"] for i in sorted(state)]


@pytest.mark.parametrize("nproc,engine", [(1, "accelerate"), (2, "accelerate"), (2, "fsdp2")])
def test_sigkill_and_resume_is_bit_exact(tmp_path, synthetic_data, nproc, engine):
    cfg = base_config(synthetic_data, tmp_path / "x", budget={"steps": 24, "global_batch_size": 8, "micro_batch_size": 2},
                      checkpoint={"every": 3, "keep_last": 2}, eval={"every": 5, "batches": 2},
                      data={"ledger": True}, dist={"engine": engine})
    cfg_path = write_config(tmp_path / "cfg.yaml", cfg)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    _run(_cmd(nproc, cfg_path, f"run_dir={ref}"))
    _run_and_kill(_cmd(nproc, cfg_path, f"run_dir={cut}"), cut / "metrics.jsonl", kill_after_step=11)
    assert not (cut / "summary.json").exists()
    _run(_cmd(nproc, cfg_path, f"run_dir={cut}", "checkpoint.resume=auto"))

    assert _losses(cut / "metrics.jsonl") == _losses(ref / "metrics.jsonl")
    (a, oa), (b, ob) = (_final_state(run / "checkpoints" / "step-00000024") for run in (ref, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(oa) == len(ob) == len(a) and all(torch.equal(x, y) for x, y in zip(oa, ob))

    # the ledger proves every sequence was consumed once: none twice, none skipped, across ranks and the crash
    seen = [i for rank in range(nproc) for r in read_jsonl(cut / "ledger" / f"rank-{rank:05d}.jsonl") for i in r["ids"]]
    ref_seen = [i for rank in range(nproc) for r in read_jsonl(ref / "ledger" / f"rank-{rank:05d}.jsonl") for i in r["ids"]]
    assert len(seen) == len(set(seen)) == 24 * 8
    assert sorted(seen) == sorted(ref_seen)
