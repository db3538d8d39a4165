"""Memory per document and speed of every `data-select` step, at two corpus sizes.

Builds synthetic JSONL corpora of N and 2N documents (default 1M and 2M: seven domains with their
own vocabularies, 20-400 words per document, 1 % exact repeats and 0.5 % near-copies), runs every
step on both as a child process, and reads each child's peak resident memory from the kernel
(``os.wait4`` rusage, no external ``time`` tool), then prints

- growth per document = (peak at 2N − peak at N) / N, for each step (goal: <= 64 bytes);
- documents per second of each step at both sizes;
- the projection of each step's peak to 590 M documents (SlimPajama), peak(2N) + growth·(590M − 2N);
- tokenizing a 1/64 selection (DiSF, random) against tokenizing everything (seconds and ratio).

Steps: embed (hashing encoder: one pass that writes the document table and the features),
select with disf, random, dsir, dedup, dedup+disf, dedup+random and disf by token budget, report,
tokenize --selection (of the DiSF and of the random selection), and (for comparison) tokenize of
the whole corpus. Every step uses one worker. Each step runs at both sizes before the next one
starts, and the results are rewritten after every step, so a time-boxed run leaves complete pairs;
``--steps`` runs a subset (embed always runs: every other step reads its features).

    python tools/bench/bench_curation_scale.py --work /tmp/curation-bench [--sizes 1000000 2000000]
        [--steps "select dedup" report ...]

Writes ``results.json`` and ``results.md`` into ``--work``. About 1.5 h for 1M + 2M on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SLIMPAJAMA = 590_000_000
DOMAINS = ("web", "c4", "code", "books", "arxiv", "wiki", "stackexchange")
GOAL = 64


def corpus(out: Path, n: int, seed: int = 0) -> dict:
    """The corpus of n documents at ``out`` (built by a child process: a child's peak-memory
    reading starts from its parent's size at fork, so this process stays small)."""
    if not (out / "corpus.json").is_file():
        subprocess.run([sys.executable, __file__, "--make-corpus", str(out), str(n), str(seed)], check=True)
    return json.loads((out / "corpus.json").read_text())


def make_corpus(out: Path, n: int, *, seed: int = 0, per_file: int = 100_000) -> dict:
    """n JSONL records in files of ``per_file``; returns counts of planted repeats."""
    import numpy as np

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = [np.array(["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(3000)])
             for _ in DOMAINS]
    recent: list[str] = []
    exact = near = 0
    for f in range(-(-n // per_file)):
        lines = []
        for _ in range(min(per_file, n - f * per_file)):
            d = int(rng.integers(len(DOMAINS)))
            u = rng.random()
            if u < 0.01 and recent:
                text, exact = recent[int(rng.integers(len(recent)))], exact + 1
            elif u < 0.015 and recent:
                text, near = recent[int(rng.integers(len(recent)))] + " appendix", near + 1
            else:
                text = " ".join(rng.choice(vocab[d], size=int(rng.integers(20, 400))))
                if len(recent) < 1000:
                    recent.append(text)
                else:
                    recent[int(rng.integers(1000))] = text
            lines.append(json.dumps({"text": text, "domain": DOMAINS[d]}))
        (out / f"part-{f:05d}.jsonl").write_text("\n".join(lines) + "\n")
    info = {"documents": n, "exact_repeats": exact, "near_copies": near,
            "bytes": sum(p.stat().st_size for p in out.glob("*.jsonl"))}
    (out / "corpus.json").write_text(json.dumps(info))
    return info


def _self_kb() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run_step(cmd: list[str], log: Path) -> dict:
    """Run a `data-select` command as a child; its wall time and peak RSS (kernel rusage)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "data_select", *cmd], stdout=f, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"step failed (rc {rc}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return {"seconds": round(wall, 2), "peak_kb": int(usage.ru_maxrss)}


def steps(corpus: Path, work: Path, tokenizer: Path) -> list[tuple[str, list[str]]]:
    f, q = str(work / "features"), ["--no-progress"]
    sel = lambda name: str(work / f"sel-{name}")  # noqa: E731
    return [
        ("embed", ["embed", str(corpus), "--out", f, "--encoder", "hashing", *q]),
        ("select disf", ["select", "--features", f, "--out", sel("disf"), "--method", "disf", *q]),
        ("select random", ["select", "--features", f, "--out", sel("random"), "--method", "random", *q]),
        ("report", ["report", "--features", f, "--selection", sel("disf"), "--out", sel("disf")]),
        ("tokenize --selection", ["tokenize", str(corpus), "--out", str(work / "tok-sel"), "--selection", sel("disf"),
                                  "--tokenizer", str(tokenizer), "--workers", "1", *q]),
        ("tokenize --selection (random)", ["tokenize", str(corpus), "--out", str(work / "tok-rnd"),
                                           "--selection", sel("random"), "--tokenizer", str(tokenizer), "--workers", "1",
                                           *q]),
        ("select dedup", ["select", "--features", f, "--out", sel("dedup"), "--method", "dedup", *q]),
        ("select dedup+random", ["select", "--features", f, "--out", sel("dedup+random"), "--method", "dedup+random",
                                 *q]),
        ("select dedup+disf", ["select", "--features", f, "--out", sel("dedup+disf"), "--method", "dedup+disf", *q]),
        ("select disf --tokens", ["select", "--features", f, "--out", sel("tokens"), "--method", "disf",
                                  "--tokens", "__TOKENS__", "--tokenizer", str(tokenizer), *q]),
        ("select dsir", ["select", "--features", f, "--out", sel("dsir"), "--method", "dsir", "--target", "wiki", *q]),
        ("tokenize all (reference)", ["tokenize", str(corpus), "--out", str(work / "tok-all"),
                                      "--tokenizer", str(tokenizer), "--workers", "1", *q]),
    ]


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--make-corpus":
        make_corpus(Path(sys.argv[2]), int(sys.argv[3]), seed=int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (corpora, features, outputs)")
    ap.add_argument("--sizes", type=int, nargs=2, default=[1_000_000, 2_000_000])
    ap.add_argument("--keep", action="store_true", help="keep the outputs (default: delete them at the end)")
    ap.add_argument("--steps", nargs="+", default=None, metavar="STEP",
                    help="run only these steps (names as printed; embed always runs)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = args.work / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file():  # one shared tokenizer, trained outside the measurements
        small = args.work / "tok-train"
        corpus(small, 20_000, seed=99)
        run_step(["tokenize", str(small), "--out", str(args.work / "tok-train-out"), "--vocab-size", "8000",
                  "--workers", "1", "--no-progress"], args.work / "tok-train.log")
        shutil.copytree(args.work / "tok-train-out" / "tokenizer", tokenizer)
    results: dict = {"sizes": args.sizes, "steps": {}, "corpora": {}, "bench_rss_kb": _self_kb()}
    plans = {}
    for n in args.sizes:
        folder = args.work / f"corpus-{n}"
        results["corpora"][n] = corpus(folder, n)
        out = args.work / f"run-{n}"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir()
        tokens = str(int(results["corpora"][n]["bytes"] / 4.5 / 64))  # ~1/64 of the corpus, in tokens
        plans[n] = (out, [(name, [tokens if c == "__TOKENS__" else c for c in cmd])
                          for name, cmd in steps(folder, out, tokenizer)])
    names = [name for name, _ in plans[args.sizes[0]][1]]
    unknown = set(args.steps or []) - set(names)
    if unknown:
        raise SystemExit(f"unknown step(s) {sorted(unknown)}; steps: {names}")
    for i, name in enumerate(names):
        if args.steps and name != "embed" and name not in args.steps:
            continue
        for n in args.sizes:
            out, cmd = plans[n][0], plans[n][1][i][1]
            r = run_step(cmd, out / f"{name.replace(' ', '_').replace('/', '')}.log")
            r["docs_per_s"] = round(n / r["seconds"], 1)
            results["steps"].setdefault(name, {})[n] = r
            print(f"{n:>9,} {name:30s} {r['seconds']:8.1f} s {r['peak_kb'] / 1024:9.1f} MiB", flush=True)
        for kind, folder in (("disf", "tok-sel"), ("random", "tok-rnd"), ("all", "tok-all")):
            for n in args.sizes:
                manifest = plans[n][0] / folder / "manifest.json"
                if manifest.is_file():
                    m = json.loads(manifest.read_text())
                    results.setdefault("tokenized", {}).setdefault(n, {})[kind] = {
                        "documents": m["sources"]["documents"], "pool": m["sources"]["read"],
                        "tokens": m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]}
        write(results, args.work)
    if not args.keep:
        for n in args.sizes:
            shutil.rmtree(plans[n][0])


def write(results: dict, work: Path) -> None:
    a, b = results["sizes"]
    rows = []
    for name, by in results["steps"].items():
        if a not in by or b not in by:
            continue
        pa, pb = by[a]["peak_kb"] * 1024, by[b]["peak_kb"] * 1024
        growth = (pb - pa) / (b - a)
        proj = pb + growth * (SLIMPAJAMA - b)
        rows.append({"step": name, "peak_a_mib": pa / 2**20, "peak_b_mib": pb / 2**20, "bytes_per_doc": growth,
                     "docs_per_s_a": by[a]["docs_per_s"], "docs_per_s_b": by[b]["docs_per_s"],
                     "seconds_a": by[a]["seconds"], "seconds_b": by[b]["seconds"], "projected_gib": proj / 2**30,
                     "ok": growth <= GOAL})
    results["table"] = rows
    step_of = {"disf": "tokenize --selection", "random": "tokenize --selection (random)", "all": "tokenize all (reference)"}
    lines = [f"| step | peak RSS {a:,} docs | peak RSS {b:,} docs | growth per document | docs/s at {a:,} | "
             f"docs/s at {b:,} | projected peak at 590M docs |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['peak_a_mib']:,.0f} MiB | {r['peak_b_mib']:,.0f} MiB | "
                     f"{r['bytes_per_doc']:.1f} B{'' if r['ok'] else ' (over 64)'} | {r['docs_per_s_a']:,.0f} | "
                     f"{r['docs_per_s_b']:,.0f} | {r['projected_gib']:,.1f} GiB |")
    tokenized = results.get("tokenized", {})
    if any("all" in tokenized.get(n, {}) for n in (a, b)):
        lines += ["", "| tokenize | documents | tokens | seconds | share of the time for everything |",
                  "|---|---|---|---|---|"]
    for n in (a, b):
        tk = tokenized.get(n, {})
        if "all" not in tk:
            continue
        all_s = results["steps"][step_of["all"]][n]["seconds"]
        for name in (k for k in ("disf", "random", "all") if k in tk):
            sec = results["steps"][step_of[name]][n]["seconds"]
            lines.append(f"| {name if name == 'all' else f'1/64 {name} selection'} of {n:,} | {tk[name]['documents']:,} "
                         f"({tk[name]['documents'] / tk[name]['pool']:.2%}) | {tk[name]['tokens']:,} "
                         f"({tk[name]['tokens'] / tk['all']['tokens']:.2%}) | {sec:.1f} | {sec / all_s:.3f} |")
    results["markdown"] = "\n".join(lines)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    (work / "results.md").write_text(results["markdown"] + "\n")
    print(results["markdown"])


if __name__ == "__main__":
    main()
