"""Experiment (d): predict final losses of (a)'s runs from one or two fitted runs -> docs/RESULTS.md section "prediction".

Two loss laws (``pretrain.predict``): the LR-annealing law (Tissue et al. 2024, ``tissue``) and the
multi-power law (Luo et al. 2025, ``mpl``). Each is fitted on the train-loss curve of one or two
runs and predicts every run of (a) from its LR schedule alone: other schedules at the same budget,
and the same or other schedules at other budgets. Fitted sets: single runs at the largest and the
smallest budget, two runs at the smallest budget, and the case of ``pretrain plan --predict`` —
(b)'s WSD main run (its stable phase only) together with its first decayed branch. Compared
quantity: the train loss averaged over the last ``FINAL_WINDOW`` steps (both laws model train loss;
the same steps of the prediction are averaged). Trains nothing: it reads the raw metrics committed
under docs/results/ (every step logs its LR), so it runs on a clean checkout.

    python tools/experiments/prediction.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import branching as exp_b
import schedules as exp_a
from common import ExperimentError, Layout, markdown_table, publish_section, run_driver, write_json

NAME = "prediction"
FINAL_WINDOW = 10
LAM = 0.999  # the paper's annealing-momentum decay
LAM_SENSITIVITY = (0.99, 0.95)  # shorter memories, for runs of a few hundred steps (reported, not tuned)
LAWS = ("tissue", "mpl")
PLAN = "plan"  # the fitted set made of (b)'s WSD main run and its smallest budget's branch


def fit_sets(layout: Layout) -> list[tuple[str, list]]:
    """(label, fitted runs): single runs at the largest and smallest budget, two small-budget runs, and
    the plan's main run + first branch. A run is (schedule, budget) of (a), or PLAN."""
    b = layout.budgets
    return [(f"cosine-b{b[-1]}", [("cosine", b[-1])]), (f"wsd-b{b[-1]}", [("wsd", b[-1])]),
            (f"wsd-b{b[0]}", [("wsd", b[0])]), (f"wsd-b{b[0]}+cosine-b{b[0]}", [("wsd", b[0]), ("cosine", b[0])]),
            (f"plan main+b{b[0]}", [PLAN])]


def targets(layout: Layout, lr: float) -> list[tuple[str, int]]:
    return [(s, b) for s, b, _, _ in exp_a.grid_runs(layout, lr) if s not in exp_a.SANITY_ONLY]


def peak_lr(layout: Layout) -> float:
    """The LR (a)'s sweep chose, from its published summary."""
    path = Layout(exp_a.NAME, layout.quick).results / "summary.json"
    try:
        return float(json.loads(path.read_text())["peak_lr"])
    except (OSError, ValueError, KeyError) as e:
        raise ExperimentError(f"{path}: no peak_lr of experiment (a) ({e}); run schedules.py first") from None


def _a_metrics(layout: Layout, lr: float, sched: str, budget: int) -> Path:
    return Layout(exp_a.NAME, layout.quick).results / exp_a.run_name(sched, budget, lr, 0) / "metrics.jsonl"


def load_runs(layout: Layout, lr: float, spec: list) -> list:
    """The fitted runs of a set (``pretrain.predict.Run``); a branch's LRs are its main run's up to the branch
    point, then its own logged ones. None if a run's published metrics are missing."""
    from pretrain.predict import load_metrics, load_run

    runs = []
    for item in spec:
        if item == PLAN:
            plan = Layout(exp_b.NAME, layout.quick).results / exp_b.plan_name("wsd")
            main, branch = plan / "main" / "metrics.jsonl", plan / f"budget-{layout.budgets[0]}" / "metrics.jsonl"
            if not (main.is_file() and branch.is_file()):
                return None
            runs.append(load_run(main))
            b_steps, _, b_lrs = load_metrics(branch)
            start = int(b_steps[0]) - 1  # the branch point
            runs.append(load_run(branch, lrs=np.concatenate([runs[0].lrs[:start], b_lrs[start:]])))
        else:
            path = _a_metrics(layout, lr, *item)
            if not path.is_file():
                return None
            runs.append(load_run(path))
    return runs


def predictions(layout: Layout, lr: float, law: str, lam: float = LAM) -> dict:
    """{fit label: {"law", "params", "rows": [{target, budget, actual, predicted, rel_error, in_sample}]}}."""
    from pretrain.predict import FitError, fit_runs, final_loss, load_metrics, predict

    out = {}
    for label, spec in fit_sets(layout):
        runs = load_runs(layout, lr, spec)
        if runs is None:
            print(f"[skip] fit {label}: its published metrics are missing (run experiments (a) and (b) first)", flush=True)
            continue
        try:
            params = fit_runs(runs, law=law, lam=lam)
        except FitError as e:  # the law refuses these runs: say so in the report instead of a number
            out[label] = {"law": law, "refused": str(e), "rows": []}
            continue
        rows = []
        for tgt in targets(layout, lr):
            path = _a_metrics(layout, lr, *tgt)
            if not path.is_file():
                continue
            steps, losses, lrs = load_metrics(path)
            actual, predicted = final_loss(steps, losses, predict(params, lrs), FINAL_WINDOW)
            rows.append({"target": tgt[0], "budget": tgt[1], "actual": actual, "predicted": predicted,
                         "rel_error": (predicted - actual) / actual,
                         "in_sample": tgt in spec or (PLAN in spec and tgt == ("wsd", layout.budgets[0]))})
        fitted_budgets = sorted({s[1] for s in spec if s != PLAN} | ({layout.budgets[0]} if PLAN in spec else set()))
        out[label] = {"law": law, "spec": [s if s == PLAN else list(s) for s in spec], "fitted_budgets": fitted_budgets,
                      "params": params.to_dict(), "rows": rows}
    if not out:
        raise ExperimentError(f"no published run of experiment (a) under {Layout(exp_a.NAME, layout.quick).results}")
    return out


def _rank_agreement(rows: list[dict]) -> float:
    """Spearman correlation between predicted and actual final losses of one budget's schedules."""
    from scipy.stats import spearmanr

    if len(rows) < 3:
        return float("nan")
    return float(spearmanr([r["predicted"] for r in rows], [r["actual"] for r in rows]).statistic)


def plot_errors(results: dict[str, dict], budgets: tuple[int, ...], path: Path) -> Path:
    """Relative error of every prediction by target budget, one panel per law (symlog: in-budget errors are
    ~1%, extrapolation ~10x more)."""
    from matplotlib.figure import Figure

    from pretrain.schedule_plot import save_figure

    fig = Figure(figsize=(13, 4.8))
    axes = fig.subplots(1, len(results), sharey=True, squeeze=False)[0]
    for ax, (law, fits) in zip(axes, results.items()):
        n = len(fits)
        for i, (name, res) in enumerate(fits.items()):
            if "refused" in res:
                continue
            for r in res["rows"]:
                x = budgets.index(r["budget"]) + (i - (n - 1) / 2) * 0.15
                ax.plot(x, 100 * r["rel_error"], "o", color=f"C{i}", mfc="none" if r["in_sample"] else f"C{i}", ms=4)
            ax.plot([], [], "o", color=f"C{i}", label=f"fit on {name}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xticks(range(len(budgets)), [f"{b} steps" for b in budgets])
        ax.set_xlabel("target budget (one point per schedule)")
        ax.grid(alpha=0.3)
        ax.set_title(f"{law}" + (" (Tissue et al. 2024)" if law == "tissue" else " (multi-power law, Luo et al. 2025)"))
    axes[0].set_ylabel("(predicted − actual) / actual, %")
    axes[-1].legend(fontsize=7)
    fig.suptitle("(d) final-loss prediction error (hollow = a fitted run itself)")
    return save_figure(fig, path)


def plot_examples(layout: Layout, lr: float, results: dict[str, dict]) -> list[Path]:
    """Fitted and predicted curves of both laws for two cases: across budgets from one small run, and the plan
    case (main run + first branch -> the largest budget)."""
    from matplotlib.figure import Figure

    from pretrain.predict import MPLParams, LawParams, load_metrics, predict
    from pretrain.schedule_plot import save_figure

    b = layout.budgets
    cases = [(f"wsd-b{b[0]}", ("cosine", b[-1])), (f"plan main+b{b[0]}", ("wsd", b[-1]))]
    paths = []
    for fit_label, tgt in cases:
        spec = dict(fit_sets(layout))[fit_label]
        runs = load_runs(layout, lr, spec)
        target = _a_metrics(layout, lr, *tgt)
        if runs is None or not target.is_file() or any("params" not in results[law].get(fit_label, {}) for law in LAWS):
            continue
        t_steps, t_losses, t_lrs = load_metrics(target)
        fig = Figure(figsize=(8, 4.5))
        ax = fig.add_subplot()
        for r in runs:
            ax.plot(r.steps, r.losses, ".", ms=2, alpha=0.25, color="0.5")
        ax.plot(t_steps, t_losses, ".", ms=2, alpha=0.3, color="C3", label=f"{tgt[0]} {tgt[1]} steps (actual)")
        for i, law in enumerate(LAWS):
            p = dict(results[law][fit_label]["params"])
            p.pop("law")
            params = MPLParams(**p) if law == "mpl" else LawParams(**p)
            for r in runs:
                ax.plot(np.arange(1, len(r.lrs) + 1), predict(params, r.lrs), color=f"C{i}", lw=0.8, alpha=0.6)
            ax.plot(np.arange(1, len(t_lrs) + 1), predict(params, t_lrs), color=f"C{i}", lw=1.6,
                    label=f"{law}: fit (thin) and prediction (thick)")
        lo, hi = np.percentile(t_losses, [1, 99])
        ax.set_ylim(lo - 0.3, hi + 0.3)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("train loss")
        ax.set_title(f"fit on {fit_label} (grey) -> predict {tgt[0]} at {tgt[1]} steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        name = fit_label.replace(" ", "-").replace("+", "-")
        paths.append(save_figure(fig, layout.results / f"example-{name}-to-{tgt[0]}{tgt[1]}.png"))
    return paths


def summary_rows(results: dict, budgets: tuple[int, ...], law: str, lam: float | None) -> list[list]:
    """Per fitted set: mean |error| on the other runs at the fitted budget(s) and at the other budgets, max,
    Spearman rank correlation per budget, and the fitted parameters."""
    out = []
    for name, res in results.items():
        if "refused" in res:
            out.append([name, law, "refused", "—", "—", "—", res["refused"].split(":")[0]])
            continue
        rows = [r for r in res["rows"] if not r["in_sample"]]
        same = [abs(r["rel_error"]) for r in rows if r["budget"] in res["fitted_budgets"]]
        other = [abs(r["rel_error"]) for r in rows if r["budget"] not in res["fitted_budgets"]]
        ranks = [_rank_agreement([r for r in res["rows"] if r["budget"] == b]) for b in budgets]
        p = res["params"]
        law_txt = (f"L0={p['L0']:.3f} A={p['A']:.3f} α={p['alpha']:.3f} C={p['C']:.4f}" if law == "tissue" else
                   f"L0={p['L0']:.3f} A={p['A']:.3f} α={p['alpha']:.3f} B={p['B']:.3f} C={p['C']:.3g} "
                   f"β={p['beta']:.3f} γ={p['gamma']:.3f}")
        law_txt += " (annealing fitted as ~0)" if p.get("note") else ""
        out.append([name, law + (f" λ={lam:g}" if lam is not None else ""),
                    f"{100 * np.mean(same):.2f}%" if same else "—", f"{100 * np.mean(other):.2f}%" if other else "—",
                    f"{100 * max(abs(r['rel_error']) for r in rows):.2f}%" if rows else "—",
                    " / ".join(f"{x:+.2f}" for x in ranks), law_txt])
    return out


def report(layout: Layout, lr: float) -> str:
    results = {law: predictions(layout, lr, law) for law in LAWS}
    sensitivity = {f"{lam:g}": predictions(layout, lr, "tissue", lam) for lam in LAM_SENSITIVITY}
    write_json(layout.results / "summary.json", {"peak_lr": lr, "final_window": FINAL_WINDOW, "lam": LAM,
                                                 "fits": results, "lam_sensitivity": sensitivity})
    scatter = plot_errors(results, layout.budgets, layout.results / "prediction-errors.png")
    examples = plot_examples(layout, lr, results)
    b = layout.budgets
    shown = [f for f in (f"wsd-b{b[-1]}", f"wsd-b{b[0]}", f"wsd-b{b[0]}+cosine-b{b[0]}", f"plan main+b{b[0]}")
             if all(f in results[law] and "refused" not in results[law][f] for law in LAWS)]
    refused = [f"- {law} on {f}: {res['refused']}" for law in LAWS for f, res in results[law].items() if "refused" in res]
    keyed = {(law, f): {(r["target"], r["budget"]): r for r in results[law][f]["rows"]} for law in LAWS for f in shown}
    keys = sorted({k for d in keyed.values() for k in d}, key=lambda k: (k[1], k[0]))
    rows = []
    for k in keys:
        actual = next(d[k]["actual"] for d in keyed.values() if k in d)
        row = [k[0], k[1], f"{actual:.4f}"]
        for f in shown:
            for law in LAWS:
                r = keyed[(law, f)].get(k)
                row.append(f"{100 * r['rel_error']:+.2f}%{' (fit)' if r['in_sample'] else ''}" if r else "—")
        rows.append(row)
    headers = ["target", "budget", "actual"] + [f"{f}: {law}" for f in shown for law in LAWS]
    agg = summary_rows(results["tissue"], b, "tissue", LAM) + summary_rows(results["mpl"], b, "mpl", None)
    for lam in LAM_SENSITIVITY:
        agg += summary_rows(sensitivity[f"{lam:g}"], b, "tissue", lam)
    spread = {bud: sorted({r["actual"] for res in results["tissue"].values() for r in res["rows"] if r["budget"] == bud})
              for bud in b}
    spread_txt = ", ".join(f"{bud} steps: {100 * (max(v) - min(v)) / min(v):.2f}%" for bud, v in spread.items() if v)
    parts = ["## (d) Loss prediction from one or two runs: LR-annealing law vs multi-power law", "",
             "Two laws (`pretrain.predict`; CLI `pretrain predict --law tissue|mpl --metrics FIT.jsonl [FIT2.jsonl] "
             "--schedule TARGET/config.yaml --actual TARGET/metrics.jsonl`): the LR-annealing law "
             "L = L0 + A·S1^(−α) − C·S2 (Tissue et al. 2024, 4 parameters) and the multi-power law "
             "L = L0 + A·(S1+S_W)^(−α) − LD(t) (Luo et al. 2025, 7 parameters). Each is fitted on the per-step train "
             "loss of one or two runs and predicts every run of (a) from its LR schedule alone "
             f"(`python tools/experiments/prediction.py`, reading the metrics committed under `docs/results/`). "
             f"Compared: train loss averaged over the last {FINAL_WINDOW} steps. `plan main+b{b[0]}` is what "
             f"`pretrain plan --predict` has after its first branch: (b)'s WSD main run (stable phase only, "
             f"{b[-1] - round(0.2 * b[-1])} steps) and its {b[0]}-step decayed branch.", "",
             "**Prediction errors** ((predicted − actual) / actual; `(fit)` = a fitted run itself):", "",
             markdown_table(headers, rows), "",
             "**Summary** per fitted set and law: mean |relative error| on the other runs at the fitted budget(s) and "
             "on the runs at the other budgets, the largest, and the Spearman rank correlation of predicted vs actual "
             f"across schedules at each budget {'/'.join(str(x) for x in b)}. The tissue rows with λ ≠ {LAM} are a "
             "sensitivity check chosen after seeing the first results, not a tuned method.", "",
             markdown_table(["fitted on", "law", "same budget", "other budgets", "max", "rank corr.", "fitted law"], agg),
             "", *(["Refused fits (the law says why instead of giving a number):", *refused, ""] if refused else []),
             f"For scale: the spread of actual final train losses across schedules is {spread_txt} (max−min over min).",
             "", f"![prediction errors]({layout.rel(scatter)})", ""]
    parts += [f"![example]({layout.rel(p)})\n" for p in examples]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="use the --quick runs of schedules.py; results under work/")
    args = ap.parse_args(argv)
    layout = Layout(NAME, args.quick)
    t0 = time.time()
    publish_section(layout.results_md, NAME, report(layout, peak_lr(layout)), t0)
    return 0


if __name__ == "__main__":
    run_driver(main, "prediction")
