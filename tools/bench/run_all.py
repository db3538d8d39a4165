"""Run every benchmark once and write docs/PERFORMANCE.md (one table, the machine described).

    python tools/bench/run_all.py [--quick] [--scale]

``--quick`` extrapolates the naive DiSF reference from 32 candidates per pick instead of running it
in full (~1-2 min); ``--scale`` adds the 1M x 384 DiSF selection (~1 min plus feature generation)
and the trainer's start-up on 10B- and 3T-token manifests (~2 min).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tools" / "bench"


def run(script: str, *args: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, str(BENCH / script), *args, "--json", f.name]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        return json.loads(Path(f.name).read_text())


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}; load average at start {os.getloadavg()[0]:.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--scale", action="store_true")
    p.add_argument("--out", default=str(ROOT / "docs" / "PERFORMANCE.md"))
    args = p.parse_args()
    where = machine()
    tr = run("bench_trainer.py", "--threads", "1")
    ld = run("bench_loader.py")
    ds = run("bench_disf.py", *(["--naive-candidates", "32"] if args.quick else []))
    sc = run("bench_disf.py", "--scale") if args.scale else None
    ls = run("bench_loader.py", "--scale") if args.scale else None
    da = run("bench_data.py")
    rows = [
        ("trainer vs bare PyTorch loop", f"{tr['trainer_tokens_per_s']:,.0f} vs {tr['bare_tokens_per_s']:,.0f} tokens/s "
         f"({tr['model_params']:,}-param Llama, batch {tr['batch']}x{tr['seq_len']}, {tr['threads']} threads; "
         f"median of per-round ratios {', '.join(f'{x:.2f}' for x in tr['ratios'])})", f"{tr['ratio']:.3f}x", ">= 0.95x",
         "bench_trainer.py"),
        ("loader vs training consumption", f"{ld['loader_tokens_per_s']:,.0f} vs {ld['training_tokens_per_s']:,.0f} tokens/s",
         f"{ld['ratio']:,.0f}x", ">= 50x", "bench_loader.py"),
        ("DiSF greedy vs naive reference", f"{ds['greedy_s']:.3f} s vs {ds['naive_s']:.1f} s "
         f"({'measured' if ds['naive_measured'] else 'extrapolated'}; batch {ds['batch']}x{ds['dims']}, k={ds['k']}, same picks)",
         f"{ds['speedup']:,.0f}x", ">= 100x", "bench_disf.py"),
    ]
    if sc:
        rows.append(("DiSF select at scale", f"{sc['files']:,} x {sc['dims']} at 1/64 with {sc['workers']} workers: "
                     f"{sc['selected']:,} files", f"{sc['select_wall_s']:.0f} s", "minutes", "bench_disf.py --scale"))
    if ls:
        (lo_n, lo), (hi_n, hi) = list(ls["sizes"].items())[0], list(ls["sizes"].items())[-1]
        rows.append(("trainer start-up at scale", f"{int(lo_n):,} -> {int(hi_n):,} tokens ({lo['shards']:,} -> "
                     f"{hi['shards']:,} sparse shards), seq {ls['seq_len']}; start-up = "
                     f"pretrain imports + Trainer() + fit() to the first batch (torch/transformers imports apart: "
                     f"{lo['libraries_s']:.1f} s, {lo['rss_libraries_mb']:.0f} MB)",
                     f"{lo['startup_s']:.2f} -> {hi['startup_s']:.2f} s, {lo['rss_first_batch_mb']:.0f} -> "
                     f"{hi['rss_first_batch_mb']:.0f} MB", "< 2 s, < 500 MB, flat", "bench_loader.py --scale"))
    rows += [
        ("embedding, MiniLM (256 tokens)", "all-MiniLM-L6-v2, batch 64", f"{da['embed_minilm_256tok_docs_per_s']:.1f} docs/s", "", "bench_data.py"),
        ("embedding, MiniLM (128 tokens)", "all-MiniLM-L6-v2, batch 64", f"{da['embed_minilm_128tok_docs_per_s']:.1f} docs/s", "", "bench_data.py"),
        ("embedding, hashing", "word 1-2-grams, 384-d", f"{da['embed_hashing_docs_per_s']:,.0f} docs/s", "", "bench_data.py"),
        ("tokenization, 1 worker", "sentencepiece BPE 8k, given tokenizer", f"{da['tokenize_mb_per_s_1w']:.2f} MB/s", "", "bench_data.py"),
        ("tokenization, 2 workers", "same", f"{da['tokenize_mb_per_s_2w']:.2f} MB/s", "", "bench_data.py"),
    ]
    lines = ["# Performance", "", f"Measured {date.today().isoformat()} on: {where}.", "",
             "Regenerate with `python tools/bench/run_all.py` (add `--scale` for the 1M-file DiSF run). Ratios are "
             "taken within one run, so machine load affects both sides alike; absolute speeds vary with load.", "",
             "| what | setting | result | goal | script |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | `tools/bench/{e}` |" for a, b, c, d, e in rows]
    print("\n".join(lines))
    out = Path(args.out)
    old = out.read_text().splitlines() if out.is_file() else []
    kept = next((old[i:] for i, line in enumerate(old) if line.startswith("## ")), [])  # sections measured apart
    out.write_text("\n".join(lines + ([""] + kept if kept else [])) + "\n")


if __name__ == "__main__":
    main()
