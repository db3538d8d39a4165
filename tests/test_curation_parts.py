"""A curation run split into parts gives the bytes of one process: 2 ranks under torchrun, and
2 independent --shard tasks per step + merges (what launch/curate-slurm.sh runs)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, python_env
from data_select.cli import main
from test_pipeline import make_corpus

SAME = ["features/features.f32", "features/DONE.json", "features/table/DONE.json", "features/table/ids.bin",
        "features/table/offset.bin", "selection.npy", "selection.jsonl", "deduplicated.npy"]


def _config(tmp_path: Path, name: str, corpus: Path) -> Path:
    cfg = {"inputs": [str(corpus)], "out_dir": str(tmp_path / name), "progress": False,
           "embed": {"encoder": "hashing", "dim": 16, "batch_size": 16},
           "select": {"method": "dedup+disf", "ratio": 0.25, "batch_size": 32},
           "tokenize": {"vocab_size": 320, "val_fraction": 0.05, "workers": 1, "shard_tokens": 2000},
           "report": {"top_k": 5}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _assert_same(a: Path, b: Path) -> None:
    for name in SAME:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    shards = sorted(p.name for p in (a / "tokens").glob("*.npy"))
    assert len(shards) >= 3 and shards == sorted(p.name for p in (b / "tokens").glob("*.npy"))
    for name in shards:
        assert (a / "tokens" / name).read_bytes() == (b / "tokens" / name).read_bytes(), name
    ma, mb = (json.loads((d / "tokens" / "manifest.json").read_text()) for d in (a, b))
    for m in (ma, mb):
        m["sources"].pop("selection")
    assert ma == mb
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    assert ra["accounting"] == rb["accounting"] and ra["spectrum"] == rb["spectrum"] and ra["domains"] == rb["domains"]
    assert not (b / "parts").exists() and not (b / "features" / "parts").exists(), "merged parts are removed"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parts")
    make_corpus(tmp / "corpus")
    with open(tmp / "corpus" / "mixed.jsonl", "a") as f:  # an exact repeat, dropped before embedding
        f.write(open(tmp / "corpus" / "mixed.jsonl").readline())
    assert main(["run", str(_config(tmp, "one", tmp / "corpus"))]) == 0
    return tmp


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(one_process):
    tmp = one_process
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "data_select", "run", str(_config(tmp, "tr", tmp / "corpus"))]
    proc = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("accounting:") == 1, "rank 0 prints the summary"
    _assert_same(tmp / "one", tmp / "tr")


@pytest.mark.slow
def test_torchrun_tokenize_without_a_selection_equals_one_process(one_process):
    """Plain `tokenize INPUTS` under torchrun: the ranks build the table together, then tokenize their parts."""
    tmp = one_process
    args = ["tokenize", str(tmp / "corpus"), "--vocab-size", "320", "--val-fraction", "0.05", "--workers", "1",
            "--shard-tokens", "2000", "--no-progress"]
    assert main([*args, "--out", str(tmp / "tok-one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "data_select", *args, "--out", str(tmp / "tok-tr")]
    proc = subprocess.run(cmd, cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = sorted(p.name for p in (tmp / "tok-one").glob("*.npy"))
    assert len(shards) >= 3 and shards == sorted(p.name for p in (tmp / "tok-tr").glob("*.npy"))
    for name in shards:
        assert (tmp / "tok-one" / name).read_bytes() == (tmp / "tok-tr" / name).read_bytes(), name
    one, tr = (json.loads((tmp / d / "manifest.json").read_text()) for d in ("tok-one", "tok-tr"))
    assert one == tr


def test_shard_tasks_and_merges_equal_one_process(one_process, capsys, monkeypatch):
    from data_select import sources

    tmp = one_process
    cfg = str(_config(tmp, "arr", tmp / "corpus"))
    assert main(["run", cfg, "--step", "embed", "--shard", "0/2"]) == 2
    assert "needs the document table" in capsys.readouterr().err
    parts = {"index": tmp / "arr" / "features", "embed": tmp / "arr" / "features", "select": tmp / "arr",
             "tokenize": tmp / "arr" / "tokens"}
    from data_select import tokenize as tkz

    opened, now, real = {}, [], sources.open_decoded  # input files opened by each task
    monkeypatch.setattr(sources, "open_decoded", lambda path: opened.setdefault(now[0], set()).add(path) or real(path))
    install = tkz._install_tokenizer

    def train_once(*a, **k):  # the first task to need the tokenizer trains it on a bounded sample of every file
        task, now[0] = now[0], ("tokenizer", "sample")
        try:
            return install(*a, **k)
        finally:
            now[0] = task

    monkeypatch.setattr(tkz, "_install_tokenizer", train_once)
    for step in ("index", "embed", "select", "tokenize"):
        for i in (1, 0):
            now[:] = [(step, i)]
            assert main(["run", cfg, "--step", step, "--shard", f"{i}/2"]) == 0, step
        if step != "select":  # whole input files per part: no task opens a file of the other
            assert opened[(step, 0)] and opened[(step, 1)] and not opened[(step, 0)] & opened[(step, 1)], step
        now[:] = [(step, "again")]
        done = parts[step] / "parts" / f"{step}-00001-of-00002" / "DONE.json"
        before = (done.stat().st_ino, done.stat().st_mtime_ns)  # a rewrite (temp file + rename) changes both
        assert main(["run", cfg, "--step", step, "--shard", "1/2"]) == 0, step  # a re-run skips a finished part
        assert (done.stat().st_ino, done.stat().st_mtime_ns) == before, step
        now[:] = [(step, "merge")]
        assert main(["run", cfg, "--step", step, "--merge"]) == 0, step
    assert not any(opened.get((step, when)) for step in parts for when in ("again", "merge")), \
        "re-runs of finished parts and merges read no input"
    assert opened[("tokenizer", "sample")]
    assert main(["run", cfg, "--step", "report"]) == 0
    out = capsys.readouterr().out
    assert "duplicate_content': 1" in out
    _assert_same(tmp / "one", tmp / "arr")
    assert main(["run", cfg, "--step", "select", "--shard", "2/2"]) == 2
    assert "0 <= I < N" in capsys.readouterr().err
    assert main(["run", cfg, "--shard", "0/2"]) == 2
    assert "add --step" in capsys.readouterr().err
    assert main(["embed", str(tmp / "corpus"), "--out", str(tmp / "arr" / "features"), "--encoder", "hashing",
                 "--shard", "0/2", "--overwrite", "--no-progress"]) == 2  # it would clear the other tasks' parts
    assert "--overwrite would clear the parts other --shard tasks are writing" in capsys.readouterr().err


FAKE_SBATCH = """#!/usr/bin/env bash
# records each job's command (an array: once per task) in $JOBS, in submission order
array=""; wrap=""
while [ $# -gt 0 ]; do
  case "$1" in
    --parsable) shift ;;
    --array) array=$2; shift 2 ;;
    --wrap) wrap=$2; shift 2 ;;
    *) shift 2 ;;
  esac
done
if [ -n "$array" ]; then
  for i in $(seq ${array%-*} ${array#*-}); do echo "${wrap//\\$SLURM_ARRAY_TASK_ID/$i}" >> "$JOBS"; done
else
  echo "$wrap" >> "$JOBS"
fi
echo $RANDOM
"""


def test_slurm_array_chain_runs_the_steps_in_order(one_process, tmp_path, monkeypatch):
    """launch/curate-slurm.sh with a stand-in sbatch that records the jobs; running them in order
    gives the one-process outputs."""
    import os
    import shlex

    tmp = one_process
    (tmp_path / "sbatch").write_text(FAKE_SBATCH)
    (tmp_path / "sbatch").chmod(0o755)
    cfg = _config(tmp, "slurm", tmp / "corpus")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "JOBS": str(tmp_path / "jobs"),
           "DATA_SELECT": "data-select", "SBATCH_OPTS": "--time 1:00:00"}
    proc = subprocess.run(["bash", str(ROOT / "launch" / "curate-slurm.sh"), str(cfg), "2", "report.top_k=5"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    jobs = (tmp_path / "jobs").read_text().splitlines()
    steps = [j.split("--step ")[1] for j in jobs]
    assert steps == ["index --shard 0/2", "index --shard 1/2", "index --merge", "embed --shard 0/2", "embed --shard 1/2",
                     "embed --merge", "dedup", "select --shard 0/2", "select --shard 1/2", "select --merge",
                     "tokenize --shard 0/2", "tokenize --shard 1/2", "tokenize --merge", "report"]
    from data_select import baselines

    passes, real = [], baselines.dedup
    monkeypatch.setattr(baselines, "dedup", lambda *a, **k: passes.append(1) or real(*a, **k))
    for job in jobs:
        args = shlex.split(job)
        assert args[0] == "data-select" and main(args[1:]) == 0, job
    assert len(passes) == 1, "the near-duplicate pass runs once (--step dedup), every select task reuses it"
    _assert_same(tmp / "one", tmp / "slurm")


@pytest.mark.parametrize("method", ["dedup", "random", "disf", "dedup+disf", "dedup+random"])
def test_ranks_meet_at_the_same_barriers(one_process, tmp_path, monkeypatch, method):
    """Two ranks as two threads joined by a real barrier (a rank that skipped or added a barrier
    breaks it): methods split into parts and methods rank 0 runs alone both end with the same
    selection as one process."""
    import threading

    import numpy as np

    from data_select import parts as P
    from data_select.select import select_features

    local = threading.local()
    gate = threading.Barrier(2, timeout=60)

    class Group:
        def __init__(self, shard):
            self.shard = shard

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def barrier(self):
            gate.wait()

    monkeypatch.setattr(P, "Group", Group)
    monkeypatch.setattr(P, "env_shard", lambda: local.shard)
    feats = one_process / "one" / "features"
    errors = []

    def rank(i):
        local.shard = P.Shard(i, 2)
        try:
            select_features(feats, tmp_path / "two", method=method, ratio=0.25, batch_size=32, progress=False)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
            gate.abort()

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    local.shard = None
    select_features(feats, tmp_path / "one", method=method, ratio=0.25, batch_size=32, progress=False)
    assert np.array_equal(np.load(tmp_path / "one" / "selection.npy"), np.load(tmp_path / "two" / "selection.npy"))
