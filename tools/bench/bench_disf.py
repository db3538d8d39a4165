"""Benchmark DiSF greedy: the from-scratch reference against the vectorised exact version.

Default: one DiSF batch (1024 files × 768 dims, k = 16) run by both methods in one process;
asserts identical picks and prints both times and the speed-up.
``--naive-candidates N``: time the reference on N candidates per pick only and extrapolate
its full cost (checking the fast scores against it on those candidates).
``--scale``: a 1,000,000 × 384 float32 memmap pool (low rank + noise) in a temp dir, run
(with ~1% planted near-copies) through ``select(ratio=1/64, batch_size=1024, workers=2)``;
prints wall/CPU time and the spectrum of the selection against random; ``--dedup-nlist N``
first times IVF near-duplicate removal and its recall of the planted copies.

    python tools/bench/bench_disf.py
    python tools/bench/bench_disf.py --naive-candidates 64
    python tools/bench/bench_disf.py --scale [--n 1000000 --d 384 --workers 2 --dedup-nlist 1024]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data_select import baselines, disf, spectrum  # noqa: E402


def bench_batch(n: int, d: int, k: int, seed: int, naive_candidates: int | None) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    init = (int(rng.integers(n)),)

    fast = disf.greedy(x, k, init, tie_seed=seed)  # warm-up (BLAS threads, page faults)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        disf.greedy(x, k, init, tie_seed=seed)
        times.append(time.perf_counter() - t0)
    t_fast = min(times)
    print(f"batch {n} x {d}, k={k}: greedy (vectorised) {t_fast:.3f} s (best of 3 after a warm-up)")

    if naive_candidates is None:
        t0 = time.perf_counter()
        naive = disf.naive_greedy(x, k, init, tie_seed=seed)
        t_naive = time.perf_counter() - t0
        if naive != fast:
            raise SystemExit(f"MISMATCH: naive {naive} vs greedy {fast}")
        print(f"naive_greedy (full run, measured): {t_naive:.2f} s; identical picks: yes")
    else:
        xd = x.astype(np.float64)
        calls = 0
        t_calls = 0.0
        total_calls = sum(n - m for m in range(len(init), k))
        for m in range(len(init), k):
            picked = fast[:m]
            cand = np.setdiff1d(np.arange(n), picked)
            sample = np.random.default_rng(m).choice(cand, size=min(naive_candidates, len(cand)), replace=False)
            t0 = time.perf_counter()
            ref = np.array([disf.score(xd[picked + [c]]) for c in sample])
            t_calls += time.perf_counter() - t0
            calls += len(sample)
            got = disf._candidate_scores(xd, picked)[sample]
            if not np.allclose(got, ref, rtol=1e-9, atol=1e-9 * d):
                raise SystemExit(f"MISMATCH in candidate scores at pick {m}")
        t_naive = t_calls / calls * total_calls
        print(f"naive_greedy EXTRAPOLATED from {calls} of {total_calls} score() calls: {t_naive:.2f} s; "
              f"sampled scores agree: yes")
    print(f"speed-up naive / greedy: {t_naive / t_fast:.0f}x")
    return {"batch": n, "dims": d, "k": k, "greedy_s": t_fast, "naive_s": t_naive, "speedup": t_naive / t_fast,
            "naive_measured": naive_candidates is None}


def bench_scale(n: int, d: int, workers: int, seed: int, dedup_nlist: int | None, rank: int = 16) -> dict:
    with tempfile.TemporaryDirectory(prefix="disf-scale-") as tmp:
        path = Path(tmp) / "features.npy"
        feats = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
        rng = np.random.default_rng(seed)
        basis = rng.normal(size=(rank, d)) * np.linspace(1.0, 0.25, rank)[:, None]
        t0 = time.perf_counter()
        chunk = 65536
        for lo in tqdm(range(0, n, chunk), desc="generate features"):
            m = min(chunk, n - lo)
            feats[lo : lo + m] = rng.normal(size=(m, rank)) @ basis + rng.normal(size=(m, d))
        planted = np.unique(rng.integers(1, n, size=n // 100))  # ~1% near-copies of earlier rows
        src = (rng.random(len(planted)) * planted).astype(np.int64)
        for dst, row in zip(planted, src):  # in order, so a copy of a copy is still a near-copy
            feats[dst] = feats[row] + 0.01 * rng.normal(size=d)
        feats.flush()
        del feats
        t_gen = time.perf_counter() - t0
        feats = np.load(path, mmap_mode="r")
        print(f"generated {n} x {d} float32 memmap ({feats.nbytes / 2**30:.2f} GiB) in {t_gen:.1f} s")

        if dedup_nlist:
            t0 = time.perf_counter()
            keep, dup_of = baselines.dedup(feats, threshold=0.95, batch_size=1024, nlist=dedup_nlist,
                                           nprobe=8, seed=seed, progress=True)
            flagged = np.flatnonzero(dup_of >= 0)
            print(f"dedup(threshold=0.95, IVF nlist={dedup_nlist}, nprobe=8): {time.perf_counter() - t0:.1f} s; "
                  f"flagged {len(flagged)}, of {len(planted)} planted near-copies found "
                  f"{np.isin(planted, flagged).sum()}, flagged but not planted {np.setdiff1d(flagged, planted).size}")

        t0, c0 = time.perf_counter(), os.times()
        sel = disf.select(feats, ratio=0.015625, batch_size=1024, seed=seed, workers=workers, progress=True)
        t_sel, c1 = time.perf_counter() - t0, os.times()
        cpu = sum(getattr(c1, f) - getattr(c0, f) for f in ("user", "system", "children_user", "children_system"))
        n_batches = -(-n // 1024)
        print(f"select(ratio=1/64, batch_size=1024, workers={workers}): {len(sel)} files from {n_batches} "
              f"batches in {t_sel:.1f} s wall, {cpu:.1f} s CPU ({cpu / n_batches * 1000:.0f} ms CPU per batch)")

        rep = spectrum.compare(feats, sel, seed=seed, top_k=10)
        for name in ("selected", "random", "pool"):
            r = rep[name]
            print(f"  {name:8s} files={r['files']:>8d} dominance(top10)={r['dominance']:.3f} "
                  f"effective_rank={r['effective_rank']:.1f}")
        del feats
    return {"files": n, "dims": d, "workers": workers, "selected": int(len(sel)), "select_wall_s": t_sel,
            "select_cpu_s": cpu, "dominance": {k: rep[k]["dominance"] for k in ("selected", "random", "pool")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=None, help="files (default 1024, or 1,000,000 with --scale)")
    p.add_argument("--d", type=int, default=None, help="dims (default 768, or 384 with --scale)")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--naive-candidates", type=int, default=None,
                   help="time the reference on this many candidates per pick and extrapolate")
    p.add_argument("--scale", action="store_true", help="run the 1M-file select() benchmark instead")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dedup-nlist", type=int, default=None,
                   help="with --scale: first time IVF near-duplicate removal with this many cells")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args()
    if a.scale:
        out = bench_scale(a.n or 1_000_000, a.d or 384, a.workers, a.seed, a.dedup_nlist)
    else:
        out = bench_batch(a.n or 1024, a.d or 768, a.k, a.seed, a.naive_candidates)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
