"""LR schedules: paper identities, real peers (torch, transformers), the branching invariant, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import get_linear_schedule_with_warmup, get_wsd_schedule

from pretrain import schedules as S
from pretrain.budget import total_steps_of
from pretrain.cli import main
from pretrain.config import ConfigError, from_dict

torch.set_num_threads(1)


def _optimizer(momentum: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, momentum=momentum)


def _stepped(sched: torch.optim.lr_scheduler.LRScheduler, n: int) -> np.ndarray:
    """LR a torch scheduler gives update t (t = 0..n-1): read before the t-th scheduler.step()."""
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return np.array(out)


# --------------------------------------------------------------------------- UBA identities


@pytest.mark.parametrize("f,w", [(0.0, 0), (0.1, 7), (0.37, 3)])
def test_uba_phi2_is_cosine(f, w):
    a = S.multipliers("uba", 257, phi=2.0, min_lr_ratio=f, warmup_steps=w)
    b = S.multipliers("cosine", 257, min_lr_ratio=f, warmup_steps=w)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("phi,row", [(0.5, (.959, .800, .407, .091)), (1.0, (.921, .667, .255, .048)),
                                     (2.0, (.854, .500, .146, .024)), (4.0, (.745, .333, .079, .012))])
def test_uba_table_from_papers(phi, row):
    m = S.multipliers("uba", 100, phi=phi)  # f = 0, no warm-up: mult = g at p = step / 100
    np.testing.assert_allclose(m[[25, 50, 75, 90]], row, atol=1e-3)


def test_uba_phi1_is_rational_cosine():
    T = 200
    x = (1 + np.cos(np.pi * np.arange(T) / T)) / 2
    np.testing.assert_allclose(S.multipliers("uba", T, phi=1.0), 2 * x / (1 + x), rtol=0, atol=1e-12)


def test_uba_phi_orders_decay():
    """phi -> 0 tends to a constant; larger phi decays earlier (pointwise lower)."""
    near_const = S.multipliers("uba", 100, phi=1e-6)
    assert near_const[90] > 0.999
    curves = [S.multipliers("uba", 100, phi=phi) for phi in (0.25, 0.5, 1, 2, 4, 8)]
    for hi, lo in zip(curves, curves[1:]):
        assert np.all(hi[1:] > lo[1:])


def test_rex_formula():
    T, f = 80, 0.2
    p = np.arange(T) / T
    g = (1 - p) / (0.5 + 0.5 * (1 - p))
    np.testing.assert_allclose(S.multipliers("rex", T, min_lr_ratio=f), f + (1 - f) * g, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- peers


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("f", [0.0, 0.1])
def test_wsd_matches_transformers(shape, f):
    total, d = 300, 60
    hf = get_wsd_schedule(_optimizer(), num_warmup_steps=0, num_decay_steps=d, num_training_steps=total,
                          decay_type=shape, min_lr_ratio=f).lr_lambdas[0]
    ours = S.multipliers("wsd", total, decay_steps=d, decay_shape=shape, min_lr_ratio=f)
    np.testing.assert_allclose(ours, [hf(s) for s in range(total)], rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_wsd_warmup_vs_transformers(shape):
    """After warm-up we equal HF; during warm-up ours(s) = HF(s + 1) (HF spends update 0 at LR 0)."""
    total, w, d = 300, 25, 50
    hf = get_wsd_schedule(_optimizer(), num_warmup_steps=w, num_decay_steps=d, num_training_steps=total,
                          decay_type=shape).lr_lambdas[0]
    ours = S.multipliers("wsd", total, warmup_steps=w, decay_steps=d, decay_shape=shape)
    np.testing.assert_allclose(ours[w:], [hf(s) for s in range(w, total)], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours[:w], [hf(s + 1) for s in range(w)], rtol=0, atol=1e-12)
    assert hf(0) == 0.0 and ours[0] == 1 / w


@pytest.mark.parametrize("f", [0.0, 0.1])
def test_cosine_matches_torch(f):
    total = 250
    torch_lrs = _stepped(torch.optim.lr_scheduler.CosineAnnealingLR(_optimizer(), T_max=total, eta_min=f), total)
    np.testing.assert_allclose(S.multipliers("cosine", total, min_lr_ratio=f), torch_lrs, rtol=1e-10, atol=1e-12)


def test_linear_matches_transformers():
    total, w = 200, 20
    hf0 = get_linear_schedule_with_warmup(_optimizer(), 0, total).lr_lambdas[0]
    np.testing.assert_allclose(S.multipliers("linear", total), [hf0(s) for s in range(total)], rtol=0, atol=1e-12)
    hfw = get_linear_schedule_with_warmup(_optimizer(), w, total).lr_lambdas[0]
    ours = S.multipliers("linear", total, warmup_steps=w)
    np.testing.assert_allclose(ours[w:], [hfw(s) for s in range(w, total)], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours[:w], [hfw(s + 1) for s in range(w)], rtol=0, atol=1e-12)


def test_linear_matches_torch_linearlr():
    total = 150
    torch_lrs = _stepped(torch.optim.lr_scheduler.LinearLR(_optimizer(), 1.0, 0.0, total_iters=total), total)
    np.testing.assert_allclose(S.multipliers("linear", total), torch_lrs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("total,pct,div,fdiv", [(100, 0.3, 25.0, 1e4), (337, 0.25, 10.0, 100.0), (50, 0.5, 5.0, 2.0)])
def test_onecycle_matches_torch(total, pct, div, fdiv):
    sched = torch.optim.lr_scheduler.OneCycleLR(_optimizer(0.9), max_lr=1.0, total_steps=total, pct_start=pct,
                                                div_factor=div, final_div_factor=fdiv)
    ours = S.multipliers("onecycle", total, pct_start=pct, div_factor=div, final_div_factor=fdiv)
    np.testing.assert_allclose(ours, _stepped(sched, total), rtol=1e-12, atol=1e-15)


def test_step_and_exponential_match_torch():
    total = 120
    ms = torch.optim.lr_scheduler.MultiStepLR(_optimizer(), milestones=[30, 80], gamma=0.3)
    np.testing.assert_allclose(S.multipliers("step", total, milestones=[30, 80], gamma=0.3), _stepped(ms, total),
                               rtol=1e-12)
    np.testing.assert_allclose(S.multipliers("step", total, milestones=[0.25, 2 / 3], gamma=0.3), _stepped(
        torch.optim.lr_scheduler.MultiStepLR(_optimizer(), milestones=[30, 80], gamma=0.3), total), rtol=1e-12)
    ex = torch.optim.lr_scheduler.ExponentialLR(_optimizer(), gamma=0.97)
    np.testing.assert_allclose(S.multipliers("exponential", total, gamma=0.97), _stepped(ex, total), rtol=1e-10)


def test_exponential_to_floor_and_wsd_inv_exp_shapes():
    f, T = 0.01, 100
    m = S.multipliers("exponential", T, min_lr_ratio=f)
    assert m[0] == 1.0 and math.isclose(m[50], math.sqrt(f), rel_tol=1e-12)
    d = 40
    inv = S.multipliers("wsd", T, decay_steps=d, decay_shape="inv", min_lr_ratio=f)
    exp = S.multipliers("wsd", T, decay_steps=d, decay_shape="exp", min_lr_ratio=f)
    q = np.arange(d) / d
    np.testing.assert_allclose(inv[T - d:], 1 / (1 + q * (1 / f - 1)), rtol=1e-12)
    np.testing.assert_allclose(exp[T - d:], f ** q, rtol=1e-12)
    assert np.all(np.diff(inv[T - d:]) < 0) and np.all(np.diff(exp[T - d:]) < 0)


# --------------------------------------------------------------------------- warm-up and branching invariants


@pytest.mark.parametrize("name,extra", [(n, e) for n, e in [
    ("constant", {}), ("linear", {}), ("cosine", {}), ("rex", {}), ("uba", {"phi": 0.7}),
    ("wsd", {"decay_fraction": 0.2}), ("step", {"milestones": [50]}), ("exponential", {"gamma": 0.99})]])
def test_warmup_composed_once(name, extra):
    w = 10
    m = S.multipliers(name, 100, warmup_steps=w, min_lr_ratio=0.05, **extra)
    np.testing.assert_array_equal(m[:w], (np.arange(w) + 1) / w)
    assert m[w - 1] == 1.0 and m[w] == 1.0


def test_wsd_stable_phase_is_exactly_one_for_any_budget():
    """A main run with a longer budget has bit-identical LRs up to a shorter run's decay start."""
    w, d = 17, 33
    runs = {b: S.multipliers("wsd", b, warmup_steps=w, decay_steps=d, decay_shape="cosine", min_lr_ratio=0.1)
            for b in (200, 457, 1000)}
    for b, m in runs.items():
        start = S.wsd_decay_start(b, warmup_steps=w, decay_steps=d, decay_shape="cosine", min_lr_ratio=0.1)
        assert start == b - d
        assert S.stable_phase("wsd", b, warmup_steps=w, decay_steps=d) == (w, start)
        assert np.all(m[w - 1:start] == 1.0)
        for longer in (runs[x] for x in runs if x > b):
            np.testing.assert_array_equal(longer[:start], m[:start])
        assert m[start] == 1.0 and np.all(np.diff(m[start:]) < 0)


def test_stable_phase_other_schedules():
    assert S.stable_phase("cosine", 100, warmup_steps=5) is None
    assert S.stable_phase("uba", 100, phi=1.0) is None
    assert S.stable_phase("constant", 100, warmup_steps=5) == (5, 100)
    assert S.stable_phase("step", 100, milestones=[0.5], warmup_steps=5) == (5, 50)
    assert S.stable_phase("wsd", 100, warmup_steps=5, decay_steps=95) is None
    assert S.wsd_decay_start(1000, decay_fraction=0.1) == 900


def test_registry_and_multipliers_agree():
    assert set(S.SCHEDULES) == {"constant", "linear", "cosine", "step", "exponential", "rex", "onecycle", "wsd", "uba"}
    kw = {"warmup_steps": 4, "min_lr_ratio": 0.1, "phi": 3.0}
    m = S.multipliers("uba", 40, **kw)
    assert [S.lr_multiplier("uba", s, 40, **kw) for s in range(40)] == m.tolist()
    assert [S.SCHEDULES["uba"](s, 40, **kw) for s in range(40)] == m.tolist()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name,params,total,needle", [
    ("cosin", {}, None, "valid schedules: constant, cosine"),
    ("uba", {}, None, "missing parameter 'phi'"),
    ("uba", {"phi": 0}, None, "phi must be > 0"),
    ("uba", {"phi": 1, "ph": 2}, None, "unknown parameter 'ph' (valid parameters for uba: min_lr_ratio, phi, warmup_steps)"),
    ("wsd", {}, None, "exactly one of decay_steps or decay_fraction"),
    ("wsd", {"decay_steps": 10, "decay_fraction": 0.1}, None, "exactly one of decay_steps or decay_fraction"),
    ("wsd", {"decay_steps": 95, "warmup_steps": 10}, 100, "must be in [1, total_steps - warmup_steps = 90]"),
    ("wsd", {"decay_steps": 5, "decay_shape": "inv"}, None, "needs min_lr_ratio > 0"),
    ("wsd", {"decay_steps": 5, "decay_shape": "square"}, None, "decay_shape must be one of"),
    ("onecycle", {"min_lr_ratio": 0.1}, None, "warmup_steps and min_lr_ratio must be 0"),
    ("step", {"milestones": [50, 20]}, None, "strictly increasing"),
    ("step", {"milestones": [150]}, 100, "before total_steps 100"),
    ("exponential", {}, None, "give min_lr_ratio > 0 or gamma"),
    ("cosine", {"warmup_steps": 100}, 100, "warmup_steps 100 must be < total_steps 100"),
    ("cosine", {"min_lr_ratio": 1.5}, None, "min_lr_ratio must be a number in [0, 1]"),
])
def test_validate_errors(name, params, total, needle):
    with pytest.raises(ValueError) as e:
        S.validate(name, total_steps=total, **params)
    assert needle in str(e.value)


def test_step_outside_run_is_an_error():
    with pytest.raises(ValueError, match=r"outside the run \[0, 10\)"):
        S.lr_multiplier("cosine", 10, 10)


def test_config_validation_uses_schedules():
    base = {"budget": {"steps": 100}}
    from_dict({**base, "schedule": {"name": "uba", "phi": 1.5}})
    with pytest.raises(ConfigError, match="schedule: .*phi must be > 0"):
        from_dict({**base, "schedule": {"name": "uba", "phi": -1}})


# --------------------------------------------------------------------------- budget and CLI


def test_total_steps_of():
    cfg = from_dict({"budget": {"tokens": 10_000, "global_batch_size": 4}, "data": {"seq_len": 256}})
    assert total_steps_of(cfg) == 9  # floor(10000 / 1024)
    assert total_steps_of(from_dict({"budget": {"steps": 77}})) == 77
    with pytest.raises(ConfigError, match="less than one optimizer step"):
        from_dict({"budget": {"tokens": 1000, "global_batch_size": 4}, "data": {"seq_len": 256}})
    cfg.budget.tokens = 1023
    with pytest.raises(ConfigError, match="1023 tokens is less than one optimizer step"):
        total_steps_of(cfg)


def test_cli_schedule(tmp_path, capsys):
    a = tmp_path / "a.yaml"
    a.write_text("optim: {lr: 0.001}\nschedule: {name: wsd, warmup_steps: 10, decay_fraction: 0.2}\n"
                 "budget: {tokens: 204800, global_batch_size: 4}\ndata: {seq_len: 256}\n")
    b = tmp_path / "b.yaml"
    b.write_text("optim: {lr: 0.002}\nschedule: {name: uba, phi: 1.0}\nbudget: {steps: 300}\n")
    png = tmp_path / "out" / "lr.png"
    assert main(["schedule", str(a), "--compare", str(b), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "schedule wsd, 200 steps" in out and "schedule uba, 300 steps" in out
    rows = [line.split()[:3] for line in out.splitlines()]
    assert ["100%", "199", "0.0126"] in rows  # wsd's last update: 1 - sqrt(39/40) of the peak
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["schedule", str(b), "--steps", "50"]) == 0
    assert "schedule uba, 50 steps" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: {name: uba}\nbudget: {steps: 10}\n")
    assert main(["schedule", str(bad)]) == 2
    assert "missing parameter 'phi'" in capsys.readouterr().err
