"""See a run's LR before spending its budget: LR curves of configs, a table of values, a PNG.

Backs ``pretrain schedule``; uses matplotlib's object API with the Agg canvas so it never needs
a display and never touches pyplot's global state.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrain import schedules
from pretrain.budget import tokens_per_step, total_steps_of
from pretrain.config import ConfigError, TrainConfig

TABLE_PERCENTS = (0, 10, 25, 50, 75, 90, 100)


@dataclass
class LRCurve:
    """The LR of every optimizer step of one config (``lrs[i]`` is used by update ``i``)."""

    label: str
    schedule: str
    peak_lr: float
    tokens_per_step: int
    lrs: np.ndarray


def lr_curve(cfg: TrainConfig, label: str = "", total_steps: int | None = None) -> LRCurve:
    """Peak LR x multiplier over the config's budget (or ``total_steps`` when given)."""
    total = total_steps_of(cfg) if total_steps is None else total_steps
    try:
        mult = schedules.multipliers(cfg.schedule.name, total, **cfg.schedule.kwargs())
    except ValueError as e:
        raise ConfigError(f"{label or 'config'}: schedule: {e}") from None
    return LRCurve(label or cfg.schedule.name, cfg.schedule.name, cfg.optim.lr, tokens_per_step(cfg), cfg.optim.lr * mult)


def table_steps(total_steps: int) -> list[int]:
    """Steps at 0, 10, 25, 50, 75, 90 and 100 % of a budget (100 % is the last update)."""
    return [round(pct / 100 * (total_steps - 1)) for pct in TABLE_PERCENTS]


def summary_table(curves: list[LRCurve]) -> str:
    """One block per curve: budget %, step, multiplier and LR."""
    lines = []
    for c in curves:
        lines.append(f"{c.label}: schedule {c.schedule}, {len(c.lrs)} steps, peak lr {c.peak_lr:g}")
        lines.append(f"  {'budget':>6}  {'step':>9}  {'mult':>8}  {'lr':>10}")
        for pct, step in zip(TABLE_PERCENTS, table_steps(len(c.lrs))):
            lr = float(c.lrs[step])
            mult = lr / c.peak_lr if c.peak_lr else 0.0
            lines.append(f"  {pct:>5}%  {step:>9}  {mult:>8.4f}  {lr:>10.3e}")
    return "\n".join(lines)


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib Figure atomically (tmp file, then rename); format from the suffix."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fmt = path.suffix.lstrip(".").lower() or "png"
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_curves(curves: list[LRCurve], path: str | Path, title: str = "learning-rate schedule") -> Path:
    """Draw the curves on one axis: x in steps, or in tokens when the configs' batches differ."""
    from matplotlib.figure import Figure

    by_tokens = len({c.tokens_per_step for c in curves}) > 1
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for c in curves:
        x = np.arange(len(c.lrs)) * (c.tokens_per_step if by_tokens else 1)
        ax.plot(x, c.lrs, label=f"{c.label} ({len(c.lrs)} steps)")
    ax.set_xlabel("tokens" if by_tokens else "optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
