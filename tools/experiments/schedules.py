"""Experiment (a): LR schedules at fixed budgets B, 2B, 4B -> docs/RESULTS.md section "schedules".

Phases, each skipping runs that already have a summary.json:
1. LR sweep: cosine at the middle budget with three peak LRs; the best is used by every schedule.
2. Grid: cosine, linear, WSD (1-sqrt, 20% decay), REX, UBA phi in {0.5, 1, 4} at every budget, and
   UBA phi=2 (identical to cosine by its closed form) at the smallest budget as a sanity check.
3. Seed repeats of the best three schedules and cosine at the middle budget.

``--shard K/N`` trains only every N-th run of each phase (two processes share the machine's two
cores); a shard waits for the other shards' runs a phase depends on. The report is written from
whatever runs exist.

    python tools/experiments/schedules.py [--quick] [--shard 0/2] [--seeds 2] [--report-only]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from common import (ROOT, ExperimentError, Layout, smooth, final_val_loss, make_config, markdown_table, publish,
                    publish_section, run_driver, setup_section, setup_threads, schedule_spec, train_curve, train_run,
                    write_json, write_section)

NAME = "schedules"
SWEEP_LRS = (2e-3, 4e-3, 8e-3)
SCHEDULES = ("cosine", "linear", "wsd", "rex", "uba-0.5", "uba-1", "uba-2", "uba-4")
SANITY_ONLY = {"uba-2"}  # equals cosine by construction: trained at the smallest budget only, to check that


def run_name(sched: str, steps: int, lr: float, seed: int) -> str:
    return f"{sched}-b{steps}-lr{lr:g}-s{seed}"


def sweep_runs(layout: Layout) -> list[tuple[str, int, float, int]]:
    return [("cosine", layout.budgets[1], lr, 0) for lr in SWEEP_LRS]


def grid_runs(layout: Layout, lr: float) -> list[tuple[str, int, float, int]]:
    return [(s, b, lr, 0) for b in layout.budgets for s in SCHEDULES if s not in SANITY_ONLY or b == layout.budgets[0]]


def _run(layout: Layout, spec: tuple[str, int, float, int]) -> Path:
    sched, steps, lr, seed = spec
    run_dir = layout.runs / run_name(*spec)
    cfg = make_config(run_dir, schedule=schedule_spec(sched, layout.warmup), steps=steps, lr=lr, seed=seed,
                      quick=layout.quick)
    train_run(cfg, run_name(*spec))
    publish(run_dir, layout.results / run_dir.name)
    return run_dir


def _done(layout: Layout, spec) -> bool:
    return (layout.runs / run_name(*spec) / "summary.json").is_file()


def _phase(layout: Layout, specs: list, shard: tuple[int, int], wait: bool = True) -> None:
    k, n = shard
    for i, spec in enumerate(specs):
        if i % n == k:
            _run(layout, spec)
    while wait and not all(_done(layout, s) for s in specs):
        missing = [run_name(*s) for s in specs if not _done(layout, s)]
        print(f"[wait] for other shards: {', '.join(missing)}", flush=True)
        time.sleep(20)


def val_losses(layout: Layout, specs: list) -> dict:
    return {spec: final_val_loss(layout.runs / run_name(*spec) / "metrics.jsonl") for spec in specs if _done(layout, spec)}


def best_lr(layout: Layout) -> float:
    losses = val_losses(layout, sweep_runs(layout))
    if len(losses) < len(SWEEP_LRS):
        raise ExperimentError(f"LR sweep incomplete in {layout.runs}: run the driver without --report-only first")
    return min(losses, key=losses.get)[2]


def seed_runs(layout: Layout, lr: float, n_seeds: int, top: int = 3) -> list:
    """Extra seeds at the middle budget for the best ``top`` schedules and cosine (the reference of every claim)."""
    mid = layout.budgets[1]
    losses = {s: v for s, v in val_losses(layout, grid_runs(layout, lr)).items() if s[1] == mid}
    ranked = [s[0] for s in sorted(losses, key=losses.get)[:top]]
    if losses and "cosine" not in ranked:
        ranked.append("cosine")
    return [(s, mid, lr, seed) for s in ranked for seed in range(1, n_seeds)]


# --------------------------------------------------------------------------- report


def plot_losses(layout: Layout, lr: float, path: Path) -> Path:
    from matplotlib.figure import Figure

    from pretrain.schedule_plot import save_figure

    fig = Figure(figsize=(15, 4.5))
    axes = fig.subplots(1, len(layout.budgets))
    for ax, budget in zip(axes, layout.budgets):
        finals = []
        for i, sched in enumerate(SCHEDULES):
            spec = (sched, budget, lr, 0)
            if not _done(layout, spec):
                continue
            steps, losses, _ = train_curve(layout.runs / run_name(*spec) / "metrics.jsonl")
            curve = smooth(losses)
            ax.plot(steps, curve, color=f"C{i}", lw=1.2, ls="--" if sched in SANITY_ONLY else "-", label=sched)
            finals.append(curve[-1])
        if finals:
            lo, hi = min(finals), max(finals)
            ax.set_ylim(lo - 0.1, hi + 1.0)
        ax.set_title(f"budget {budget} steps")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("train loss (moving average of 15 steps)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"(a) train loss by schedule, peak LR {lr:g}")
    return save_figure(fig, path)


def plot_finals(table: dict, budgets: tuple[int, ...], path: Path) -> Path:
    from matplotlib.figure import Figure

    from pretrain.schedule_plot import save_figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for i, sched in enumerate(SCHEDULES):
        pts = [(b, table[sched][b]) for b in budgets if table.get(sched, {}).get(b) is not None]
        if pts:
            ax.plot(*zip(*pts), "o-" if sched not in SANITY_ONLY else "x", color=f"C{i}", label=sched)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(budgets), [str(b) for b in budgets])
    ax.set_xlabel("budget (optimizer steps)")
    ax.set_ylabel("final validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("(a) final validation loss vs budget")
    return save_figure(fig, path)


def plot_lrs(layout: Layout, lr: float, path: Path) -> Path:
    """Same as ``pretrain schedule RUN/config.yaml --compare ... --plot PNG`` over the largest budget's runs."""
    from pretrain.config import load_config
    from pretrain.schedule_plot import lr_curve, plot_curves

    budget = layout.budgets[-1]
    curves = []
    for sched in SCHEDULES:
        steps = budget if sched not in SANITY_ONLY else layout.budgets[0]
        cfg_path = layout.runs / run_name(sched, steps, lr, 0) / "config.yaml"
        if cfg_path.is_file():
            curves.append(lr_curve(load_config(cfg_path), label=sched, total_steps=budget))
    return plot_curves(curves, path, title=f"(a) LR schedules over {budget} steps (warm-up {layout.warmup})")


def _sanity(layout: Layout, lr: float) -> str:
    b = layout.budgets[0]
    a, c = (layout.runs / run_name(s, b, lr, 0) / "metrics.jsonl" for s in ("uba-2", "cosine"))
    if not (a.is_file() and c.is_file()):
        return ""
    _, la, ra = train_curve(a)
    _, lc, rc = train_curve(c)
    n = min(len(la), len(lc))
    return (f"Sanity: UBA φ=2 vs cosine at {b} steps: max |ΔLR| = {np.max(np.abs(ra[:n] - rc[:n])):.2e}, "
            f"max |Δ train loss| over all steps = {np.max(np.abs(la[:n] - lc[:n])):.2e}, final val loss "
            f"{final_val_loss(a):.4f} vs {final_val_loss(c):.4f}.")


def _uba_vs_cosine(table: dict, seeds: dict, budgets: tuple[int, ...]) -> str:
    """Did "UBA beats cosine" reproduce? Best UBA phi per budget against cosine, and the seed noise for scale."""
    parts = []
    for b in budgets:
        uba = {s: d[b] for s, d in table.items() if s.startswith("uba-") and s not in SANITY_ONLY and b in d}
        if not uba or b not in table.get("cosine", {}):
            continue
        best = min(uba, key=uba.get)
        beats = [s for s, v in uba.items() if v < table["cosine"][b]]
        parts.append(f"{b} steps: best UBA is {best} ({uba[best] - table['cosine'][b]:+.4f} vs cosine); "
                     f"{len(beats)} of {len(uba)} φ values beat cosine")
    noise = [np.std(list(d.values()), ddof=1) for d in seeds.values() if len(d) > 1]
    tail = (f" Seed-to-seed standard deviation of one schedule's loss at {budgets[1]} steps: {np.mean(noise):.4f} "
            "(mean over the repeated schedules); differences between schedules run with the same seed vary much less "
            "(paired column of the seed table).") if noise else ""
    return "UBA vs cosine: " + "; ".join(parts) + "." + tail if parts else ""


def build_table(layout: Layout, lr: float) -> dict:
    table: dict = {}
    for spec, v in val_losses(layout, grid_runs(layout, lr)).items():
        table.setdefault(spec[0], {})[spec[1]] = v
    return table


def report(layout: Layout, n_seeds: int) -> str:
    lr = best_lr(layout)
    budgets = layout.budgets
    out = layout.results
    sweep = {s[2]: v for s, v in val_losses(layout, sweep_runs(layout)).items()}
    table = build_table(layout, lr)
    seeds = {}
    for spec, v in val_losses(layout, seed_runs(layout, lr, n_seeds)).items():
        seeds.setdefault(spec[0], {0: table[spec[0]][spec[1]]})[spec[3]] = v
    summary = {"peak_lr": lr, "warmup_steps": layout.warmup, "budgets": list(budgets),
               "lr_sweep": {f"{k:g}": v for k, v in sweep.items()},
               "final_val_loss": {s: {str(b): v for b, v in d.items()} for s, d in table.items()},
               "seed_repeats_middle_budget": {s: {str(k): v for k, v in d.items()} for s, d in seeds.items()}}
    write_json(out / "summary.json", summary)
    plots = [plot_losses(layout, lr, out / "loss-curves.png"), plot_finals(table, budgets, out / "final-val-loss.png"),
             plot_lrs(layout, lr, out / "lr-curves.png")]

    rows, winners = [], []
    for sched in SCHEDULES:
        rows.append([sched] + [table.get(sched, {}).get(b, "—") for b in budgets])
    for b in budgets:
        cands = {s: d[b] for s, d in table.items() if b in d and s not in SANITY_ONLY}
        winners.append(min(cands, key=cands.get) if cands else "—")
    for row in rows:
        for j, b in enumerate(budgets):
            if row[0] == winners[j]:
                row[j + 1] = f"**{row[j + 1]:.4f}**"
    rows.append(["*winner*"] + [f"*{w}*" for w in winners])
    cos_rows = []
    for sched in SCHEDULES:
        if sched == "cosine" or sched in SANITY_ONLY:
            continue
        cos_rows.append([sched] + [f"{table[sched][b] - table['cosine'][b]:+.4f}"
                                   if b in table.get(sched, {}) and b in table.get("cosine", {}) else "—"
                                   for b in budgets])
    seed_rows = []
    cos = seeds.get("cosine", {})
    for sched, d in sorted(seeds.items(), key=lambda kv: np.mean(list(kv[1].values()))):
        vals = [d[k] for k in sorted(d)]
        paired = [d[k] - cos[k] for k in sorted(d) if k in cos]  # same seed = same init and data order
        seed_rows.append([sched] + [f"{v:.4f}" for v in vals] + [f"{np.mean(vals):.4f}", f"{np.std(vals, ddof=1):.4f}"
                                                                  if len(vals) > 1 else "—",
                                                                  f"{np.mean(paired):+.4f} ± {np.std(paired, ddof=1):.4f}"
                                                                  if len(paired) > 1 and sched != "cosine" else "—"])
    sweep_rows = [[f"{k:g}", v if k != lr else f"**{v:.4f}**"] for k, v in sorted(sweep.items())]
    headers = ["schedule"] + [f"{b} steps ({b * 1024 // 1000}k tok)" for b in budgets]
    parts = [
        "## (a) Schedules at fixed budgets",
        "",
        f"Every run: seed 0 (model init and data order), same data order for all schedules, peak LR {lr:g}, warm-up "
        f"{layout.warmup} steps, floor 0. WSD: 1-sqrt decay over the last 20%. UBA φ=2 is cosine by its closed "
        "form, so it was trained at the smallest budget only, as a sanity check.",
        "",
        f"**LR sweep** (cosine, {budgets[1]} steps, final validation loss):",
        "",
        markdown_table(["peak LR", "val loss"], sweep_rows),
        "",
        "**Final validation loss** (whole validation split; lower is better; bold = best per budget):",
        "",
        markdown_table(headers, rows),
        "",
        "Difference to cosine (negative = better than cosine):",
        "",
        markdown_table(["schedule"] + [str(b) for b in budgets], cos_rows),
        "",
        _sanity(layout, lr),
        "",
        _uba_vs_cosine(table, seeds, budgets),
        "",
    ]
    if seed_rows:
        n = max(len(r) for r in seed_rows) - 4
        parts += [f"**Seed repeats** of the best three and cosine at {budgets[1]} steps (seed changes init and data order):", "",
                  markdown_table(["schedule"] + [f"seed {i}" for i in range(n)] + ["mean", "std", "Δ vs cosine, paired by seed"],
                                 seed_rows), ""]
    parts += [f"![loss curves]({layout.rel(plots[0])})", "", f"![final loss vs budget]({layout.rel(plots[1])})", "",
              f"![LR curves]({layout.rel(plots[2])})", "",
              f"(LR plot = `python -m pretrain schedule {os.path.relpath(layout.runs, ROOT)}/cosine-b{budgets[-1]}-lr{lr:g}-s0/config.yaml "
              "--compare <the other runs' config.yaml> --plot lr-curves.png`.)"]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budgets, results under work/ (a smoke run)")
    ap.add_argument("--shard", default="0/1", help="K/N: train every N-th run starting at K (default 0/1: all)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds for the repeats of the best three (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process (default 1)")
    ap.add_argument("--report-only", action="store_true", help="train nothing; rewrite tables and plots")
    args = ap.parse_args(argv)
    try:
        k, n = (int(x) for x in args.shard.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        ap.error(f"--shard {args.shard!r}: expected K/N with 0 <= K < N")
    setup_threads(args.threads)
    layout = Layout(NAME, args.quick)
    t0 = time.time()
    if not args.report_only:
        _phase(layout, sweep_runs(layout), (k, n))
        lr = best_lr(layout)
        print(f"[sweep] best peak LR {lr:g}", flush=True)
        _phase(layout, grid_runs(layout, lr), (k, n))
        _phase(layout, seed_runs(layout, lr, args.seeds), (k, n))
    if k == 0:
        write_section(layout.results_md, "setup", setup_section(layout))
        publish_section(layout.results_md, NAME, report(layout, args.seeds), t0)
    return 0


if __name__ == "__main__":
    run_driver(main, "schedules")
