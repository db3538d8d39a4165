"""Loss prediction with the LR-annealing law and the multi-power law: areas, recovery of known parameters,
refusals (too short, annealing not identifiable), metrics reading, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pretrain import predict as P
from pretrain import schedules
from pretrain.cli import main

PEAK = 3e-4
TRUE = P.LawParams(L0=2.0, A=1.5, alpha=0.4, C=0.0013, lam=0.999, lr_ref=PEAK)
TOTAL = 1500


def _lrs(name: str, **params) -> np.ndarray:
    return PEAK * schedules.multipliers(name, TOTAL, **params)


WSD = dict(name="wsd", warmup_steps=50, decay_steps=300, decay_shape="1-sqrt")
COSINE = dict(name="cosine", warmup_steps=50, min_lr_ratio=0.1)


def _noisy(lrs: np.ndarray, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return P.predict(TRUE, lrs) * np.exp(rng.normal(0.0, noise, len(lrs)))


def test_areas_follow_the_definition():
    lrs = _lrs(**WSD)
    s1, s2 = P.areas(lrs, lam=0.99, lr_ref=PEAK)
    eta = lrs / PEAK
    eta[:49] = 1.0  # warm-up (steps before the peak) counted at the peak LR
    m, prev, s2_loop = 0.0, eta[0], []
    for e in eta:
        m = 0.99 * m + (prev - e)
        prev = e
        s2_loop.append((s2_loop[-1] if s2_loop else 0.0) + m)
    np.testing.assert_allclose(s1, np.cumsum(eta), rtol=1e-12)
    np.testing.assert_allclose(s2, s2_loop, rtol=1e-9, atol=1e-12)
    assert np.all(s2[: TOTAL - 300] == 0.0) and s2[-1] > 0
    assert P.warmup_length(lrs) == 49


def test_fit_recovers_exact_law():
    lrs = _lrs(**WSD)
    steps = np.arange(1, TOTAL + 1)
    fp = P.fit(steps, P.predict(TRUE, lrs), lrs)
    for key in ("L0", "A", "alpha", "C"):
        assert getattr(fp, key) == pytest.approx(getattr(TRUE, key), rel=1e-4), key
    assert fp.rmse_log < 1e-6


@pytest.mark.parametrize("src,dst", [(WSD, COSINE), (COSINE, WSD)])
def test_fit_on_noisy_run_predicts_other_schedule(src, dst):
    lrs, other = _lrs(**src), _lrs(**dst)
    steps = np.arange(1, TOTAL + 1)
    fp = P.fit(steps, _noisy(lrs, 0.003), lrs)
    assert fp.L0 == pytest.approx(TRUE.L0, rel=0.03)
    assert fp.A == pytest.approx(TRUE.A, rel=0.15)
    assert fp.alpha == pytest.approx(TRUE.alpha, rel=0.1)
    assert fp.C == pytest.approx(TRUE.C, rel=0.05)
    truth = P.predict(TRUE, other)[-1]
    assert abs(P.predict(fp, other)[-1] - truth) / truth < 0.01


def test_fit_ignores_loss_spikes():
    lrs, other = _lrs(**WSD), _lrs(**COSINE)
    losses = _noisy(lrs, 0.003, seed=1)
    spikes = np.random.default_rng(2).choice(np.arange(100, TOTAL), 30, replace=False)
    losses[spikes] *= 1.5
    fp = P.fit(np.arange(1, TOTAL + 1), losses, lrs)
    truth = P.predict(TRUE, other)[-1]
    assert abs(P.predict(fp, other)[-1] - truth) / truth < 0.01


def test_fit_rejects_bad_input():
    lrs = _lrs(**WSD)
    with pytest.raises(ValueError, match="steps must lie in"):
        P.fit(np.arange(1, 11), np.ones(10), lrs[:5])
    with pytest.raises(P.FitError, match=r"too short to fit: 0 usable loss points .* 4 parameters .* \(8\)"):
        P.fit(np.arange(1, 11), np.ones(10), lrs)  # all within warm-up
    with pytest.raises(P.FitError, match=r"too short to fit: 10 usable .* mpl law has 7 parameters"):
        P.fit(np.arange(51, 61), np.ones(10), lrs, law="mpl")  # 10 points after warm-up: fewer than 2 x 7


def _write_metrics(path, steps, losses, lrs, extra_lines=()):
    lines = [json.dumps({"type": "train", "step": int(s), "tokens": int(s) * 100, "loss": float(l), "lr": float(lr),
                         "lr_mult": float(lr / PEAK), "grad_norm": 1.0, "tokens_per_s": 1.0, "time": 0.0})
             for s, l, lr in zip(steps, losses, lrs)]
    path.write_text("\n".join(list(lines) + list(extra_lines)) + "\n")


def test_load_metrics_counts_and_interpolates(tmp_path):
    path = tmp_path / "metrics.jsonl"
    steps = np.array([2, 4, 6, 8])
    _write_metrics(path, steps, [5.0, 4.0, 3.5, 3.0], [1e-4, 2e-4, 3e-4, 3e-4], extra_lines=[
        '{"type": "eval", "step": 4, "tokens": 400, "val_loss": 3.9}',
        "{not json",
        '{"type": "train", "step": 9, "loss": null, "lr": 1e-4}',
        '{"type": "train", "step": 6, "tokens": 600, "loss": 3.25, "lr": 3e-4}',
    ])
    report = {}
    s, l, lrs = P.load_metrics(path, report=report)
    assert s.tolist() == [2, 4, 6, 8] and l.tolist() == [5.0, 4.0, 3.25, 3.0]
    np.testing.assert_allclose(lrs, [1e-4, 1e-4, 1.5e-4, 2e-4, 2.5e-4, 3e-4, 3e-4, 3e-4])
    assert report == {"bad_json": 1, "bad_fields": 1, "duplicate_steps": 1, "interpolated_lrs": 4}
    with pytest.raises(P.MetricsError, match="metrics file not found"):
        P.load_metrics(tmp_path / "missing.jsonl")
    empty = tmp_path / "eval_only.jsonl"
    empty.write_text('{"type": "eval", "step": 1, "tokens": 1, "val_loss": 1.0}\n')
    with pytest.raises(P.MetricsError, match="eval_only.jsonl: no usable train lines"):
        P.load_metrics(empty)


def test_cli_predict(tmp_path, capsys):
    every = 5
    src, dst = _lrs(**WSD), _lrs(**COSINE)
    steps = np.arange(every, TOTAL + 1, every)
    _write_metrics(tmp_path / "wsd.jsonl", steps, _noisy(src, 0.003)[steps - 1], src[steps - 1])
    _write_metrics(tmp_path / "cos.jsonl", steps, _noisy(dst, 0.003, seed=5)[steps - 1], dst[steps - 1])
    cfg = tmp_path / "cos.yaml"
    cfg.write_text(f"optim: {{lr: {PEAK}}}\nschedule: {{name: cosine, warmup_steps: 50, min_lr_ratio: 0.1}}\n"
                   f"budget: {{steps: {TOTAL}}}\n")
    png = tmp_path / "pred.png"
    rc = main(["predict", "--metrics", str(tmp_path / "wsd.jsonl"), "--schedule", str(cfg),
               "--actual", str(tmp_path / "cos.jsonl"), "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "interpolated_lrs" in out and f"{TOTAL} steps" in out
    err = float(out.split("error: ")[1].split("%")[0])
    assert abs(err) < 1.0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["predict", "--metrics", str(tmp_path / "nope.jsonl"), "--schedule", str(cfg)]) == 2
    assert "metrics file not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- multi-power law

MPL_TRUE = P.MPLParams(L0=2.0, A=1.0, alpha=0.5, B=0.4, C=2.0, beta=0.6, gamma=0.6, lr_ref=PEAK)
SHORT = 600
SHORT_WSD = dict(name="wsd", warmup_steps=30, decay_steps=100, decay_shape="1-sqrt")
SHORT_COSINE = dict(name="cosine", warmup_steps=30, min_lr_ratio=0.1)


def _short(name: str, **params) -> np.ndarray:
    return PEAK * schedules.multipliers(name, SHORT, **params)


def _mpl_by_definition(p: P.MPLParams, lrs: np.ndarray) -> np.ndarray:
    """The multi-power law written out term by term from its definition (Luo et al. 2025; PAPERS.md):
    L(t) = L0 + A (S1(t) + S_W)^-alpha - B sum_{k=1..t} (eta_{k-1} - eta_k) G(eta_k^-gamma S_k(t)),
    k counted after warm-up (eta_0 = the peak), S_k(t) = sum_{tau=k..t} eta_tau, G(x) = 1 - (C x + 1)^-beta."""
    eta = lrs / p.lr_ref
    w = int(np.argmax(eta))  # warm-up updates before the peak; post-warm-up update k is eta[w + k]
    out = []
    for t in range(1, len(eta) + 1):
        area = sum(eta[:t])  # S1 + S_W: every update's LR, warm-up included
        drop = 0.0
        for k in range(1, t - w):
            prev, cur = eta[w + k - 1], eta[w + k]
            s_k = sum(eta[w + k:t])
            drop += (prev - cur) * (1 - (p.C * cur ** -p.gamma * s_k + 1) ** -p.beta)
        out.append(p.L0 + p.A * area ** -p.alpha - p.B * drop)
    return np.array(out)


def test_mpl_matches_its_definition():
    lrs = PEAK * schedules.multipliers("cosine", 120, warmup_steps=10, min_lr_ratio=0.1)
    np.testing.assert_allclose(P.predict(MPL_TRUE, lrs), _mpl_by_definition(MPL_TRUE, lrs), rtol=1e-10)
    flat = PEAK * schedules.multipliers("constant", 120, warmup_steps=10)
    np.testing.assert_allclose(P.predict(MPL_TRUE, flat), MPL_TRUE.L0 + MPL_TRUE.A * np.cumsum(flat / PEAK) ** -0.5)


def test_mpl_fit_recovers_exact_law_and_predicts_another_schedule():
    lrs, other = _short(**SHORT_WSD), _short(**SHORT_COSINE)
    fp = P.fit(np.arange(1, SHORT + 1), P.predict(MPL_TRUE, lrs), lrs, law="mpl")
    assert fp.rmse_log < 1e-6
    truth = P.predict(MPL_TRUE, other)
    np.testing.assert_allclose(P.predict(fp, other), truth, rtol=1e-4)
    assert fp.to_dict()["law"] == "mpl" and "gamma=" in fp.describe()


@pytest.mark.parametrize("law", ["tissue", "mpl"])
def test_a_run_that_never_decays_cannot_identify_annealing(law):
    """A WSD main run's stable phase: refused with the reason and what data would help, and the power-law part
    alone (annealing=False) is still available as an explicit no-decay extrapolation."""
    lrs = _short(**SHORT_WSD)
    stable = np.arange(1, SHORT - 100 + 1)
    losses = P.predict(MPL_TRUE, lrs)[stable - 1]
    with pytest.raises(P.FitError, match=r"never decays after warm-up .* cannot be identified .* decayed branch"):
        P.fit(stable, losses, lrs, law=law)
    flat = P.fit(stable, losses, lrs, law=law, annealing=False)
    assert not flat.annealing
    constant = PEAK * schedules.multipliers("constant", SHORT, warmup_steps=30)
    pred = P.predict(flat, constant)
    assert np.all(np.diff(pred[100:]) <= 0)  # a power law in the LR area: no drop, no rise


def test_two_runs_main_plus_branch_identify_the_law():
    """pretrain plan --predict's case: the stable main run plus one decayed branch predict a longer budget."""
    main_lrs = _short(**SHORT_WSD)
    truth = P.predict(TRUE, main_lrs)
    stable = P.Run(np.arange(1, SHORT - 100 + 1), truth[: SHORT - 100], main_lrs, name="main")
    short = PEAK * schedules.multipliers("wsd", 300, warmup_steps=30, decay_steps=50, decay_shape="1-sqrt")
    branch = P.Run(np.arange(251, 301), P.predict(TRUE, short)[250:], short, name="budget-300")
    fp = P.fit_runs([stable, branch])
    assert abs(P.predict(fp, main_lrs)[-1] / truth[-1] - 1) < 1e-4


def test_cli_predict_law_mpl_and_refusals(tmp_path, capsys):
    lrs = _short(**SHORT_WSD)
    steps = np.arange(1, SHORT + 1)
    _write_metrics(tmp_path / "wsd.jsonl", steps, P.predict(MPL_TRUE, lrs), lrs)
    cfg = tmp_path / "cos.yaml"
    cfg.write_text(f"optim: {{lr: {PEAK}}}\nschedule: {{name: cosine, warmup_steps: 30, min_lr_ratio: 0.1}}\n"
                   f"budget: {{steps: {SHORT}}}\n")
    assert main(["predict", "--law", "mpl", "--metrics", str(tmp_path / "wsd.jsonl"), "--schedule", str(cfg)]) == 0
    out = capsys.readouterr().out
    truth = P.predict(MPL_TRUE, _short(**SHORT_COSINE))[-1]
    assert "mpl: L0=2.0000" in out and f"{truth:.4f}" in out.split("predicted final loss")[1]
    stable = steps[: SHORT - 100]
    _write_metrics(tmp_path / "main.jsonl", stable, P.predict(MPL_TRUE, lrs)[stable - 1], lrs[stable - 1])
    for law in ("tissue", "mpl"):
        assert main(["predict", "--law", law, "--metrics", str(tmp_path / "main.jsonl"), "--schedule", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "never decays after warm-up" in err and "cannot be identified" in err
    _write_metrics(tmp_path / "short.jsonl", steps[:35], np.ones(35), lrs[:35])  # steps 30-35: 6 points from the peak on
    assert main(["predict", "--metrics", str(tmp_path / "short.jsonl"), "--schedule", str(cfg)]) == 2
    assert "too short to fit: 6 usable loss points" in capsys.readouterr().err


def test_a_fit_whose_annealing_term_vanishes_says_so():
    """Runs that decay but whose losses show no gain from it: the fit says its annealing term is ~0 rather
    than let a prediction of a decay pass for one that was learned."""
    from dataclasses import replace

    lrs = _lrs(**WSD)
    steps = np.arange(1, TOTAL + 1)
    fp = P.fit(steps, P.predict(replace(TRUE, C=0.0), lrs), lrs)
    assert "annealing term is ~0" in fp.note and "note:" in fp.describe()
    assert P.fit(steps, P.predict(TRUE, lrs), lrs).note == ""
