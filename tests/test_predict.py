"""Loss prediction with the LR-annealing law: areas, recovery of known parameters, metrics reading, CLI."""
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
    with pytest.raises(ValueError, match="the fit needs at least 8"):
        P.fit(np.arange(1, 11), np.ones(10), lrs)  # all within warm-up


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
