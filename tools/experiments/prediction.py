"""Experiment (d): predict final losses of (a)'s runs from one fitted run -> docs/RESULTS.md section "prediction".

Fits the LR-annealing law (Tissue et al. 2024, ``pretrain.predict``) on the train-loss curve of one
run of (a), then predicts every other run of (a) from its LR schedule alone: other schedules at
the same budget, and the same or other schedules at other budgets. Compared quantity: the train
loss averaged over the last ``FINAL_WINDOW`` steps (the law models train loss; the same steps
of the prediction are averaged). Trains nothing.

    python tools/experiments/prediction.py [--quick]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import schedules as exp_a
from common import ExperimentError, Layout, markdown_table, publish_section, run_driver, write_json

NAME = "prediction"
FINAL_WINDOW = 10
LAM = 0.999  # the paper's annealing-momentum decay
LAM_SENSITIVITY = (0.99, 0.95)  # shorter memories, for runs of a few hundred steps (reported, not tuned)


def fit_sources(layout: Layout) -> list[tuple[str, int]]:
    """Fitted runs: WSD and cosine at the largest budget, and WSD at the smallest (to extrapolate 4x)."""
    b = layout.budgets
    return [("wsd", b[-1]), ("cosine", b[-1]), ("wsd", b[0])]


def targets(layout: Layout, lr: float) -> list[tuple[str, int]]:
    return [(s, b) for s, b, _, _ in exp_a.grid_runs(layout, lr) if s not in exp_a.SANITY_ONLY]


def _lrs_of(run_dir: Path) -> np.ndarray:
    from pretrain.config import load_config
    from pretrain.schedule_plot import lr_curve

    return lr_curve(load_config(run_dir / "config.yaml")).lrs


def predictions(layout: Layout, lr: float, lam: float = LAM) -> dict:
    """{source: {"params": ..., "rows": [{target, budget, actual, predicted, rel_error}]}} for every fit source.

    Only finished runs (with a summary.json) are used: a running one has a partial metrics.jsonl.
    """
    from pretrain.predict import fit, load_metrics, predict

    a = Layout(exp_a.NAME, layout.quick)
    run = lambda s, b: a.runs / exp_a.run_name(s, b, lr, 0)  # noqa: E731
    out = {}
    for src in fit_sources(layout):
        metrics = run(*src) / "metrics.jsonl"
        if not (run(*src) / "summary.json").is_file():
            print(f"[skip] fit source {src}: {metrics} not found (run schedules.py first)", flush=True)
            continue
        steps, losses, lrs = load_metrics(metrics)
        params = fit(steps, losses, lrs, lam=lam)
        rows = []
        for tgt in targets(layout, lr):
            t_metrics = run(*tgt) / "metrics.jsonl"
            if not (run(*tgt) / "summary.json").is_file():
                continue
            t_steps, t_losses, _ = load_metrics(t_metrics)
            pred = predict(params, _lrs_of(run(*tgt)))
            tail = slice(-FINAL_WINDOW, None)
            actual = float(np.mean(t_losses[tail]))
            predicted = float(np.mean(pred[t_steps[tail] - 1]))
            rows.append({"target": tgt[0], "budget": tgt[1], "actual": actual, "predicted": predicted,
                         "rel_error": (predicted - actual) / actual, "in_sample": tgt == src})
        out[f"{src[0]}-b{src[1]}"] = {"source": list(src), "params": params.to_dict(), "rows": rows}
    if not out:
        raise ExperimentError(f"no run of experiment (a) found under {a.runs}")
    return out


def _rank_agreement(rows: list[dict]) -> float:
    """Spearman correlation between predicted and actual final losses of one budget's schedules."""
    from scipy.stats import spearmanr

    if len(rows) < 3:
        return float("nan")
    return float(spearmanr([r["predicted"] for r in rows], [r["actual"] for r in rows]).statistic)


def plot_errors(results: dict, budgets: tuple[int, ...], path: Path) -> Path:
    """Relative error of every prediction by target budget (symlog: in-budget errors are ~1%, extrapolation ~10x more)."""
    from matplotlib.figure import Figure

    from pretrain.schedule_plot import save_figure

    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    n = len(results)
    for i, (name, res) in enumerate(results.items()):
        for r in res["rows"]:
            x = budgets.index(r["budget"]) + (i - (n - 1) / 2) * 0.2
            ax.plot(x, 100 * r["rel_error"], "o", color=f"C{i}", mfc="none" if r["in_sample"] else f"C{i}", ms=5)
        ax.plot([], [], "o", color=f"C{i}", label=f"fit on {name}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xticks(range(len(budgets)), [f"{b} steps" for b in budgets])
    ax.set_xlabel("target budget (one point per schedule)")
    ax.set_ylabel("(predicted − actual) / actual, %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("(d) final-loss prediction error (hollow = the fitted run itself)")
    return save_figure(fig, path)


def plot_examples(layout: Layout, lr: float, path_fmt: str) -> list[Path]:
    """Fitted and predicted curves for two cases: across schedules, and across budgets."""
    from pretrain.predict import plot_prediction, predict_run

    a = Layout(exp_a.NAME, layout.quick)
    b = layout.budgets
    cases = [(("wsd", b[-1]), ("cosine", b[-1])), (("wsd", b[0]), ("cosine", b[-1]))]
    paths = []
    for src, tgt in cases:
        src_dir, tgt_dir = (a.runs / exp_a.run_name(s, n, lr, 0) for s, n in (src, tgt))
        if not ((src_dir / "metrics.jsonl").is_file() and (tgt_dir / "metrics.jsonl").is_file()):
            continue
        pred = predict_run(src_dir / "metrics.jsonl", _lrs_of(tgt_dir), actual=tgt_dir / "metrics.jsonl",
                           final_window=FINAL_WINDOW)
        path = layout.results / path_fmt.format(f"{src[0]}{src[1]}-to-{tgt[0]}{tgt[1]}")
        paths.append(plot_prediction(path, fit_steps=pred.fit_steps, fit_losses=pred.fit_losses, fitted=pred.fitted,
                                     predicted=pred.predicted, actual_steps=pred.actual_steps,
                                     actual_losses=pred.actual_losses,
                                     labels=(f"{src[0]} {src[1]} steps", f"{tgt[0]} {tgt[1]} steps")))
    return paths


def report(layout: Layout, lr: float) -> str:
    results = predictions(layout, lr)
    sensitivity = {f"{lam:g}": predictions(layout, lr, lam) for lam in LAM_SENSITIVITY}
    write_json(layout.results / "summary.json", {"peak_lr": lr, "final_window": FINAL_WINDOW, "lam": LAM,
                                                 "fits": results, "lam_sensitivity": sensitivity})
    scatter = plot_errors(results, layout.budgets, layout.results / "prediction-errors.png")
    examples = plot_examples(layout, lr, "example-{}.png")
    names = list(results)
    keyed = {name: {(r["target"], r["budget"]): r for r in res["rows"]} for name, res in results.items()}
    keys = sorted({k for d in keyed.values() for k in d}, key=lambda k: (k[1], k[0]))
    rows = []
    for k in keys:
        actual = next(d[k]["actual"] for d in keyed.values() if k in d)
        row = [k[0], k[1], actual]
        for name in names:
            r = keyed[name].get(k)
            row += [f"{r['predicted']:.4f}", f"{100 * r['rel_error']:+.2f}%{' (fit)' if r['in_sample'] else ''}"] \
                if r else ["—", "—"]
        rows.append(row)
    headers = ["target", "budget", "actual"] + [h for n in names for h in (f"pred. ({n})", "error")]
    agg = _aggregate(results, layout.budgets, LAM)
    for lam in LAM_SENSITIVITY:
        agg += _aggregate(sensitivity[f"{lam:g}"], layout.budgets, lam)
    spread = {b: [r["actual"] for r in next(iter(results.values()))["rows"] if r["budget"] == b] for b in layout.budgets}
    spread_txt = ", ".join(f"{b} steps: {100 * (max(v) - min(v)) / min(v):.2f}%" for b, v in spread.items() if v)
    parts = ["## (d) Loss prediction from one run", "",
             "The LR-annealing law L(s) = L0 + A·S1^(−α) − C·S2 (`pretrain.predict`, same as "
             "`pretrain predict --metrics FIT/metrics.jsonl --schedule TARGET/config.yaml --actual TARGET/metrics.jsonl`) "
             f"is fitted on the per-step train loss of one run of (a) and predicts each other run from its LR schedule. "
             f"Compared: train loss averaged over the last {FINAL_WINDOW} steps. Main table: λ = {LAM} (the paper's).", "",
             markdown_table(headers, rows), "",
             "Summary per fitted run and λ (mean |relative error| on the other schedules at the fitted budget, and on "
             "runs at the other budgets; Spearman rank correlation of predicted vs actual across schedules "
             f"at each budget {'/'.join(str(b) for b in layout.budgets)}). The rows with λ ≠ {LAM} are a sensitivity "
             "check chosen after seeing the main result, not a tuned method: the in-sample fit cannot tell the λ values "
             "apart here (per-step batch noise dominates its residuals).", "",
             markdown_table(["fitted on", "λ", "same budget", "other budgets", "max", "rank corr.", "fitted law"], agg), "",
             f"For scale: the spread of actual final train losses across schedules is {spread_txt} (max−min over min).",
             "", f"![prediction errors]({layout.rel(scatter)})", ""]
    parts += [f"![example]({layout.rel(p)})\n" for p in examples]
    return "\n".join(parts)


def _aggregate(results: dict, budgets: tuple[int, ...], lam: float) -> list[list]:
    agg = []
    for name, res in results.items():
        src_budget = res["source"][1]
        out = [r for r in res["rows"] if not r["in_sample"]]
        same = [abs(r["rel_error"]) for r in out if r["budget"] == src_budget]
        other = [abs(r["rel_error"]) for r in out if r["budget"] != src_budget]
        ranks = [_rank_agreement([r for r in res["rows"] if r["budget"] == b]) for b in budgets]
        p = res["params"]
        agg.append([name, f"{lam:g}", f"{100 * np.mean(same):.2f}%" if same else "—", f"{100 * np.mean(other):.2f}%" if other else "—",
                    f"{100 * max(abs(r['rel_error']) for r in out):.2f}%" if out else "—",
                    " / ".join(f"{x:+.2f}" for x in ranks),
                    f"L0={p['L0']:.3f} A={p['A']:.3f} α={p['alpha']:.3f} C={p['C']:.4f}"])
    return agg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="use the --quick runs of schedules.py; results under work/")
    args = ap.parse_args(argv)
    layout = Layout(NAME, args.quick)
    t0 = time.time()
    lr = exp_a.best_lr(Layout(exp_a.NAME, args.quick))
    publish_section(layout.results_md, NAME, report(layout, lr), t0)
    return 0


if __name__ == "__main__":
    run_driver(main, "prediction")
