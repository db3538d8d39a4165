"""tools/bench/gpu.sh --smoke: the GPU benchmark's whole path (data, five setups through the trainer, table)
on CPU with a tiny model, so the script is known to run the day a GPU machine is lent."""
import json
import re
import subprocess

from tests.conftest import ROOT, python_env

SETUPS = ["ddp", "fsdp2", "fsdp2+compile", "fsdp2+ac", "zero2"]


def test_gpu_benchmark_smoke(tmp_path):
    p = subprocess.run(["bash", "tools/bench/gpu.sh", "--smoke", "--out", str(tmp_path)], cwd=ROOT, env=python_env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {m[0]: m[1:] for m in re.findall(r"^\| (\S+) \| ([\d,]+) \| ([\d.]+) \| (n/a|[\d.]+%) \| ([\d.]+) \|$",
                                            p.stdout, flags=re.M)}
    assert list(rows) == SETUPS, p.stdout
    assert (tmp_path / "table.md").read_text().strip() in p.stdout
    for setup in SETUPS:
        r = json.loads((tmp_path / f"{setup}.json").read_text())
        assert r["measured_steps"] == 3 and r["tokens_per_s_per_device"] > 0 and r["peak_memory_gib"] > 0
        assert r["model"] == "tiny" and r["seq_len"] == 128 and r["world_size"] == 1
    assert "engine fsdp2 x1" in (tmp_path / "fsdp2+ac.log").read_text()
    assert "engine deepspeed x1" in (tmp_path / "zero2.log").read_text()
