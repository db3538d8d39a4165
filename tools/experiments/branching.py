"""Experiment (b): finished models for budgets B, 2B, 4B from one run -> docs/RESULTS.md section "branching".

Compares, per budget, the final validation loss and the total tokens spent to get all three models:
- separate cosine runs and separate WSD runs (reused from experiment (a), same LR, seed, data order);
- a WSD plan (``pretrain plan``): one stable main run, a 1-sqrt decay branched off it for every budget;
- a WSD-S plan (``pretrain plan --mode wsds``): the main branch continues from each decayed model.

A plan whose ``branches.json`` exists is not retrained. Needs the peak LR chosen by (a)'s sweep.

    python tools/experiments/branching.py [--quick] [--report-only]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import schedules as exp_a
from common import (ExperimentError, Layout, smooth, final_val_loss, make_config, markdown_table, publish, schedule_spec,
                    setup_threads, train_curve, write_json, write_section)

NAME = "branching"
MODES = ("wsd", "wsds")


def plan_config(layout: Layout, mode: str, lr: float):
    budgets = layout.budgets
    return make_config(layout.runs / f"plan-{mode}", schedule=schedule_spec("wsd", layout.warmup), steps=budgets[-1],
                       lr=lr, quick=layout.quick,
                       extra={"budget": {"budgets": list(budgets)}, "checkpoint": {"save_final": True}})


def run_plan(layout: Layout, mode: str, lr: float) -> dict:
    """Train one plan (or read it back) and publish the metrics of its main run and every branch."""
    from pretrain.branching import run_plan as train_plan

    cfg = plan_config(layout, mode, lr)
    root = Path(cfg.run_dir)
    report_path = root / "branches.json"
    if report_path.is_file():
        print(f"[skip] plan {mode}: {report_path} exists", flush=True)
    else:
        print(f"[train] plan {mode} -> {root}", flush=True)
        train_plan(cfg, mode=mode)
    report = json.loads(report_path.read_text())
    dest = layout.results / f"plan-{mode}"
    for sub in sorted(p for p in root.iterdir() if (p / "summary.json").is_file()):
        publish(sub, dest / sub.name)
    write_json(dest / "branches.json", report)
    return report


def separate(layout: Layout, sched: str, lr: float) -> dict[int, dict]:
    """(a)'s run of ``sched`` at each budget: final val loss and tokens, or nothing if (a) has not run it."""
    a = Layout(exp_a.NAME, layout.quick)
    out = {}
    for b in layout.budgets:
        metrics = a.runs / exp_a.run_name(sched, b, lr, 0) / "metrics.jsonl"
        if metrics.is_file() and metrics.with_name("summary.json").is_file():
            out[b] = {"final_val_loss": final_val_loss(metrics), "tokens": b * 1024, "metrics": metrics}
    return out


def _bitwise_check(layout: Layout, plan: dict, wsd_sep: dict) -> str:
    """The WSD plan's branch for a budget must repeat (a)'s WSD run of that budget step for step."""
    lines = []
    for row in plan["budgets"]:
        b = row["budget"]
        if b not in wsd_sep:
            continue
        _, lb, _ = train_curve(Path(row["run_dir"]) / "metrics.jsonl")
        _, ls, _ = train_curve(wsd_sep[b]["metrics"])
        tail = ls[-len(lb):]
        lines.append(f"{b}: max |Δ train loss| over the decay = {np.max(np.abs(lb - tail)):.1e}, val loss "
                     f"{row['final_val_loss']:.4f} vs {wsd_sep[b]['final_val_loss']:.4f}")
    return "; ".join(lines)


def plot(layout: Layout, plans: dict, cos_sep: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    from pretrain.schedule_plot import save_figure

    fig = Figure(figsize=(14, 4.5))
    ax, ax2 = fig.subplots(1, 2)
    colors = {"wsd": "C2", "wsds": "C3"}
    for mode, report in plans.items():
        root = layout.runs / f"plan-{mode}"
        if mode == "wsd":
            steps, losses, _ = train_curve(root / "main" / "metrics.jsonl")
            ax.plot(steps, smooth(losses), color=colors[mode], lw=1, alpha=0.6, label="WSD main (stable)")
        for i, row in enumerate(report["budgets"]):
            steps, losses, _ = train_curve(Path(row["run_dir"]) / "metrics.jsonl")
            ax.plot(steps, smooth(losses), color=colors[mode], lw=1.3, ls="-" if mode == "wsd" else ":",
                    label=f"{'WSD branches' if mode == 'wsd' else 'WSD-S segments'}" if i == 0 else None)
    for i, (b, d) in enumerate(sorted(cos_sep.items())):
        steps, losses, _ = train_curve(d["metrics"])
        ax.plot(steps, smooth(losses), color="C0", lw=1, alpha=0.7, label="cosine, separate runs" if i == 0 else None)
    finals = [row["final_val_loss"] for r in plans.values() for row in r["budgets"]]
    if finals:
        ax.set_ylim(min(finals) - 0.2, max(finals) + 1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss (moving average of 15 steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("(b) train loss of each approach")

    def cost_curve(label, color, budgets_losses, spent):
        ax2.plot(np.array(spent) / 1e3, budgets_losses, "o-", color=color, label=label)

    if cos_sep:
        bs = sorted(cos_sep)
        cost_curve("cosine, separate runs", "C0", [cos_sep[b]["final_val_loss"] for b in bs],
                   np.cumsum([b * 1024 for b in bs]))
    for mode, report in plans.items():
        rows = report["budgets"]
        if mode == "wsd":
            # the main run up to this budget's branch point, plus the decays of this and the smaller budgets
            spent = [(row["branch_step"] + sum(r["decay_steps"] for r in rows[:i + 1])) * report["tokens_per_step"]
                     for i, row in enumerate(rows)]
        else:
            spent = [row["tokens"] for row in rows]
        cost_curve("WSD plan" if mode == "wsd" else "WSD-S plan", colors[mode], [r["final_val_loss"] for r in rows], spent)
    ax2.set_xlabel("tokens spent to have every model up to this budget (thousands)")
    ax2.set_ylabel("final validation loss")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    ax2.set_title("(b) loss of each budget's model vs cumulative cost")
    return save_figure(fig, path)


def _claims(plans: dict, cos_sep: dict, budgets: tuple[int, ...]) -> str:
    """The two claims checked here, stated from the numbers: WSD plan vs separate cosine, WSD-S vs WSD."""
    lines = []
    separate_tokens = sum(b * 1024 for b in budgets)
    if "wsd" in plans and cos_sep:
        rep = plans["wsd"]
        d = [r["final_val_loss"] - cos_sep[r["budget"]]["final_val_loss"] for r in rep["budgets"] if r["budget"] in cos_sep]
        lines.append(f"- WSD plan vs separate cosine runs: Δ val loss {', '.join(f'{x:+.4f}' for x in d)} "
                     f"(budgets {', '.join(str(r['budget']) for r in rep['budgets'] if r['budget'] in cos_sep)}) for "
                     f"{100 * (1 - rep['plan_tokens'] / separate_tokens):.0f}% fewer tokens.")
    if "wsd" in plans and "wsds" in plans:
        wsd = {r["budget"]: r["final_val_loss"] for r in plans["wsd"]["budgets"]}
        d = [(r["budget"], r["final_val_loss"] - wsd[r["budget"]]) for r in plans["wsds"]["budgets"] if r["budget"] in wsd]
        lines.append("- WSD-S vs WSD plan: Δ val loss " + ", ".join(f"{b}: {x:+.4f}" for b, x in d) +
                     f" (the smallest budget is the same run in both); WSD-S spends "
                     f"{plans['wsds']['plan_tokens']:,} tokens vs {plans['wsd']['plan_tokens']:,}.")
    return "\n".join(lines)


def report(layout: Layout, plans: dict, lr: float) -> str:
    budgets = layout.budgets
    cos_sep, wsd_sep = separate(layout, "cosine", lr), separate(layout, "wsd", lr)
    tps = 1024
    approaches = [("cosine, separate runs (a)", {b: d["final_val_loss"] for b, d in cos_sep.items()},
                   sum(b * tps for b in budgets) if len(cos_sep) == len(budgets) else None),
                  ("WSD, separate runs (a)", {b: d["final_val_loss"] for b, d in wsd_sep.items()},
                   sum(b * tps for b in budgets) if len(wsd_sep) == len(budgets) else None)]
    for mode, rep in plans.items():
        approaches.append(("WSD plan: one main run + branches" if mode == "wsd" else "WSD-S plan",
                           {r["budget"]: r["final_val_loss"] for r in rep["budgets"]}, rep["plan_tokens"]))
    rows = []
    for label, losses, spent in approaches:
        rows.append([label] + [losses.get(b, "—") for b in budgets] + [f"{spent:,}" if spent else "—"])
    summary = {"peak_lr": lr, "budgets": list(budgets),
               "approaches": [{"approach": label, "final_val_loss": {str(b): v for b, v in losses.items()},
                               "tokens_spent": spent} for label, losses, spent in approaches]}
    write_json(layout.results / "summary.json", summary)
    png = plot(layout, plans, cos_sep, layout.results / "branching.png")
    deltas = []
    for mode, rep in plans.items():
        for r in rep["budgets"]:
            b = r["budget"]
            if b in cos_sep:
                deltas.append([("WSD plan" if mode == "wsd" else "WSD-S"), b,
                               f"{r['final_val_loss'] - cos_sep[b]['final_val_loss']:+.4f}"])
    parts = ["## (b) Branching: one run, three budgets", "",
             f"Same model, data order, seed 0 and peak LR {lr:g} as (a). WSD: 1-sqrt decay over 20% of each budget; "
             f"the plan's main run trains the stable phase up to the largest budget's decay start and each budget's "
             f"model is a decay branched off it (`pretrain plan`). WSD-S (`pretrain plan --mode wsds`) continues the "
             f"main branch from each decayed model at peak LR.", "",
             "**Final validation loss per budget, and tokens spent to obtain all three models:**", "",
             markdown_table(["approach"] + [f"{b} steps" for b in budgets] + ["tokens spent"], rows), "",
             markdown_table(["plan", "budget", "Δ val loss vs separate cosine"], deltas), ""]
    if "wsd" in plans and wsd_sep:
        parts += [f"Check: each WSD-plan branch repeats (a)'s separate WSD run of its budget: "
                  f"{_bitwise_check(layout, plans['wsd'], wsd_sep)}.", ""]
    parts += [_claims(plans, cos_sep, budgets), "", f"![branching]({layout.rel(png)})"]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budgets, results under work/ (a smoke run)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process (default 1)")
    ap.add_argument("--report-only", action="store_true", help="train nothing; rewrite tables and plots")
    args = ap.parse_args(argv)
    setup_threads(args.threads)
    layout = Layout(NAME, args.quick)
    t0 = time.time()
    lr = exp_a.best_lr(Layout(exp_a.NAME, args.quick))
    plans = {}
    for mode in MODES:
        if args.report_only:
            path = layout.runs / f"plan-{mode}" / "branches.json"
            if path.is_file():
                plans[mode] = json.loads(path.read_text())
        else:
            plans[mode] = run_plan(layout, mode, lr)
    write_section(layout.results_md, NAME, report(layout, plans, lr))
    print(f"wrote {layout.results_md} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ExperimentError as e:
        raise SystemExit(f"branching: {e}")
