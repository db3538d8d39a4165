"""Experiment (b): finished models for budgets B, 2B, 4B from one run -> docs/RESULTS.md section "branching".

Compares, per budget, the final validation loss and the total tokens spent to get all three models:
- separate cosine runs and separate WSD runs (reused from experiment (a), same LR, seed, data order);
- a WSD plan (``pretrain plan``): one stable main run, a 1-sqrt decay branched off it for every budget;
- a WSD-S plan (``pretrain plan --mode wsds``): the main branch continues from each decayed model.

A plan whose ``branches.json`` exists is not retrained. Needs the peak LR chosen by (a)'s sweep.
``--seeds 0 1`` trains both plans for every seed (model init + data order, as in (a)); seed 0's plans live in
``plan-<mode>``, the others' in ``plan-<mode>-s<seed>``. Seed 0 is always included: the separate runs, plot and
branch check are seed 0's, and the section adds a per-seed table of the plans with the WSD-S minus WSD-plan delta.

    python tools/experiments/branching.py [--quick] [--report-only] [--seeds 0 1]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import schedules as exp_a
from common import (Layout, smooth, final_val_loss, make_config, markdown_table, publish, publish_section, run_driver,
                    schedule_spec, setup_threads, train_curve, write_json)

NAME = "branching"
MODES = ("wsd", "wsds")


def plan_name(mode: str, seed: int = 0) -> str:
    """Run/result folder of a plan: ``plan-<mode>`` for seed 0 (the original runs), ``plan-<mode>-s<seed>`` else."""
    return f"plan-{mode}" if seed == 0 else f"plan-{mode}-s{seed}"


def plan_config(layout: Layout, mode: str, lr: float, seed: int = 0):
    budgets = layout.budgets
    return make_config(layout.runs / plan_name(mode, seed), schedule=schedule_spec("wsd", layout.warmup),
                       steps=budgets[-1], lr=lr, seed=seed, quick=layout.quick,
                       extra={"budget": {"budgets": list(budgets)}, "checkpoint": {"save_final": True}})


def run_plan(layout: Layout, mode: str, lr: float, seed: int = 0) -> dict:
    """Train one plan (or read it back) and publish the metrics of its main run and every branch."""
    from pretrain.branching import run_plan as train_plan

    cfg = plan_config(layout, mode, lr, seed)
    root = Path(cfg.run_dir)
    report_path = root / "branches.json"
    if report_path.is_file():
        print(f"[skip] plan {mode} seed {seed}: {report_path} exists", flush=True)
    else:
        print(f"[train] plan {mode} seed {seed} -> {root}", flush=True)
        train_plan(cfg, mode=mode)
    report = json.loads(report_path.read_text())
    dest = layout.results / plan_name(mode, seed)
    for sub in sorted(p for p in root.iterdir() if (p / "summary.json").is_file()):
        publish(sub, dest / sub.name)
    write_json(dest / "branches.json", report)
    return report


def separate(layout: Layout, sched: str, lr: float, seed: int = 0) -> dict[int, dict]:
    """(a)'s run of ``sched`` at each budget: final val loss and tokens, or nothing if (a) has not run it."""
    a = Layout(exp_a.NAME, layout.quick)
    out = {}
    for b in layout.budgets:
        metrics = a.runs / exp_a.run_name(sched, b, lr, seed) / "metrics.jsonl"
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


def seed_losses(by_seed: dict, budgets: tuple[int, ...]) -> dict:
    """Final val loss of the WSD and WSD-S plans per seed and their difference, over the seeds having both plans.

    ``by_seed`` maps seed -> {mode: branches.json}. Returns {"seeds": [...], "wsd": {budget: {seed: loss}},
    "wsds": {...}, "delta": {budget: {seed: WSD-S minus WSD plan}}}.
    """
    seeds = sorted(s for s, plans in by_seed.items() if all(m in plans for m in MODES))
    out: dict = {"seeds": seeds}
    for mode in MODES:
        out[mode] = {b: {} for b in budgets}
        for s in seeds:
            for r in by_seed[s][mode]["budgets"]:
                if r["budget"] in out[mode]:
                    out[mode][r["budget"]][s] = r["final_val_loss"]
    out["delta"] = {b: {s: out["wsds"][b][s] - out["wsd"][b][s] for s in seeds
                        if s in out["wsd"][b] and s in out["wsds"][b]} for b in budgets}
    return out


def mean_std(values, signed: bool = False) -> str:
    """``mean ± std`` (sample std, ddof=1) of the values; the value alone if there is one, "—" if none."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return "—"
    f = "+.4f" if signed else ".4f"
    if v.size == 1:
        return f"{v[0]:{f}}"
    return f"{v.mean():{f}} ± {v.std(ddof=1):.4f}"


def _seed_parts(layout: Layout, by_seed: dict, lr: float) -> list[str]:
    """Table of the two plans for every seed, their per-seed difference and its mean, and the branch check of the
    seeds (a) also ran (its seed repeats exist at the middle budget only)."""
    budgets = layout.budgets
    sl = seed_losses(by_seed, budgets)
    seeds = sl["seeds"]
    if len(seeds) < 2:
        return []
    names = {"wsd": "WSD plan", "wsds": "WSD-S plan"}
    rows = []
    for mode in MODES:
        for s in seeds:
            rows.append([names[mode], str(s)] + [sl[mode][b].get(s, "—") for b in budgets])
        rows.append([names[mode], "mean ± std"] + [mean_std(sl[mode][b].values()) for b in budgets])
    for s in seeds:
        rows.append(["**Δ WSD-S − WSD plan**", str(s)] +
                    [f"{sl['delta'][b][s]:+.4f}" if s in sl["delta"][b] else "—" for b in budgets])
    rows.append(["**Δ WSD-S − WSD plan**", "mean ± std"] + [mean_std(sl["delta"][b].values(), signed=True)
                                                            for b in budgets])
    seed_list = ", ".join(map(str, seeds))
    parts = [f"**WSD and WSD-S plans over seeds {seed_list}** (seed = model init + data order, as in (a); final "
             f"validation loss; std is the sample std over the {len(seeds)} seeds):", "",
             markdown_table(["plan", "seed"] + [f"{b} steps" for b in budgets], rows), ""]
    checks = []
    for s in seeds[1:]:
        wsd_sep = separate(layout, "wsd", lr, s)
        if wsd_sep:
            checks.append(f"seed {s}: {_bitwise_check(layout, by_seed[s]['wsd'], wsd_sep)}")
    if checks:
        parts += ["Check, other seeds: the WSD-plan branch repeats (a)'s separate WSD run of the same seed where (a) "
                  "has one: " + "; ".join(checks) + ".", ""]
    return parts


def report(layout: Layout, plans: dict, lr: float, by_seed: dict | None = None) -> str:
    """The section; ``plans`` are seed 0's plans by mode, ``by_seed`` (seed -> plans by mode) adds the seed table."""
    budgets = layout.budgets
    cos_sep, wsd_sep = separate(layout, "cosine", lr), separate(layout, "wsd", lr)
    tps = 1024
    seeded = by_seed is not None and len(seed_losses(by_seed, budgets)["seeds"]) > 1
    tag = ", seed 0" if seeded else ""
    approaches = [(f"cosine, separate runs (a){tag}", {b: d["final_val_loss"] for b, d in cos_sep.items()},
                   sum(b * tps for b in budgets) if len(cos_sep) == len(budgets) else None),
                  (f"WSD, separate runs (a){tag}", {b: d["final_val_loss"] for b, d in wsd_sep.items()},
                   sum(b * tps for b in budgets) if len(wsd_sep) == len(budgets) else None)]
    for mode, rep in plans.items():
        approaches.append((("WSD plan: one main run + branches" if mode == "wsd" else "WSD-S plan") + tag,
                          {r["budget"]: r["final_val_loss"] for r in rep["budgets"]}, rep["plan_tokens"]))
    rows = []
    for label, losses, spent in approaches:
        rows.append([label] + [losses.get(b, "—") for b in budgets] + [f"{spent:,}" if spent else "—"])
    summary = {"peak_lr": lr, "budgets": list(budgets),
               "approaches": [{"approach": label, "final_val_loss": {str(b): v for b, v in losses.items()},
                               "tokens_spent": spent} for label, losses, spent in approaches]}
    if seeded:
        sl = seed_losses(by_seed, budgets)
        summary["plans_by_seed"] = {"seeds": sl["seeds"], **{
            key: {str(b): {str(s): v for s, v in sl[key][b].items()} for b in budgets} for key in (*MODES, "delta")}}
        mean_rows = []
        for mode in MODES:
            mean_rows.append([("WSD plan" if mode == "wsd" else "WSD-S plan") +
                              f", mean ± std over seeds {', '.join(map(str, sl['seeds']))}"] +
                             [mean_std(sl[mode][b].values()) for b in budgets] + [f"{plans[mode]['plan_tokens']:,}"])
        rows += mean_rows
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
             f"Same model, data order, seed 0 and peak LR {lr:g} as (a)"
             f"{' (the plans also with more seeds, below)' if seeded else ''}. WSD: 1-sqrt decay over 20% of each budget; "
             f"the plan's main run trains the stable phase up to the largest budget's decay start and each budget's "
             f"model is a decay branched off it (`pretrain plan`). WSD-S (`pretrain plan --mode wsds`) continues the "
             f"main branch from each decayed model at peak LR.", "",
             "**Final validation loss per budget, and tokens spent to obtain all three models:**", "",
             markdown_table(["approach"] + [f"{b} steps" for b in budgets] + ["tokens spent"], rows), "",
             markdown_table(["plan", "budget", "Δ val loss vs separate cosine" + (" (seed 0)" if seeded else "")],
                            deltas), ""]
    if "wsd" in plans and wsd_sep:
        parts += [f"Check: each WSD-plan branch repeats (a)'s separate WSD run of its budget: "
                  f"{_bitwise_check(layout, plans['wsd'], wsd_sep)}.", ""]
    if seeded:
        parts += _seed_parts(layout, by_seed, lr)
    claims = _claims(plans, cos_sep, budgets)
    if seeded:
        claims = claims.replace("- WSD plan vs separate", "- Seed 0, WSD plan vs separate").replace(
            "- WSD-S vs WSD plan:", "- Seed 0, WSD-S vs WSD plan:")
    parts += [claims]
    if seeded:
        sl = seed_losses(by_seed, budgets)
        parts += [f"- WSD-S vs WSD plan over seeds {', '.join(map(str, sl['seeds']))}: mean Δ val loss " +
                  ", ".join(f"{b}: {mean_std(sl['delta'][b].values(), signed=True)}" for b in budgets) +
                  " (per seed: " + "; ".join(f"seed {s} " + ", ".join(f"{sl['delta'][b][s]:+.4f}" for b in budgets
                                                                       if s in sl["delta"][b]) for s in sl["seeds"]) +
                  ")."]
    parts += ["", f"![branching]({layout.rel(png)})" + (" (seed 0)" if seeded else "")]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budgets, results under work/ (a smoke run)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process (default 1)")
    ap.add_argument("--report-only", action="store_true", help="train nothing; rewrite tables and plots")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="seeds (model init + data order) of the WSD and WSD-S plans; 0 is always included (default 0)")
    args = ap.parse_args(argv)
    setup_threads(args.threads)
    layout = Layout(NAME, args.quick)
    t0 = time.time()
    lr = exp_a.best_lr(Layout(exp_a.NAME, args.quick))
    seeds = sorted(set(args.seeds) | {0})  # seed 0 is the reference of the plot, the branch check and the claims
    by_seed: dict[int, dict] = {}
    for seed in seeds:
        by_seed[seed] = {}
        for mode in MODES:
            if args.report_only:
                path = layout.runs / plan_name(mode, seed) / "branches.json"
                if path.is_file():
                    by_seed[seed][mode] = json.loads(path.read_text())
            else:
                by_seed[seed][mode] = run_plan(layout, mode, lr, seed)
    publish_section(layout.results_md, NAME, report(layout, by_seed[0], lr, by_seed=by_seed), t0)
    return 0


if __name__ == "__main__":
    run_driver(main, "branching")
