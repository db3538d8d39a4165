"""Peak memory and step time with and without activation checkpointing, ~50M-parameter Llama, CPU.

Each setup runs in a process of its own (peak resident memory is per process), through the real
trainer (tools/bench/bench_engines.py, DDP engine, one process, one thread), in rounds that
alternate the order (ABBA) so that drifting machine load hits both alike; the ratios are per round.
Step time comes from runs with the default allocator. Peak memory comes from separate short runs
with glibc's mmap threshold at 64 KiB: every large tensor then goes back to the system when freed,
so the peak resident size follows the live tensors instead of the allocator's high-water marks
(which made it vary by 20% between identical runs).

    python tools/bench/bench_activation_checkpointing.py [--seq 1024] [--steps 4] [--rounds 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tools" / "bench" / "bench_engines.py"


def run(setup: str, data: Path, args, out: Path, memory: bool) -> dict:
    steps = 2 if memory else args.steps
    cmd = [sys.executable, str(BENCH), "--setup", setup, "--data", str(data), "--model", "50m", "--seq", str(args.seq),
           "--micro-batch", str(args.micro_batch), "--steps", str(steps), "--warmup", "1", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"} | ({"MALLOC_MMAP_THRESHOLD_": "65536"} if memory else {})
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env=env)
    return json.loads(out.read_text())


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="measured steps per run (after 1 warm-up step)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = tmp / "data"
        subprocess.run([sys.executable, str(BENCH), "--make-data", str(data), "--vocab", "32000", "--tokens",
                        str((args.steps + 3) * args.micro_batch * args.seq)], check=True, stdout=subprocess.DEVNULL)
        for r in range(args.rounds):
            order = ("ddp", "ddp+ac") if r % 2 == 0 else ("ddp+ac", "ddp")  # ABBA: drifting load hits both alike
            timed = {s: run(s, data, args, tmp / f"{s}-{r}.json", memory=False) for s in order}
            peaks = {s: run(s, data, args, tmp / f"{s}-{r}-mem.json", memory=True)["peak_memory_gib"] for s in order}
            off, on = ({**timed[s], "peak_memory_gib": peaks[s]} for s in ("ddp", "ddp+ac"))
            rows.append({"round": r, "off": off, "on": on, "memory_ratio": on["peak_memory_gib"] / off["peak_memory_gib"],
                         "time_ratio": on["step_time_s"] / off["step_time_s"]})
            print(f"round {r}: peak {off['peak_memory_gib']:.2f} -> {on['peak_memory_gib']:.2f} GiB, step "
                  f"{off['step_time_s']:.2f} -> {on['step_time_s']:.2f} s", flush=True)
    off, on = rows[0]["off"], rows[0]["on"]
    out = {"model_params": off["params"], "seq_len": args.seq, "micro_batch": args.micro_batch, "steps": args.steps,
           "peak_gib_off": statistics.median(r["off"]["peak_memory_gib"] for r in rows),
           "peak_gib_on": statistics.median(r["on"]["peak_memory_gib"] for r in rows),
           "step_s_off": statistics.median(r["off"]["step_time_s"] for r in rows),
           "step_s_on": statistics.median(r["on"]["step_time_s"] for r in rows),
           "memory_ratio": statistics.median(r["memory_ratio"] for r in rows),
           "time_ratio": statistics.median(r["time_ratio"] for r in rows), "rounds": rows}
    print(f"{off['params']:,}-param Llama, sequence {args.seq}, micro-batch {args.micro_batch}, CPU fp32: peak memory "
          f"{out['peak_gib_off']:.2f} -> {out['peak_gib_on']:.2f} GiB (x{out['memory_ratio']:.2f}), step time "
          f"{out['step_s_off']:.2f} -> {out['step_s_on']:.2f} s (x{out['time_ratio']:.2f}) with activation checkpointing")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
