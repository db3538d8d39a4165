"""README command 1 where Debian's tools are missing: the fallback corpus, then the whole quickstart (reduced)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pretrain.branching import budget_points
from pretrain.config import load_config
from tests.conftest import ROOT, python_env

# a smaller model, batch and budget than configs/train/quickstart.yaml, so the whole script runs in seconds
REDUCED_TRAIN = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_heads=2", "model.num_kv_heads=1",
                 "budget.global_batch_size=4", "budget.micro_batch_size=4", "budget.epochs=0.2",
                 "budget.budgets=[0.1,0.2]", "eval.batches=1"]


def _path_without_apt(where: Path) -> str:
    """A PATH holding every command of this one except apt-get and dpkg-deb (as on macOS or Fedora)."""
    where.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            src, dst = os.path.join(folder, name), where / name
            if name in ("apt-get", "dpkg-deb") or os.path.lexists(dst) or os.path.isdir(src) or not os.access(src, os.X_OK):
                continue
            dst.symlink_to(src)
    return str(where)


def test_quickstart_without_apt_falls_back_and_completes(tmp_path):
    repo = tmp_path / "repo"  # the files the script uses; the packages come from this checkout (PYTHONPATH)
    (repo / "tools").mkdir(parents=True)
    for rel in ("tools/quickstart.sh", "tools/summary.py"):
        shutil.copy(ROOT / rel, repo / rel)
    shutil.copytree(ROOT / "configs", repo / "configs")
    shutil.copytree(ROOT / "tests" / "fixtures" / "corpus", repo / "tests" / "fixtures" / "corpus")
    path = _path_without_apt(tmp_path / "bin")
    assert shutil.which("apt-get", path=path) is None and shutil.which("bash", path=path)
    env = {**python_env(), "PATH": path, "BUDGETLM_PYTHON": sys.executable, "BUDGETLM_CACHE": str(tmp_path / "cache"),
           "QUICKSTART_DATA_ARGS": "embed.encoder=hashing", "QUICKSTART_TRAIN_ARGS": " ".join(REDUCED_TRAIN)}
    proc = subprocess.run(["bash", str(repo / "tools" / "quickstart.sh")], env=env, capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    corpus_lines = [line for line in lines if line.startswith("corpus:")]
    assert corpus_lines[0] == (
        "corpus: the Debian corpus cannot be built here (6 of 8 domains missing; apt-get and dpkg-deb not on PATH, "
        "not a Debian-based machine); using the 8-domain corpus tests/fixtures/corpus instead (155 documents, 0.47 MB) "
        "-> work/corpus")
    assert "MISSING" not in proc.stdout and "Traceback" not in proc.stderr
    summary = proc.stdout.split("=== quickstart summary ===", 1)[1]
    assert "corpus: work/corpus: the Debian corpus cannot be built here" in summary
    assert "data: 155 documents" in summary and "wall time:" in summary

    plan = json.loads((repo / "runs" / "quickstart" / "branches.json").read_text())
    assert [r["budget"] for r in plan["budgets"]] == [0.1, 0.2]
    for r in plan["budgets"]:
        assert (repo / r["hf"] / "model.safetensors").exists() and f"{r['tokens']:>10,}" in summary
    assert (repo / "runs" / "quickstart" / "schedule.png").stat().st_size > 0
    # the real quickstart plan, unreduced, fits one epoch of what was selected from the fallback corpus
    manifest = repo / "work" / "quickstart" / "tokens" / "manifest.json"
    cfg = load_config(repo / "configs" / "train" / "quickstart.yaml", [f"data.manifest={manifest}"])
    sequences = json.loads(manifest.read_text())["splits"]["train"]["tokens"] // cfg.data.seq_len
    points = budget_points(cfg)
    assert len(points) == 2 and 0 < points[-1].steps * cfg.budget.global_batch_size <= sequences
