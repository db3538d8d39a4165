"""Predict a loss curve under any LR schedule from one or two finished runs: two loss laws.

``tissue`` — the LR-annealing scaling law (Tissue et al. 2024, "Scaling Law with Learning Rate
Annealing", arXiv 2408.11029), 4 parameters:

    L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s)
    S1(s) = sum_{i<=s} eta_i                      (forward area: how far the weights travelled)
    m_i   = lam * m_{i-1} + (eta_{i-1} - eta_i)   (annealing momentum, m_1 = 0)
    S2(s) = sum_{i<=s} m_i                        (annealing area: the loss drop from decaying)

with warm-up steps (all steps before the LR first reaches its peak) counted at the peak LR, as
that paper does.

``mpl`` — the multi-power law (Luo et al. 2025, "A Multi-Power Law for Loss Curve Prediction
Across Learning Rate Schedules", arXiv 2503.12811; reference code thu-yao-01-luo/MultiPowerLaw),
7 parameters:

    L(t)  = L0 + A * (S1(t) + S_W)^(-alpha) - LD(t)
    LD(t) = B * sum_{k=1..t} (eta_{k-1} - eta_k) * G(eta_k^(-gamma) * S_k(t)),  S_k(t) = sum_{tau=k..t} eta_tau
    G(x)  = 1 - (C * x + 1)^(-beta)

where S1 + S_W is the LR area of every update, warm-up included at its real LRs, and the loss
drop sums over the updates after warm-up (eta_0 = the peak). Each LR drop contributes a drop in
loss that saturates (G -> 1) as the LR area after it grows, so, unlike the linear S2 term, the
law captures how long a decay takes to pay off.

Shared conventions: ``eta`` is the LR divided by ``lr_ref`` (the peak LR of the fitted runs), so
amplitudes are in peak-normalised units and the law transfers to another peak LR; the loss logged
at step s (``step`` counts updates done, FORMATS.md) pairs with the areas of updates 1..s; noisy
per-step losses are handled by a robust (Huber) loss on log L instead of smoothing. A fit needs
at least twice as many loss points as the law has parameters, and a run whose LR never decays
after warm-up cannot identify either law's annealing term: both are refused with a message
saying what data would do.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from scipy.signal import lfilter

LAWS = ("tissue", "mpl")
MIN_DECAY = 0.01  # a fitted run must decay its LR by at least this share of the peak to identify annealing
MIN_GAIN = 1e-3  # a fitted annealing term that lowers the fitted runs' final loss by less than this is reported as ~0
_MAX_CELLS = 1_000_000  # points x LR drops the multi-power law evaluates at once (memory bound of a prediction)
# a multi-power fit costs points x LR drops per evaluation: it uses at most this many loss points per run (evenly
# thinned) and groups of consecutive LR drops (predictions use every drop)
MPL_FIT_POINTS = 250
MPL_FIT_DROPS = 128


class MetricsError(ValueError):
    """A metrics file that cannot be used; the message names the file."""


class FitError(ValueError):
    """Runs a law cannot be fitted on (too few points, annealing not identifiable); the message says why."""


class _Fitted:
    """What both fitted laws share: a plain-data view and a one-line description (with the fit's note)."""

    def to_dict(self) -> dict:
        return {"law": self.law, **asdict(self)}

    def describe(self) -> str:
        return (f"{self.law}: {self._terms()} (eta = lr / {self.lr_ref:g})  rmse(log L)={self.rmse_log:.4f}"
                + (f"\n  note: {self.note}" if self.note else ""))


@dataclass
class LawParams(_Fitted):
    """Fitted LR-annealing law (tissue); ``lr_ref`` is the LR that eta = 1 stands for, ``rmse_log`` the fit's
    RMSE on log L. ``annealing=False``: fitted without the annealing term (C fixed at 0)."""

    L0: float
    A: float
    alpha: float
    C: float
    lam: float
    lr_ref: float
    rmse_log: float = float("nan")
    annealing: bool = True
    note: str = ""  # set by the fit when its annealing term came out (near) zero

    law = "tissue"
    n_params = 4

    def _terms(self) -> str:
        return f"L0={self.L0:.4f} A={self.A:.4f} alpha={self.alpha:.4f} C={self.C:.6f} lam={self.lam}"


@dataclass
class MPLParams(_Fitted):
    """Fitted multi-power law; ``annealing=False``: fitted without the loss-drop term (B fixed at 0)."""

    L0: float
    A: float
    alpha: float
    B: float
    C: float
    beta: float
    gamma: float
    lr_ref: float
    rmse_log: float = float("nan")
    annealing: bool = True
    note: str = ""

    law = "mpl"
    n_params = 7

    def _terms(self) -> str:
        return (f"L0={self.L0:.4f} A={self.A:.4f} alpha={self.alpha:.4f} B={self.B:.4f} C={self.C:.4f} "
                f"beta={self.beta:.4f} gamma={self.gamma:.4f}")


Params = LawParams | MPLParams
N_PARAMS = {"tissue": LawParams.n_params, "mpl": MPLParams.n_params}


def warmup_length(lrs: np.ndarray) -> int:
    """Steps before the LR first reaches its maximum (the warm-up the law counts at peak LR)."""
    return int(np.argmax(np.asarray(lrs)))


def areas(lrs: np.ndarray, *, lam: float, lr_ref: float, warmup_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """S1 and S2 of the tissue law after each update (index i = after update i+1) for per-step LRs ``lrs``."""
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


@dataclass
class _MPLRun:
    """What the multi-power law needs of one LR sequence at some steps: the LR area at each step, and for
    every LR drop after warm-up its size, the LR after it and the LR area from it to each step."""

    area: np.ndarray  # (J,) S1 + S_W at the steps
    drop: np.ndarray  # (K,) eta_{k-1} - eta_k, non-zero drops only
    log_eta: np.ndarray  # (K,) ln eta_k
    after: np.ndarray  # (J, K) S_k(t_j) where k <= t_j, else 0 (so that drop's term vanishes)


def _mpl_run(eta: np.ndarray, steps: np.ndarray, warmup: int, max_drops: int | None = None) -> _MPLRun:
    """With ``max_drops``, runs of consecutive LR drops are merged into that many groups, each acting at its
    drop-weighted median step (a quadrature of the sum over k; G varies slowly from one step to the next)."""
    cum = np.concatenate([[0.0], np.cumsum(eta)])  # cum[t] = area of updates 1..t
    j = np.arange(warmup + 1, len(eta))  # 0-based update index of k = j + 1 (1-based); eta_{k-1} = eta[j-1]
    drop = eta[j - 1] - eta[j]
    j, drop = j[drop != 0], drop[drop != 0]
    if max_drops is not None and len(j) > max_drops:
        groups = np.array_split(np.arange(len(j)), max_drops)
        rep = [g[np.searchsorted(np.cumsum(drop[g]), drop[g].sum() / 2)] if drop[g].sum() else g[0] for g in groups]
        j, drop = j[rep], np.array([drop[g].sum() for g in groups])
    after = np.where((j[None, :] + 1) <= steps[:, None], cum[steps][:, None] - cum[j][None, :], 0.0)
    # an LR of exactly 0 (a floor of 0 at the last step) makes eta^-gamma infinite; G is 1 there anyway
    return _MPLRun(cum[steps], drop, np.log(np.maximum(eta[j], 1e-12)), after)


def _mpl_eval(x: np.ndarray, run: _MPLRun, jacobian: bool = False):
    """The law at the run's steps, and with ``jacobian`` also d(law)/d(L0, A, alpha, B, C, beta, gamma)."""
    l0, a, alpha, b, c, beta, gamma = x
    power = run.area ** (-alpha)
    pred = l0 + a * power
    jac = np.zeros((len(pred), 7)) if jacobian else None
    if jacobian:
        jac[:, 0], jac[:, 1], jac[:, 2] = 1.0, power, -a * power * np.log(run.area)
    if run.drop.size:
        cu = run.after * (c * np.exp(-gamma * run.log_eta))[None, :]  # C * eta_k^-gamma * S_k(t)
        log_base = np.log1p(cu)
        rest = np.exp(-beta * log_base)  # (1 + C u)^-beta = 1 - G
        pred = pred - b * (run.drop.sum() - rest @ run.drop)
        if jacobian:
            # d(1-G)/dC = -beta (1-G) u / (1+Cu); d(1-G)/dbeta = -(1-G) ln(1+Cu); du/dgamma = -ln(eta_k) u
            common = beta * rest * cu / (1.0 + cu)
            jac[:, 3] = -(run.drop.sum() - rest @ run.drop)
            jac[:, 4] = -b / c * (common @ run.drop)
            jac[:, 5] = -b * ((rest * log_base) @ run.drop)
            jac[:, 6] = b * (common @ (run.drop * run.log_eta))
    return (pred, jac) if jacobian else pred


def _mpl_curve(x: np.ndarray, eta: np.ndarray, warmup: int, steps: np.ndarray) -> np.ndarray:
    """The multi-power law at ``steps`` (1-based), in chunks that keep points x drops under _MAX_CELLS."""
    n_drops = max(1, int(np.count_nonzero(np.diff(eta[warmup:]))))
    chunk = max(1, _MAX_CELLS // n_drops)
    return np.concatenate([_mpl_eval(x, _mpl_run(eta, steps[i:i + chunk], warmup))
                           for i in range(0, len(steps), chunk)]) if len(steps) else np.zeros(0)


def predict(params: Params, lrs: np.ndarray, *, warmup_steps: int | None = None) -> np.ndarray:
    """Predicted loss after each update of a run with per-step LRs ``lrs`` (same units as the fit)."""
    lrs = np.asarray(lrs, dtype=np.float64)
    if isinstance(params, MPLParams):
        w = warmup_length(lrs) if warmup_steps is None else warmup_steps
        x = np.array([params.L0, params.A, params.alpha, params.B, params.C, params.beta, params.gamma])
        return _mpl_curve(x, lrs / params.lr_ref, w, np.arange(1, len(lrs) + 1))
    s1, s2 = areas(lrs, lam=params.lam, lr_ref=params.lr_ref, warmup_steps=warmup_steps)
    return _law(np.array([params.L0, params.A, params.alpha, params.C]), s1, s2)


@dataclass
class Run:
    """One fitted run: logged ``steps`` (1-based update counts), their ``losses``, and the LR of every
    update (``lrs[i]`` used by update i+1, at least ``max(steps)`` long); ``name`` for messages."""

    steps: np.ndarray
    losses: np.ndarray
    lrs: np.ndarray
    name: str = "run"


def _prepare(runs: list[Run], warmup_steps: int | None, fit_from: int | None):
    """Per run: (eta-free arrays) kept points after warm-up, its warm-up length; and checks of shapes."""
    out = []
    for r in runs:
        steps = np.asarray(r.steps, dtype=np.int64)
        losses = np.asarray(r.losses, dtype=np.float64)
        lrs = np.asarray(r.lrs, dtype=np.float64)
        if steps.shape != losses.shape or steps.ndim != 1:
            raise ValueError(f"{r.name}: steps and losses must be 1-D of one length, got {steps.shape} and {losses.shape}")
        if len(steps) and (steps.min() < 1 or steps.max() > len(lrs)):
            raise ValueError(f"{r.name}: steps must lie in [1, len(lrs) = {len(lrs)}], got [{steps.min()}, {steps.max()}]")
        w = warmup_length(lrs) if warmup_steps is None else warmup_steps
        start = w + 1 if fit_from is None else fit_from
        keep = (steps >= start) & np.isfinite(losses) & (losses > 0)
        out.append((steps[keep], losses[keep], lrs, w, start))
    return out


def check_identifiable(runs: list[Run], law: str) -> None:
    """FitError unless some run's LR, over the steps it logged after warm-up, falls at least MIN_DECAY below its
    peak: otherwise the law's annealing term has nothing to be fitted on (it would come out 0, and every
    decayed schedule would be predicted as if it never decayed)."""
    for r in runs:
        lrs = np.asarray(r.lrs, dtype=np.float64)
        steps = np.asarray(r.steps)
        if not len(steps) or not lrs.size or lrs.max() <= 0:
            continue
        w = warmup_length(lrs)
        seen = lrs[w:int(steps.max())]
        if seen.size and (lrs.max() - seen.min()) / lrs.max() >= MIN_DECAY:
            return
    term = "C·S2 (the annealing area)" if law == "tissue" else "the loss drop LD(t) (B, C, beta, gamma)"
    names = ", ".join(r.name for r in runs)
    raise FitError(f"the LR of {names} never decays after warm-up (it stays within {MIN_DECAY:.0%} of its peak), so "
                   f"the {law} law's annealing term {term} cannot be identified from it: it would be fitted as 0 and "
                   "every decay predicted as no gain. Fit on a run whose LR decays (a finished cosine or WSD run, or a "
                   "decayed branch of this run), or add one as a second fitted run")


def fit_runs(runs: list[Run], *, law: str = "tissue", lam: float = 0.999, warmup_steps: int | None = None,
             fit_from: int | None = None, huber_delta: float = 1e-2, lr_ref: float | None = None,
             annealing: bool = True) -> Params:
    """Fit ``law`` jointly to one or more runs by robust least squares on log L from several starts.

    Points before ``fit_from`` (default: each run's end of warm-up) are left out: neither law models
    warm-up. ``annealing=False`` fits the power-law part alone (the annealing amplitude fixed at 0):
    an explicit constant-LR extrapolation, the only thing a run that never decays can identify.
    """
    if law not in LAWS:
        raise ValueError(f"unknown law {law!r}; choose one of {', '.join(LAWS)}")
    if not runs:
        raise ValueError("no run to fit")
    if not 0.0 < lam < 1.0:
        raise ValueError(f"lam must be in (0, 1), got {lam}")
    prepared = _prepare(runs, warmup_steps, fit_from)
    ref = max(float(np.max(r.lrs)) for r in runs) if lr_ref is None else lr_ref
    if not ref > 0:
        raise ValueError("the LRs are all zero: nothing to fit")
    n_params = N_PARAMS[law] - (0 if annealing else (1 if law == "tissue" else 4))
    n_points = sum(len(p[0]) for p in prepared)
    if n_points < 2 * n_params:
        starts = ", ".join(str(p[4]) for p in prepared)
        raise FitError(f"too short to fit: {n_points} usable loss points at or after step {starts} (after warm-up), "
                       f"but the {law} law has {n_params} parameters and a fit needs at least twice as many points "
                       f"({2 * n_params}); train longer or log more often (logging.log_every)")
    if annealing:
        check_identifiable(runs, law)
    if law == "mpl":  # evenly thin the points of a finely logged run: the fit's cost is points x LR drops
        thinned = []
        for steps, losses, lrs, w, start in prepared:
            if len(steps) > MPL_FIT_POINTS:
                take = np.unique(np.linspace(0, len(steps) - 1, MPL_FIT_POINTS).round().astype(int))
                steps, losses = steps[take], losses[take]
            thinned.append((steps, losses, lrs, w, start))
        prepared = thinned
    y = np.concatenate([np.log(p[1]) for p in prepared])
    l_first = float(np.mean([p[1][0] for p in prepared]))
    l_min = float(min(p[1].min() for p in prepared))
    if law == "tissue":
        feats = []
        for steps, _, lrs, w, _ in prepared:
            s1, s2 = areas(lrs, lam=lam, lr_ref=ref, warmup_steps=w)
            feats.append((s1[steps - 1], s2[steps - 1]))
        s1 = np.concatenate([f[0] for f in feats])
        s2 = np.concatenate([f[1] for f in feats])

        def model(x: np.ndarray) -> np.ndarray:
            return _law(x if annealing else np.append(x, 0.0), s1, s2)

        first_area = s1[0]
    else:
        mruns = [_mpl_run(lrs / ref, steps, w, MPL_FIT_DROPS) for steps, _, lrs, w, _ in prepared]

        def full(x: np.ndarray) -> np.ndarray:
            return x if annealing else np.concatenate([x, [0.0, 1.0, 0.5, 0.5]])

        def model(x: np.ndarray) -> np.ndarray:
            return np.concatenate([_mpl_eval(full(x), r) for r in mruns])

        def jac(x: np.ndarray) -> np.ndarray:  # d log(law) / dx, analytic: finite differences cost 8 evaluations
            parts = [_mpl_eval(full(x), r, jacobian=True) for r in mruns]
            pred = np.maximum(np.concatenate([p[0] for p in parts]), 1e-12)
            return np.concatenate([p[1] for p in parts])[:, :n_params] / pred[:, None]

        first_area = mruns[0].area[0]

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(model(x), 1e-12)) - y

    if law == "tissue":
        lo, hi = [0.0, 0.0, 1e-3, 0.0], [np.inf, np.inf, 5.0, np.inf]
    else:  # L0, A, alpha, B, C, beta, gamma
        lo, hi = [0.0, 0.0, 1e-3, 0.0, 1e-6, 1e-3, 0.0], [np.inf, np.inf, 5.0, np.inf, 1e6, 5.0, 5.0]
    lo, hi = lo[:n_params], hi[:n_params]
    alphas, tails = ((0.1, 0.3, 0.6, 1.0), [[0.0]]) if law == "tissue" else \
        ((0.3, 0.6), [[b, 1.0, 0.5, 0.5] for b in (0.1, 0.5)])  # C, beta, gamma from the reference code's start
    starts = []
    for l0_frac in (0.3, 0.7, 0.95):
        for alpha in alphas:
            l0 = l0_frac * l_min
            a = max(l_first - l0, 1e-3) * first_area ** alpha
            starts += [np.array(([l0, a, alpha] + tail)[:n_params], dtype=np.float64) for tail in tails]

    def solve(x0: np.ndarray, max_nfev: int):
        return least_squares(residuals, x0, jac="2-point" if law == "tissue" else jac, bounds=(lo, hi),
                             loss="huber", f_scale=huber_delta, x_scale="jac", max_nfev=max_nfev)

    # a short run from every start, then the two most promising to convergence
    scouts = sorted((solve(x0, 30) for x0 in starts), key=lambda r: r.cost)[:2]
    best = min((solve(r.x, 1000) for r in scouts), key=lambda r: r.cost)
    rmse = float(np.sqrt(np.mean(residuals(best.x) ** 2)))
    x = [float(v) for v in best.x]
    if law == "tissue":
        x = x + [0.0] * (4 - len(x))
        params = LawParams(L0=x[0], A=x[1], alpha=x[2], C=x[3], lam=lam, lr_ref=ref, rmse_log=rmse, annealing=annealing)
    else:
        x = x if annealing else x + [0.0, 1.0, 0.5, 0.5]
        params = MPLParams(*x, lr_ref=ref, rmse_log=rmse, annealing=annealing)
    if annealing:
        gain = max(annealing_gain(params, r.lrs[:int(np.max(r.steps))]) for r in runs)
        if gain < MIN_GAIN:
            params.note = (f"the fitted annealing term is ~0 (the decays in the fitted runs lower the fitted loss by "
                           f"{gain:.2%} at most): the losses show no decay gain above their noise, so every decay is "
                           "predicted as no gain; fit on runs with longer decays or less noisy losses")
    return params


def annealing_gain(params: Params, lrs: np.ndarray) -> float:
    """The share of the loss the annealing term removes at the end of a run with per-step LRs ``lrs``."""
    from dataclasses import replace

    off = replace(params, C=0.0) if isinstance(params, LawParams) else replace(params, B=0.0)
    full, flat = predict(params, lrs)[-1], predict(off, lrs)[-1]
    return float((flat - full) / flat)


def fit(steps: np.ndarray, losses: np.ndarray, lrs: np.ndarray, *, law: str = "tissue", lam: float = 0.999,
        warmup_steps: int | None = None, fit_from: int | None = None, huber_delta: float = 1e-2,
        lr_ref: float | None = None, annealing: bool = True) -> Params:
    """Fit ``law`` to one run (:func:`fit_runs` with a single :class:`Run`)."""
    return fit_runs([Run(steps, losses, lrs)], law=law, lam=lam, warmup_steps=warmup_steps, fit_from=fit_from,
                    huber_delta=huber_delta, lr_ref=lr_ref, annealing=annealing)


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


def load_run(path: str | Path, *, report: dict | None = None, lrs: np.ndarray | None = None) -> Run:
    """A run to fit, from its ``metrics.jsonl``. Its per-update LRs: ``lrs`` when given, else the LR curve of
    the run's ``config.yaml`` beside the metrics when there (a branch logs from its branch point on, and only
    its config knows the LRs before), else the logged LRs (:func:`load_metrics`)."""
    steps, losses, logged = load_metrics(path, report=report)
    config = Path(path).parent / "config.yaml"
    if lrs is None and config.is_file():
        from pretrain.config import ConfigError, load_config
        from pretrain.schedule_plot import lr_curve

        try:
            lrs = lr_curve(load_config(config)).lrs
        except ConfigError as e:
            raise MetricsError(f"{config}: cannot give the LRs of {path} ({e})") from None
        if len(lrs) < steps.max():
            raise MetricsError(f"{path}: logged up to step {steps.max()}, past the {len(lrs)} steps of {config}")
    elif lrs is None:
        spacing = int(np.median(np.diff(steps))) if len(steps) > 1 else 1
        if steps[0] > spacing:  # not a logging interval: the run started later (a branch)
            raise MetricsError(f"{path}: its first logged step is {steps[0]}, so the LRs before it are unknown "
                               "(a branch?); keep the run's config.yaml beside its metrics.jsonl")
        lrs = logged
    return Run(steps, losses, np.asarray(lrs, dtype=np.float64), name=str(path))


def plot_prediction(path: str | Path, *, fits: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                    predicted: np.ndarray, actual_steps: np.ndarray | None = None,
                    actual_losses: np.ndarray | None = None, label: str = "prediction", law: str = "tissue") -> Path:
    """Observed and fitted loss of every fitted run (name, steps, losses, fitted curve), the predicted curve,
    and the actual one if known."""
    from matplotlib.figure import Figure

    from pretrain.schedule_plot import save_figure

    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in (0, 2, 3, 4, 5)]
    for (name, steps, losses, fitted), color in zip(fits, colors):
        ax.plot(steps, losses, ".", ms=2, alpha=0.3, color=color, label=f"{name} (observed)")
        ax.plot(np.arange(1, len(fitted) + 1), fitted, color=color, label=f"{name} (law fit)")
    ax.plot(np.arange(1, len(predicted) + 1), predicted, color="C1", label=f"{label} (predicted)")
    if actual_steps is not None:
        ax.plot(actual_steps, actual_losses, ".", ms=2, alpha=0.3, color="C1", label=f"{label} (actual)")
    everything = np.concatenate([f[2] for f in fits] + [predicted] + ([actual_losses] if actual_losses is not None else []))
    lo, hi = np.percentile(everything, [0.5, 99.0])
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss")
    ax.set_title("loss prediction: " + ("multi-power law (Luo et al. 2025)" if law == "mpl"
                                        else "LR-annealing law (Tissue et al. 2024)"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


@dataclass
class Prediction:
    """A fit on one or more runs and its prediction for another schedule (``predicted[i]`` = loss after update i+1)."""

    params: Params
    fits: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]  # per fitted run: name, steps, losses, fitted curve
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


def final_loss(steps: np.ndarray, losses: np.ndarray, curve: np.ndarray, final_window: int) -> tuple[float, float]:
    """(actual, predicted) final loss: the mean of the last ``final_window`` logged losses that ``curve`` covers
    and of ``curve`` at the same steps, so one noisy line does not decide the error."""
    inside = steps <= len(curve)
    if not inside.any():
        raise MetricsError(f"no logged step within the predicted run's {len(curve)} steps")
    tail = slice(-max(1, final_window), None)
    return float(np.mean(losses[inside][tail])), float(np.mean(curve[steps[inside][tail] - 1]))


def predict_run(metrics: str | Path | list, target_lrs: np.ndarray, *, law: str = "tissue",
                actual: str | Path | None = None, lam: float = 0.999, fit_from: int | None = None,
                final_window: int = 10) -> Prediction:
    """Fit ``law`` on one or more runs' metrics (:func:`load_run`) and predict the run whose per-step LRs are
    ``target_lrs``; with ``actual`` (that run's metrics) also its final loss (:func:`final_loss`)."""
    paths = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
    report: dict = {}
    runs = []
    for path in paths:
        rep: dict = {}
        runs.append(load_run(path, report=rep))
        for k, v in rep.items():
            report[k] = report.get(k, 0) + v
    params = fit_runs(runs, law=law, lam=lam, fit_from=fit_from)
    out = Prediction(params=params, fits=[(r.name, r.steps, r.losses, predict(params, r.lrs)) for r in runs],
                     predicted=predict(params, target_lrs), fit_report=report)
    if actual is not None:
        a_steps, a_losses, _ = load_metrics(actual)
        inside = a_steps <= len(target_lrs)
        if not inside.any():
            raise MetricsError(f"{actual}: no train line within the predicted run's {len(target_lrs)} steps")
        out.actual_steps, out.actual_losses = a_steps[inside], a_losses[inside]
        out.actual_final, out.predicted_at_actual = final_loss(a_steps, a_losses, out.predicted, final_window)
    return out
