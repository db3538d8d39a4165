"""Branching: the bit-for-bit WSD invariant, bad requests, and multi-budget plans (WSD and WSD-S)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from pretrain import checkpoint as ckpt_io
from pretrain.branching import branch, branch_config, run_plan
from pretrain.cli import main as pretrain_main
from pretrain.config import ConfigError, from_dict
from pretrain.trainer import train
from tests.conftest import base_config, read_jsonl

WSD = {"name": "wsd", "warmup_steps": 2, "decay_steps": 4, "decay_shape": "1-sqrt", "min_lr_ratio": 0.0}


def _weights(ckpt):
    return load_file(str(ckpt / "model.safetensors"))


def _curve(run):
    return [(r["type"], r["step"], r.get("loss", r.get("val_loss")), r.get("lr")) for r in read_jsonl(run / "metrics.jsonl")]


def test_wsd_run_equals_main_run_branched_bit_for_bit(tmp_path, fixture_tokens):
    # direct: WSD with budget B=10, decay D=4. main: WSD with budget 20 (decay 4), stable through step 16.
    direct = train(from_dict(base_config(fixture_tokens, tmp_path / "direct", budget={"steps": 10},
                                         schedule=WSD, eval={"every": 0, "batches": 2})))
    main_cfg = base_config(fixture_tokens, tmp_path / "main", budget={"steps": 20}, schedule=WSD,
                           checkpoint={"every": 3, "keep_last": 1, "at_steps": [6]}, eval={"every": 0, "batches": 2})
    train(from_dict(main_cfg))
    ckpt = tmp_path / "main" / "checkpoints" / "step-00000006"
    assert ckpt.is_dir()  # pinned: keep_last=1 did not prune it
    b = branch(ckpt, decay_steps=4, out=tmp_path / "branch")
    assert b.step == 10
    wa, wb = _weights(direct.checkpoint), _weights(b.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert b.final_val_loss == direct.final_val_loss
    # the branch logs the same losses and LRs for its steps as the direct run did
    direct_tail = [r for r in _curve(tmp_path / "direct") if r[1] > 6]
    assert _curve(tmp_path / "branch") == direct_tail
    lrs = [r[3] for r in direct_tail if r[0] == "train"]
    assert lrs[0] > lrs[-1] and lrs[-1] < 0.5 * 3e-3
    # and exported its model
    assert (tmp_path / "branch" / "hf" / "config.json").is_file()


@pytest.fixture(scope="module")
def main_run(tmp_path_factory, fixture_tokens):
    tmp = tmp_path_factory.mktemp("main")
    cfg = base_config(fixture_tokens, tmp / "main", budget={"steps": 20}, schedule=WSD,
                      checkpoint={"every": 1, "keep_last": 30}, eval={"every": 0, "batches": 1})
    train(from_dict(cfg))
    return tmp / "main" / "checkpoints"


def test_bad_branch_requests_fail_before_work(tmp_path, main_run):
    with pytest.raises(ConfigError, match="outside the stable phase"):
        branch_config(main_run / "step-00000001", decay_steps=2, out=tmp_path / "a")  # inside warmup
    with pytest.raises(ConfigError, match="outside the stable phase"):
        branch_config(main_run / "step-00000018", decay_steps=2, out=tmp_path / "b")  # inside the main decay
    with pytest.raises(ConfigError, match="past the main run's budget"):
        branch_config(main_run / "step-00000010", decay_steps=12, out=tmp_path / "c")
    with pytest.raises(ConfigError, match="positive"):
        branch_config(main_run / "step-00000010", decay_steps=0, out=tmp_path / "d")
    no_opt = tmp_path / "noopt"
    import shutil

    shutil.copytree(main_run / "step-00000010", no_opt)
    (no_opt / "optimizer.pt").unlink()
    info = json.loads((no_opt / "checkpoint.json").read_text())
    info["files"] = [f for f in info["files"] if f["path"] != "optimizer.pt"]
    (no_opt / "checkpoint.json").write_text(json.dumps(info))
    with pytest.raises(ckpt_io.CheckpointError, match="no optimizer state"):
        branch_config(no_opt, decay_steps=2, out=tmp_path / "e")
    assert pretrain_main(["branch", "--from", str(main_run / "step-00000001"), "--decay-steps", "2",
                          "--out", str(tmp_path / "f")]) == 2
    cfg = branch_config(main_run / "step-00000008", decay_steps=4, out=tmp_path / "g", shape="linear")
    assert cfg.budget.steps == 12 and cfg.schedule.params == {"decay_steps": 4, "decay_shape": "linear"}


def test_plan_budgets_must_increase(tmp_path, fixture_tokens):
    with pytest.raises(ConfigError, match="increasing"):
        from_dict(base_config(fixture_tokens, tmp_path / "p", budget={"steps": 20, "budgets": [20, 10]}, schedule=WSD))


@pytest.mark.parametrize("mode", ["wsd", "wsds"])
def test_three_budget_plan(tmp_path, fixture_tokens, capsys, mode):
    sched = {"name": "wsd", "warmup_steps": 2, "decay_fraction": 0.25, "decay_shape": "1-sqrt", "min_lr_ratio": 0.0}
    cfg = from_dict(base_config(fixture_tokens, tmp_path / "plan", budget={"steps": 24, "budgets": [8, 16, 24]},
                                schedule=sched, eval={"every": 0, "batches": 2}))
    report = run_plan(cfg, mode=mode, predict="tissue")
    _check_predictions(report, capsys.readouterr().out, mode, tmp_path / "plan")
    rows = report["budgets"]
    assert [r["budget"] for r in rows] == [8, 16, 24]
    assert [r["decay_steps"] for r in rows] == [2, 4, 6]
    assert json.loads((tmp_path / "plan" / "branches.json").read_text()) == report
    for r in rows:
        assert (tmp_path / "plan" / r["run_dir"].split("/plan/")[-1] / "hf" / "config.json").exists()
        assert r["final_val_loss"] < 6.0  # learned something (ln 512 = 6.24 at start)
    tps = 8 * 32
    assert report["separate_runs_tokens"] == (8 + 16 + 24) * tps
    if mode == "wsd":
        # the main branch trains only the stable phase, to the last decay start (24 - 6); all budgets branch off it
        assert report["plan_tokens"] == (18 + 2 + 4 + 6) * tps
        main = read_jsonl(tmp_path / "plan" / "main" / "metrics.jsonl")
        assert max(r["step"] for r in main) == 18 and all(r["lr_mult"] == 1.0 for r in main if r["type"] == "train" and r["step"] > 2)
    else:
        assert report["plan_tokens"] == 24 * tps
        # WSD-S: budget 16 continued from the decayed budget-8 model at step 8, at peak LR, no re-warmup
        seg = [r for r in read_jsonl(tmp_path / "plan" / "budget-16" / "metrics.jsonl") if r["type"] == "train"]
        assert seg[0]["step"] == 9 and seg[0]["lr_mult"] == 1.0



def _check_predictions(report, out, mode, root):
    """--predict: no number for a budget nothing decayed yet can identify (WSD: the stable main run; WSD-S: no
    run yet), then real predictions fitted on what was trained, made with the LRs each budget trains under;
    the actual final train loss beside them; plan.png drawn."""
    import numpy as np

    from pretrain.predict import LawParams, predict

    first, second, third = report["budgets"]
    assert first["predicted_final_loss"] is None and "prediction_error" not in first
    if mode == "wsd":
        assert "budget 8: no prediction from main: the LR of main never decays" in out
        assert "held at the peak to step 8 (no decay)" in out and first["no_decay_loss"] > 0
    else:
        assert "budget 8: nothing trained yet" in out
    assert third["prediction_fit"] == ("main + budget-8 + budget-16" if mode == "wsd" else "budget-8 + budget-16")
    actual = np.mean([r["loss"] for r in read_jsonl(root / "budget-24" / "metrics.jsonl") if r["type"] == "train"][-10:])
    assert third["actual_final_train_loss"] == pytest.approx(actual)
    assert third["prediction_error"] == pytest.approx(third["predicted_final_loss"] / actual - 1)
    # the prediction used the LRs that budget actually trained under, as its runs logged them (WSD: main up to the
    # branch point, then the branch; WSD-S: every earlier segment's decay stays in the history)
    parts = ["main", "budget-24"] if mode == "wsd" else ["budget-8", "budget-16", "budget-24"]
    logged = {}
    for part in parts:
        logged.update({r["step"]: r["lr"] for r in read_jsonl(root / part / "metrics.jsonl") if r["type"] == "train"})
    history = np.array([logged[s] for s in range(1, 25)])
    params = {k: v for k, v in third["prediction_params"].items() if k != "law"}
    assert third["predicted_final_loss"] == pytest.approx(np.mean(predict(LawParams(**params), history)[-10:]))
    assert "pred. train" in out and f"{100 * third['prediction_error']:+.2f}%" in out
    assert (root / "plan.png").read_bytes()[:4] == b"\x89PNG" and report["plot"].endswith("plan.png")


def test_plan_cli_predict_flag():
    from pretrain.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["plan", "c.yaml"]).predict is None
    assert parse(["plan", "c.yaml", "--predict"]).predict == "tissue"
    assert parse(["plan", "c.yaml", "--predict", "mpl"]).predict == "mpl"
    with pytest.raises(ConfigError, match="unknown law 'nope'"):
        run_plan(from_dict(base_config("m.json", "r", budget={"steps": 24, "budgets": [8, 24]},
                                       schedule={**WSD, "decay_steps": None, "decay_fraction": 0.25}, model={"vocab_size": 512})),
                 predict="nope")
