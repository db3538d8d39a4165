"""Predict a loss curve under any LR schedule from one finished run (Tissue et al. 2024).

The LR-annealing scaling law (Tissue et al. 2024, "Scaling Law with Learning Rate Annealing",
arXiv 2408.11029) models the loss after step s as

    L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s)
    S1(s) = sum_{i<=s} eta_i                      (forward area: how far the weights travelled)
    m_i   = lam * m_{i-1} + (eta_{i-1} - eta_i)   (annealing momentum, m_1 = 0)
    S2(s) = sum_{i<=s} m_i                        (annealing area: the loss drop from decaying)

Conventions here: ``eta`` is the LR divided by ``lr_ref`` (the peak LR of the fitted run) so A
and C are in peak-normalised units and the law transfers to another peak LR; warm-up steps (all
steps before the LR first reaches its peak) are counted at the peak LR, as the paper does; the
loss logged at step s (``step`` counts updates done, FORMATS.md) is paired with S1 summing the
LRs of updates 1..s. Noisy losses are handled by the robust (Huber) loss on log L rather than
by smoothing, so no smoothing window has to be tuned.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from scipy.signal import lfilter


class MetricsError(ValueError):
    """A metrics file that cannot be used; the message names the file."""


@dataclass
class LawParams:
    """Fitted law; ``lr_ref`` is the LR that eta = 1 stands for, ``rmse_log`` the fit's RMSE on log L."""

    L0: float
    A: float
    alpha: float
    C: float
    lam: float
    lr_ref: float
    rmse_log: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


def warmup_length(lrs: np.ndarray) -> int:
    """Steps before the LR first reaches its maximum (the warm-up the law counts at peak LR)."""
    return int(np.argmax(np.asarray(lrs)))


def areas(lrs: np.ndarray, *, lam: float, lr_ref: float, warmup_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """S1 and S2 after each update (index i = after update i+1) for per-step LRs ``lrs``."""
    eta = np.asarray(lrs, dtype=np.float64) / lr_ref
    w = warmup_length(eta) if warmup_steps is None else warmup_steps
    eta = eta.copy()
    eta[:w] = eta.max()
    drop = np.concatenate([[0.0], eta[:-1] - eta[1:]])
    momentum = lfilter([1.0], [1.0, -lam], drop)
    return np.cumsum(eta), np.cumsum(momentum)


def _law(x: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    l0, a, alpha, c = x
    return l0 + a * s1 ** (-alpha) - c * s2


def predict(params: LawParams, lrs: np.ndarray, *, warmup_steps: int | None = None) -> np.ndarray:
    """Predicted loss after each update of a run with per-step LRs ``lrs`` (same units as the fit)."""
    s1, s2 = areas(lrs, lam=params.lam, lr_ref=params.lr_ref, warmup_steps=warmup_steps)
    return _law(np.array([params.L0, params.A, params.alpha, params.C]), s1, s2)


def fit(
    steps: np.ndarray,
    losses: np.ndarray,
    lrs: np.ndarray,
    *,
    lam: float = 0.999,
    warmup_steps: int | None = None,
    fit_from: int | None = None,
    huber_delta: float = 1e-2,
    lr_ref: float | None = None,
) -> LawParams:
    """Fit (L0, A, alpha, C) to one run by robust least squares on log L from several starts.

    ``steps`` are update counts (1-based) at which ``losses`` were observed; ``lrs`` is the LR
    of every update (``lrs[i]`` used by update i+1), at least ``max(steps)`` long. Points before
    ``fit_from`` (default: the end of warm-up) are left out: the law does not model warm-up.
    """
    steps = np.asarray(steps, dtype=np.int64)
    losses = np.asarray(losses, dtype=np.float64)
    lrs = np.asarray(lrs, dtype=np.float64)
    if steps.shape != losses.shape or steps.ndim != 1:
        raise ValueError(f"steps and losses must be 1-D of one length, got {steps.shape} and {losses.shape}")
    if len(steps) and (steps.min() < 1 or steps.max() > len(lrs)):
        raise ValueError(f"steps must lie in [1, len(lrs) = {len(lrs)}], got [{steps.min()}, {steps.max()}]")
    if not 0.0 < lam < 1.0:
        raise ValueError(f"lam must be in (0, 1), got {lam}")
    ref = float(lrs.max()) if lr_ref is None else lr_ref
    if not ref > 0:
        raise ValueError("the LRs are all zero: nothing to fit")
    w = warmup_length(lrs) if warmup_steps is None else warmup_steps
    start = w + 1 if fit_from is None else fit_from
    keep = (steps >= start) & np.isfinite(losses) & (losses > 0)
    if keep.sum() < 8:
        raise ValueError(f"only {int(keep.sum())} usable loss points at or after step {start}; the fit needs at least 8")
    s1_all, s2_all = areas(lrs, lam=lam, lr_ref=ref, warmup_steps=w)
    idx = steps[keep] - 1
    s1, s2, y = s1_all[idx], s2_all[idx], np.log(losses[keep])

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(_law(x, s1, s2), 1e-12)) - y

    l_first, l_min = float(losses[keep][0]), float(losses[keep].min())
    best = None
    for l0_frac in (0.3, 0.7, 0.95):
        for alpha in (0.1, 0.3, 0.6, 1.0):
            l0 = l0_frac * l_min
            a = max(l_first - l0, 1e-3) * s1[0] ** alpha
            x0 = np.array([l0, a, alpha, 0.0])
            res = least_squares(residuals, x0, bounds=([0.0, 0.0, 1e-3, 0.0], [np.inf, np.inf, 5.0, np.inf]),
                                loss="huber", f_scale=huber_delta, x_scale="jac", max_nfev=2000)
            if best is None or res.cost < best.cost:
                best = res
    rmse = float(np.sqrt(np.mean(residuals(best.x) ** 2)))
    l0, a, alpha, c = (float(v) for v in best.x)
    return LawParams(L0=l0, A=a, alpha=alpha, C=c, lam=lam, lr_ref=ref, rmse_log=rmse)


def load_metrics(path: str | Path, *, report: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read train lines of ``metrics.jsonl``: (steps, losses, lrs).

    ``steps``/``losses`` are the logged points; ``lrs`` has the LR of every update 1..max(step),
    linearly interpolated between logged steps when ``log_every > 1``. Unusable lines (bad JSON,
    missing or non-finite fields) are skipped and counted in ``report``, like repeated steps
    (the last line wins, as after a resume) and interpolated LRs.
    """
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"{path}: metrics file not found")
    counts = {"bad_json": 0, "bad_fields": 0, "duplicate_steps": 0, "interpolated_lrs": 0}
    by_step: dict[int, tuple[float, float]] = {}
    with path.open() as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                counts["bad_json"] += 1
                continue
            if not isinstance(rec, dict) or rec.get("type") != "train":
                continue
            step, loss, lr = rec.get("step"), rec.get("loss"), rec.get("lr")
            if not (isinstance(step, int) and step >= 1 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (loss, lr))):
                counts["bad_fields"] += 1
                continue
            if step in by_step:
                counts["duplicate_steps"] += 1
            by_step[step] = (float(loss), float(lr))
    if not by_step:
        raise MetricsError(f"{path}: no usable train lines (skipped: {counts})")
    steps = np.array(sorted(by_step), dtype=np.int64)
    losses = np.array([by_step[s][0] for s in steps])
    logged_lrs = np.array([by_step[s][1] for s in steps])
    all_steps = np.arange(1, steps[-1] + 1)
    lrs = np.interp(all_steps, steps, logged_lrs)
    counts["interpolated_lrs"] = int(len(all_steps) - len(steps))
    if report is not None:
        report.update(counts)
    return steps, losses, lrs


def plot_prediction(path: str | Path, *, fit_steps: np.ndarray, fit_losses: np.ndarray, fitted: np.ndarray,
                    predicted: np.ndarray, actual_steps: np.ndarray | None = None,
                    actual_losses: np.ndarray | None = None, labels: tuple[str, str] = ("fitted run", "prediction")) -> Path:
    """Observed and fitted loss of the fitted run, the predicted curve, and the actual one if known."""
    from matplotlib.figure import Figure

    from pretrain.schedule_plot import save_figure

    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    ax.plot(fit_steps, fit_losses, ".", ms=2, alpha=0.3, color="C0", label=f"{labels[0]} (observed)")
    ax.plot(np.arange(1, len(fitted) + 1), fitted, color="C0", label=f"{labels[0]} (law fit)")
    ax.plot(np.arange(1, len(predicted) + 1), predicted, color="C1", label=f"{labels[1]} (predicted)")
    if actual_steps is not None:
        ax.plot(actual_steps, actual_losses, ".", ms=2, alpha=0.3, color="C1", label=f"{labels[1]} (actual)")
    everything = np.concatenate([fit_losses, predicted] + ([actual_losses] if actual_losses is not None else []))
    lo, hi = np.percentile(everything, [0.5, 99.0])
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss")
    ax.set_title("loss prediction with the LR-annealing law (Tissue et al. 2024)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


@dataclass
class Prediction:
    """A fit on one run and its prediction for another schedule (``predicted[i]`` = loss after update i+1)."""

    params: LawParams
    fit_steps: np.ndarray
    fit_losses: np.ndarray
    fitted: np.ndarray
    predicted: np.ndarray
    fit_report: dict
    actual_steps: np.ndarray | None = None
    actual_losses: np.ndarray | None = None
    actual_final: float | None = None
    predicted_at_actual: float | None = None

    @property
    def predicted_final(self) -> float:
        return float(self.predicted[-1])

    @property
    def relative_error(self) -> float | None:
        """(predicted - actual) / actual over the compared window, or None without an actual run."""
        if self.actual_final is None:
            return None
        return (self.predicted_at_actual - self.actual_final) / self.actual_final


def predict_run(metrics: str | Path, target_lrs: np.ndarray, *, actual: str | Path | None = None,
                lam: float = 0.999, fit_from: int | None = None, final_window: int = 10) -> Prediction:
    """Fit the law on ``metrics`` and predict the run whose per-step LRs are ``target_lrs``.

    With ``actual`` (that run's metrics), its final loss is the mean of its last
    ``final_window`` logged losses, compared with the prediction averaged over the same steps
    so one noisy line does not decide the error.
    """
    report: dict = {}
    steps, losses, lrs = load_metrics(metrics, report=report)
    params = fit(steps, losses, lrs, lam=lam, fit_from=fit_from)
    out = Prediction(params=params, fit_steps=steps, fit_losses=losses, fitted=predict(params, lrs),
                     predicted=predict(params, target_lrs), fit_report=report)
    if actual is not None:
        a_steps, a_losses, _ = load_metrics(actual)
        inside = a_steps <= len(target_lrs)
        if not inside.any():
            raise MetricsError(f"{actual}: no train line within the predicted run's {len(target_lrs)} steps")
        a_steps, a_losses = a_steps[inside], a_losses[inside]
        tail = slice(-max(1, final_window), None)
        out.actual_steps, out.actual_losses = a_steps, a_losses
        out.actual_final = float(np.mean(a_losses[tail]))
        out.predicted_at_actual = float(np.mean(out.predicted[a_steps[tail] - 1]))
    return out
