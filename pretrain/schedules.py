"""Learning-rate schedules as pure functions of (step, total_steps, params).

A schedule returns the *multiplier* of the peak LR for optimizer step ``step`` (0-based: step 0
is the first update) of a run of ``total_steps`` updates. Schedules know nothing about
optimisers; the trainer multiplies the peak LR by this value before each update.

Conventions shared by every schedule (composed once by :func:`_compose`, never per shape):

* ``warmup_steps`` W: linear warm-up from 0, ``mult = (step + 1) / W`` for ``step < W``. The
  ``+1`` means the first update already moves (HF's ``step / W`` spends update 0 at LR 0);
  step W-1 is exactly 1.0. Warm-up ignores the floor and the budget.
* After warm-up the shape runs over the horizon ``T = total_steps - W`` with post-warm-up index
  ``t = step - W`` and progress ``p = t / T`` in ``[0, (T-1)/T]`` (torch/HF convention: the last
  update is one step short of the floor).
* ``min_lr_ratio`` f: each shape g goes from 1 to 0 and ``mult = f + (1 - f) * g``; when g is
  exactly 1 the multiplier is the literal ``1.0`` so a stable phase never drifts
  (branching compares LRs bit for bit).

Schedule-specific parameters: ``step`` milestones (absolute steps, or fractions of
total_steps), gamma=0.1; ``exponential`` gamma (per step) or none (f^p, needs f > 0);
``onecycle`` pct_start=0.3, div_factor=25, final_div_factor=1e4 (own warm-up and floor, so W = f = 0);
``wsd`` exactly one of decay_steps / decay_fraction (of total_steps), decay_shape=1-sqrt
(Hägele et al.'s best) in linear|cosine|1-sqrt|inv|exp; ``uba`` phi > 0 (required).
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Callable

import numpy as np

_REQUIRED = object()

_COMMON: dict[str, Any] = {"warmup_steps": 0, "min_lr_ratio": 0.0}
_SPECIFIC: dict[str, dict[str, Any]] = {
    "constant": {},
    "linear": {},
    "cosine": {},
    "step": {"milestones": _REQUIRED, "gamma": 0.1},
    "exponential": {"gamma": None},
    "rex": {},
    "onecycle": {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4},
    "wsd": {"decay_steps": None, "decay_fraction": None, "decay_shape": "1-sqrt"},
    "uba": {"phi": _REQUIRED},
}
WSD_SHAPES = ("linear", "cosine", "1-sqrt", "inv", "exp")


class ScheduleError(ValueError):
    """A schedule name or parameter the user must fix; the message lists the valid choices."""


# --------------------------------------------------------------------------- shapes
# Each shape is shape(t, T, f, params) -> multiplier after warm-up (t in [0, T)).


def _floor(f: float, g: float) -> float:
    return 1.0 if g == 1.0 else f + (1.0 - f) * g


def _constant(t: int, T: int, f: float, p: dict) -> float:
    """Constant peak LR after warm-up."""
    return 1.0


def _linear(t: int, T: int, f: float, p: dict) -> float:
    """Linear decay g = 1 - p (worst-case optimal last iterate, Defazio et al. arXiv 2310.07831)."""
    return _floor(f, 1.0 - t / T)


def _cosine(t: int, T: int, f: float, p: dict) -> float:
    """Cosine annealing g = (1 + cos(pi p)) / 2 (Loshchilov & Hutter, SGDR, arXiv 1608.03983)."""
    return _floor(f, 0.5 * (1.0 + math.cos(math.pi * t / T)))


def _step(t: int, T: int, f: float, p: dict) -> float:
    """Step decay g = gamma^k, k = milestones passed (torch MultiStepLR; milestones in absolute steps)."""
    k = bisect.bisect_right(_milestone_steps(p, T + p["warmup_steps"]), t + p["warmup_steps"])
    return _floor(f, p["gamma"] ** k)


def _exponential(t: int, T: int, f: float, p: dict) -> float:
    """Exponential decay: g = gamma^t (torch ExponentialLR), or without gamma mult = f^p (reaches f at the end)."""
    if p["gamma"] is None:
        return f ** (t / T)
    return _floor(f, p["gamma"] ** t)


def _rex(t: int, T: int, f: float, p: dict) -> float:
    """REX g = (1 - p) / (1/2 + (1 - p)/2) (Chen et al. 2021, arXiv 2107.04197)."""
    q = 1.0 - t / T
    return _floor(f, q / (0.5 + 0.5 * q))


def _onecycle(t: int, T: int, f: float, p: dict) -> float:
    """torch OneCycleLR (Smith & Topin, arXiv 1708.07120), cos anneal, relative to max_lr.

    Rises from 1/div_factor to 1 until step pct_start*T - 1, then falls to
    1/(div_factor*final_div_factor) at step T - 1, with torch's exact step arithmetic.
    """
    start = 1.0 / p["div_factor"]
    end = start / p["final_div_factor"]
    e1 = float(p["pct_start"] * T) - 1
    if t <= e1:
        hi, lo, pct = 1.0, start, t / e1
    else:
        hi, lo, pct = end, 1.0, (t - e1) / (T - 1 - e1)
    return hi + (lo - hi) / 2.0 * (math.cos(math.pi * pct) + 1)


def _decay_shape(shape: str, q: float, f: float) -> float:
    """WSD decay shapes over decay progress q (PAPERS.md: MiniCPM, Hägele et al., Wen et al.)."""
    if shape == "linear":
        return _floor(f, 1.0 - q)
    if shape == "cosine":
        return _floor(f, 0.5 * (1.0 + math.cos(math.pi * q)))
    if shape == "1-sqrt":
        return _floor(f, 1.0 - math.sqrt(q))
    if shape == "inv":
        return 1.0 / (1.0 + q * (1.0 / f - 1.0))
    return f**q  # exp


def _wsd(t: int, T: int, f: float, p: dict) -> float:
    """Warmup-stable-decay (MiniCPM arXiv 2404.06395; Hägele et al. arXiv 2405.18392).

    Exactly 1.0 until the last D steps, then ``decay_shape`` over q = (t - (T - D)) / D.
    """
    d = _decay_steps(p, T + p["warmup_steps"])
    start = T - d
    if t < start:
        return 1.0
    return _decay_shape(p["decay_shape"], (t - start) / d, f)


def _uba(t: int, T: int, f: float, p: dict) -> float:
    """UBA (Tang et al., arXiv 2505.24452): g = 2c / (2 phi + (2 - phi) c), c = 1 + cos(pi p).

    phi = 2 is cosine; phi = 1 is 2x/(1+x), x = c/2; phi -> 0 tends to constant with a final drop.
    """
    c = 1.0 + math.cos(math.pi * t / T)
    phi = p["phi"]
    return _floor(f, 2.0 * c / (2.0 * phi + (2.0 - phi) * c))


_SHAPES: dict[str, Callable[[int, int, float, dict], float]] = {
    "constant": _constant,
    "linear": _linear,
    "cosine": _cosine,
    "step": _step,
    "exponential": _exponential,
    "rex": _rex,
    "onecycle": _onecycle,
    "wsd": _wsd,
    "uba": _uba,
}


# --------------------------------------------------------------------------- parameters


def _milestone_steps(p: dict, total_steps: int) -> list[int]:
    """Milestones as absolute steps: ints are steps, floats are fractions of ``total_steps``."""
    ms = p["milestones"]
    if all(isinstance(m, float) for m in ms):
        return [round(m * total_steps) for m in ms]
    return list(ms)


def _decay_steps(p: dict, total_steps: int) -> int:
    """WSD decay length D: ``decay_steps``, or ``round(decay_fraction * total_steps)`` of the whole budget."""
    if p["decay_steps"] is not None:
        return p["decay_steps"]
    return round(p["decay_fraction"] * total_steps)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _resolve(name: str, params: dict) -> dict:
    """Fill defaults; reject unknown names and unknown or missing parameters."""
    if name not in _SPECIFIC:
        raise ScheduleError(f"unknown schedule {name!r} (valid schedules: {', '.join(sorted(_SPECIFIC))})")
    spec = {**_COMMON, **_SPECIFIC[name]}
    valid = f"(valid parameters for {name}: {', '.join(sorted(spec))})"
    for key in params:
        if key not in spec:
            raise ScheduleError(f"schedule {name!r}: unknown parameter {key!r} {valid}")
    out = {**spec, **params}
    for key, value in out.items():
        if value is _REQUIRED:
            raise ScheduleError(f"schedule {name!r}: missing parameter {key!r} {valid}")
    return out


def _check(name: str, p: dict, total_steps: int | None) -> None:
    spec = {**_COMMON, **_SPECIFIC[name]}
    valid = f"(valid parameters for {name}: {', '.join(sorted(spec))})"

    def bad(msg: str) -> ScheduleError:
        return ScheduleError(f"schedule {name!r}: {msg} {valid}")

    w, f = p["warmup_steps"], p["min_lr_ratio"]
    if not _is_int(w) or w < 0:
        raise bad(f"warmup_steps must be an integer >= 0, got {w!r}")
    if not _is_num(f) or not 0.0 <= f <= 1.0:
        raise bad(f"min_lr_ratio must be a number in [0, 1], got {f!r}")
    if total_steps is not None:
        if not _is_int(total_steps) or total_steps <= 0:
            raise ScheduleError(f"schedule {name!r}: total_steps must be a positive integer, got {total_steps!r}")
        if w >= total_steps:
            raise bad(f"warmup_steps {w} must be < total_steps {total_steps}")
    horizon = None if total_steps is None else total_steps - w

    if name == "step":
        ms, g = p["milestones"], p["gamma"]
        if not isinstance(ms, (list, tuple)) or not ms:
            raise bad(f"milestones must be a non-empty list of steps or fractions, got {ms!r}")
        if not (all(_is_int(m) for m in ms) or all(isinstance(m, float) and 0.0 < m < 1.0 for m in ms)):
            raise bad(f"milestones must be all integer steps or all fractions in (0, 1), got {ms!r}")
        if any(a >= b for a, b in zip(ms, ms[1:])):
            raise bad(f"milestones must be strictly increasing, got {ms!r}")
        if not _is_num(g) or not 0.0 < g <= 1.0:
            raise bad(f"gamma must be in (0, 1], got {g!r}")
        if total_steps is not None:
            steps = _milestone_steps(p, total_steps)
            if steps[0] <= w or steps[-1] >= total_steps:
                raise bad(f"milestones (as steps {steps}) must lie after warm-up ({w}) and before total_steps {total_steps}")
    elif name == "exponential":
        g = p["gamma"]
        if g is None and f <= 0.0:
            raise bad("exponential decay to min_lr_ratio 0 is undefined: give min_lr_ratio > 0 or gamma")
        if g is not None and (not _is_num(g) or not 0.0 < g < 1.0):
            raise bad(f"gamma must be in (0, 1), got {g!r}")
    elif name == "onecycle":
        pct, div, fdiv = p["pct_start"], p["div_factor"], p["final_div_factor"]
        if w != 0 or f != 0.0:
            raise bad("onecycle warms up by itself (pct_start) and sets its own floor "
                      "(div_factor * final_div_factor): warmup_steps and min_lr_ratio must be 0")
        if not _is_num(pct) or not 0.0 < pct < 1.0:
            raise bad(f"pct_start must be in (0, 1), got {pct!r}")
        if not _is_num(div) or div < 1.0 or not _is_num(fdiv) or fdiv < 1.0:
            raise bad(f"div_factor and final_div_factor must be >= 1, got {div!r}, {fdiv!r}")
        if horizon is not None and pct * horizon - 1 <= 0:
            raise bad(f"pct_start * total_steps must exceed 1 (got {pct} * {horizon})")
    elif name == "wsd":
        ds, df, shape = p["decay_steps"], p["decay_fraction"], p["decay_shape"]
        if (ds is None) == (df is None):
            raise bad("give exactly one of decay_steps or decay_fraction")
        if ds is not None and (not _is_int(ds) or ds <= 0):
            raise bad(f"decay_steps must be a positive integer, got {ds!r}")
        if df is not None and (not _is_num(df) or not 0.0 < df <= 1.0):
            raise bad(f"decay_fraction must be in (0, 1], got {df!r}")
        if shape not in WSD_SHAPES:
            raise bad(f"decay_shape must be one of {', '.join(WSD_SHAPES)}, got {shape!r}")
        if shape in ("inv", "exp") and f <= 0.0:
            raise bad(f"decay_shape {shape!r} needs min_lr_ratio > 0")
        if horizon is not None:
            d = _decay_steps(p, total_steps)
            if not 1 <= d <= horizon:
                raise bad(f"decay length {d} steps must be in [1, total_steps - warmup_steps = {horizon}]")
    elif name == "uba":
        phi = p["phi"]
        if not _is_num(phi) or phi <= 0:
            raise bad(f"phi must be > 0, got {phi!r}")


# --------------------------------------------------------------------------- public API


def validate(name: str, total_steps: int | None = None, **params: Any) -> None:
    """Raise ScheduleError (a ValueError) naming the valid schedules or parameters.

    Budget-dependent checks (decay length, milestones, warm-up vs. budget) run only when
    ``total_steps`` is given, so a config can be checked before its budget is resolved.
    """
    _check(name, _resolve(name, params), total_steps)


def _compose(name: str) -> Callable[..., float]:
    shape = _SHAPES[name]

    def schedule(step: int, total_steps: int, **params: Any) -> float:
        p = _resolve(name, params)
        _check(name, p, total_steps)
        return _evaluate(shape, step, total_steps, p)

    schedule.__name__ = name
    schedule.__qualname__ = name
    schedule.__doc__ = shape.__doc__
    return schedule


def _evaluate(shape: Callable, step: int, total_steps: int, p: dict) -> float:
    if not 0 <= step < total_steps:
        raise ScheduleError(f"step {step} is outside the run [0, {total_steps})")
    w = p["warmup_steps"]
    if step < w:
        return (step + 1) / w
    return float(shape(step - w, total_steps - w, float(p["min_lr_ratio"]), p))


SCHEDULES: dict[str, Callable[..., float]] = {name: _compose(name) for name in _SHAPES}


def lr_multiplier(name: str, step: int, total_steps: int, **params: Any) -> float:
    """Multiplier of the peak LR for 0-based optimizer ``step`` of a ``total_steps`` run."""
    p = _resolve(name, params)
    _check(name, p, total_steps)
    return _evaluate(_SHAPES[name], step, total_steps, p)


def multipliers(name: str, total_steps: int, **params: Any) -> np.ndarray:
    """All multipliers of a run (float64, length ``total_steps``), identical to per-step calls."""
    p = _resolve(name, params)
    _check(name, p, total_steps)
    shape = _SHAPES[name]
    return np.fromiter((_evaluate(shape, s, total_steps, p) for s in range(total_steps)), dtype=np.float64, count=total_steps)


def wsd_decay_start(total_steps: int, **params: Any) -> int:
    """First step of the WSD decay phase (``total_steps - D``): where a branch leaves the main run."""
    p = _resolve("wsd", params)
    _check("wsd", p, total_steps)
    return total_steps - _decay_steps(p, total_steps)


def stable_phase(name: str, total_steps: int, **params: Any) -> tuple[int, int] | None:
    """Half-open step range ``[start, end)`` where the multiplier is exactly 1.0 whatever the budget.

    Those steps are budget-free: a run with a longer ``total_steps`` has the same LRs there, so
    any checkpoint in the range can be branched. ``None`` for schedules without such a phase
    (or when it is empty).
    """
    p = _resolve(name, params)
    _check(name, p, total_steps)
    start = p["warmup_steps"]
    if name == "constant":
        end = total_steps
    elif name == "wsd":
        end = total_steps - _decay_steps(p, total_steps)
    elif name == "step":
        end = _milestone_steps(p, total_steps)[0]
    else:
        return None
    return (start, end) if end > start else None
