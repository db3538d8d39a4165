"""``RUN/plan.png`` of a ``pretrain plan``: every run's loss curve, validation points, budgets, predictions.

Reads only the plan's run directories (``main/``, ``budget-*/`` metrics) and its report, so it can be
redrawn at any time; matplotlib's object API with the Agg canvas (no display, no pyplot state).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def smooth(values: np.ndarray, window: int = 15) -> np.ndarray:
    """Centred moving average (edges over the points that exist): per-step train loss on a small batch is
    noisy, and unlike an EMA this neither lags nor depends on the curve's first value, so a branch's curve
    joins its parent's."""
    values = np.asarray(values, dtype=np.float64)
    kernel = np.ones(min(window, len(values)))
    return np.convolve(values, kernel, mode="same") / np.convolve(np.ones(len(values)), kernel, mode="same")


def _curves(metrics: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train steps, train losses, eval steps, val losses) of a metrics.jsonl; torn lines are skipped."""
    train, evals = [], []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("type") == "train" and isinstance(r.get("loss"), (int, float)):
                train.append((r["step"], r["loss"]))
            elif r.get("type") == "eval" and isinstance(r.get("val_loss"), (int, float)):
                evals.append((r["step"], r["val_loss"]))
    t = np.array(sorted(dict(train).items()), dtype=np.float64).reshape(-1, 2)
    e = np.array(sorted(dict(evals).items()), dtype=np.float64).reshape(-1, 2)
    return t[:, 0], t[:, 1], e[:, 0], e[:, 1]


def plot_plan(root: str | Path, report: dict, path: str | Path, predicted_curves: dict | None = None) -> Path:
    """Main run and branches (train loss, smoothed; validation points), each budget's end (dotted) and decay
    start (dashed) marked, and where ``report`` rows carry them, predicted final train losses (stars) beside
    the actual ones (circles); ``predicted_curves`` {budget: (steps, losses)} draws the predictions too."""
    from matplotlib.figure import Figure

    from pretrain.schedule_plot import save_figure

    root = Path(root)
    fig = Figure(figsize=(10, 5.5))
    ax = fig.add_subplot()
    finals: list[float] = []
    runs = ([("main (stable phase)", root / "main", "0.35")] if report["mode"] == "wsd" else []) + \
        [(f"budget {r['budget']:,}", Path(r["run_dir"]), f"C{i}") for i, r in enumerate(report["budgets"])]
    for label, run_dir, color in runs:
        steps, losses, e_steps, e_losses = _curves(run_dir / "metrics.jsonl")
        if len(steps):
            ax.plot(steps, losses, color=color, lw=0.5, alpha=0.25)
            ax.plot(steps, smooth(losses), color=color, lw=1.4, label=f"{label}: train loss")
            finals.append(float(smooth(losses)[-1]))
        if len(e_steps):
            ax.plot(e_steps, e_losses, "o", color=color, ms=4, mfc="white", label=f"{label}: validation")
    for i, r in enumerate(report["budgets"]):
        color = f"C{i}"
        ax.axvline(r["steps"], color=color, ls=":", lw=1)
        ax.axvline(r["branch_step"], color=color, ls="--", lw=0.8, alpha=0.6)
        ax.annotate(f"{r['budget']:,}", (r["steps"], 1.0), xycoords=("data", "axes fraction"), ha="right", va="top",
                    fontsize=8, color=color, rotation=90)
        if predicted_curves and r["budget"] in predicted_curves:
            p_steps, p_losses = predicted_curves[r["budget"]]
            ax.plot(p_steps, p_losses, color=color, lw=1.2, ls=(0, (4, 2)), alpha=0.9)
            finals += [float(np.min(p_losses)), float(np.max(p_losses))]
        if r.get("predicted_final_loss") is not None:
            finals.append(r["predicted_final_loss"])
            ax.plot(r["steps"], r["predicted_final_loss"], "*", color=color, ms=12, mec="k", mew=0.5,
                    label=f"budget {r['budget']:,}: predicted final ({r.get('prediction_law', '')})")
        if r.get("actual_final_train_loss") is not None:
            ax.plot(r["steps"], r["actual_final_train_loss"], "o", color=color, ms=6, mec="k", mew=0.5)
            finals.append(r["actual_final_train_loss"])
    if finals:
        lo, hi = min(finals), max(finals)
        ax.set_ylim(lo - 0.15 * max(hi - lo, 0.5), hi + 1.5 * max(hi - lo, 0.5))
    ax.set_xlabel("optimizer step (dashed: a budget's decay starts; dotted: it ends)")
    ax.set_ylabel("loss")
    ax.set_title(f"pretrain plan ({report['mode']}): loss curves per budget"
                 + ("; stars = predicted final train loss, circles = actual" if predicted_curves is not None or
                    any(r.get("predicted_final_loss") is not None for r in report["budgets"]) else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)
