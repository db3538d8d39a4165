"""Experiment drivers (tools/experiments): tables, plots and RESULTS.md sections from fake runs (no training).

Fake runs carry the LRs of their real schedule and train losses generated from the LR-annealing
law itself, so the prediction driver must recover them almost exactly; validation losses get a
per-schedule offset so the winner of each table is known.
"""
import json
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, write_manifest

sys.path.insert(0, str(ROOT / "tools" / "experiments"))

import branching  # noqa: E402
import common  # noqa: E402
import prediction  # noqa: E402
import schedules  # noqa: E402

LAW = {"L0": 3.0, "A": 2.0, "alpha": 0.5, "C": 0.01}
BEST_LR = 4e-3
VAL_OFFSET = {"rex": -0.05, "uba-0.5": -0.04, "linear": -0.03}  # rex wins every budget


@pytest.fixture
def quick(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "WORK", tmp_path / "work")
    monkeypatch.setattr(common, "MANIFEST", write_manifest(tmp_path / "tokens", train_tokens=100_000))
    return common.Layout(schedules.NAME, quick=True)


def fake_run(layout, sched, steps, lr, seed, val_offset=0.0):
    from pretrain.config import save_config
    from pretrain.predict import LawParams, predict
    from pretrain.schedule_plot import lr_curve

    run_dir = layout.runs / schedules.run_name(sched, steps, lr, seed)
    cfg = common.make_config(run_dir, schedule=common.schedule_spec(sched, layout.warmup), steps=steps, lr=lr,
                             seed=seed, quick=True)
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    lrs = lr_curve(cfg).lrs
    losses = predict(LawParams(lam=0.999, lr_ref=BEST_LR, **LAW), lrs) + 0.01 * seed
    lines = [{"type": "train", "step": i + 1, "tokens": (i + 1) * 1024, "loss": float(v), "lr": float(lrs[i])}
             for i, v in enumerate(losses)]
    val = 4.0 + val_offset + abs(np.log(lr / BEST_LR)) + 0.01 * seed + 1e-3 * steps ** -0.5
    lines.append({"type": "eval", "step": steps, "tokens": steps * 1024, "val_loss": val})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run_dir / "summary.json").write_text(json.dumps({"step": steps, "final_val_loss": val}))
    common.publish(run_dir, layout.results / run_dir.name)
    return run_dir


def fake_experiment_a(layout):
    for spec in schedules.sweep_runs(layout) + schedules.grid_runs(layout, BEST_LR):
        if not (layout.runs / schedules.run_name(*spec) / "summary.json").exists():
            fake_run(layout, *spec, val_offset=VAL_OFFSET.get(spec[0], 0.0))
    for spec in schedules.seed_runs(layout, BEST_LR, n_seeds=2):
        fake_run(layout, *spec, val_offset=VAL_OFFSET.get(spec[0], 0.0))


def test_write_section_replaces_only_its_block_and_keeps_order(tmp_path):
    md = tmp_path / "RESULTS.md"
    common.write_section(md, "setup", "S1")
    common.write_section(md, "prediction", "P1")
    common.write_section(md, "schedules", "A1")
    common.write_section(md, "schedules", "A2")
    text = md.read_text()
    assert "A1" not in text and text.index("S1") < text.index("A2") < text.index("P1")
    assert text.count("<!-- BEGIN schedules -->") == 1


def test_schedule_labels():
    assert common.schedule_spec("uba-0.5", 3) == {"name": "uba", "warmup_steps": 3, "min_lr_ratio": 0.0, "phi": 0.5}
    assert common.schedule_spec("wsd", 3)["decay_shape"] == "1-sqrt"
    with pytest.raises(common.ExperimentError, match="unknown schedule label 'sgdr'"):
        common.schedule_spec("sgdr", 3)


def test_schedules_report_tables_plots_and_sanity(quick):
    fake_experiment_a(quick)
    assert schedules.best_lr(quick) == BEST_LR
    text = schedules.report(quick, n_seeds=2)
    winner_row = next(line for line in text.splitlines() if line.startswith("| *winner*"))
    assert winner_row.count("*rex*") == len(quick.budgets)
    assert "max |Δ train loss| over all steps = 0.00e+00" in text  # UBA phi=2 is cosine
    seeds = [line for line in text.splitlines() if line.startswith("| rex |") and "seed" not in line]
    assert any(line.count("|") == 7 for line in seeds)  # seed 0, seed 1, mean, std, paired delta
    summary = json.loads((quick.results / "summary.json").read_text())
    assert summary["peak_lr"] == BEST_LR and set(summary["lr_sweep"]) == {"0.002", "0.004", "0.008"}
    for png in ("loss-curves.png", "final-val-loss.png", "lr-curves.png"):
        assert (quick.results / png).stat().st_size > 10_000


def test_prediction_recovers_law_generated_runs(quick):
    """From the published metrics alone: single-run, two-run and plan (main + branch) fits of the law that
    generated the runs predict every run almost exactly; both laws are tabled."""
    fake_experiment_a(quick)
    b_layout = common.Layout(branching.NAME, quick=True)
    fake_wsd_plan(quick, b_layout)
    for sub in ("main", f"budget-{quick.budgets[0]}"):
        dest = b_layout.results / branching.plan_name("wsd") / sub
        dest.mkdir(parents=True)
        (dest / "metrics.jsonl").write_text((b_layout.runs / "plan-wsd" / sub / "metrics.jsonl").read_text())
    pred_layout = common.Layout(prediction.NAME, quick=True)
    results = prediction.predictions(pred_layout, BEST_LR, "tissue")
    b = quick.budgets
    assert set(results) == {f"cosine-b{b[-1]}", f"wsd-b{b[-1]}", f"wsd-b{b[0]}", f"wsd-b{b[0]}+cosine-b{b[0]}",
                            f"plan main+b{b[0]}"}
    for name, res in results.items():
        rows = res["rows"]
        assert len(rows) == len(prediction.targets(quick, BEST_LR))
        assert sum(r["in_sample"] for r in rows) == (2 if "+cosine" in name else 1), name
        assert max(abs(r["rel_error"]) for r in rows) < 2e-3, name
    text = prediction.report(pred_layout, BEST_LR)
    assert "(fit)" in text and (pred_layout.results / "prediction-errors.png").is_file()
    assert f"| plan main+b{b[0]} | mpl |" in text and f"| plan main+b{b[0]} | tissue λ=0.999 |" in text
    assert f"| wsd-b{b[0]} | mpl | refused |" in text and "too short to fit" in text  # 11 points, 7 parameters
    summary = json.loads((pred_layout.results / "summary.json").read_text())
    assert set(summary["fits"]) == {"tissue", "mpl"}


def fake_wsd_plan(quick, b_layout):
    """A WSD plan whose branches are the tails of (a)'s fake WSD runs (so the branch check finds 0 difference)."""
    rows, decays = [], []
    for b in quick.budgets:
        sep = quick.runs / schedules.run_name("wsd", b, BEST_LR, 0)
        decay = round(0.2 * b)
        branch_dir = b_layout.runs / "plan-wsd" / f"budget-{b}"
        branch_dir.mkdir(parents=True)
        lines = (sep / "metrics.jsonl").read_text().splitlines()
        train = [line for line in lines if '"train"' in line]
        (branch_dir / "metrics.jsonl").write_text("\n".join(train[-decay:] + [lines[-1]]) + "\n")
        val = json.loads(lines[-1])["val_loss"]
        rows.append({"budget": b, "steps": b, "branch_step": b - decay, "decay_steps": decay, "tokens": b * 1024,
                     "final_val_loss": val, "run_dir": str(branch_dir)})
        decays.append(decay)
    main = b_layout.runs / "plan-wsd" / "main"
    main.mkdir()
    (main / "metrics.jsonl").write_text((quick.runs / schedules.run_name("wsd", quick.budgets[-1], BEST_LR, 0)
                                         / "metrics.jsonl").read_text())
    spent = rows[-1]["branch_step"] + sum(decays)
    return {"mode": "wsd", "tokens_per_step": 1024, "budgets": rows, "plan_steps": spent, "plan_tokens": spent * 1024}


def test_branching_report_costs_and_branch_check(quick):
    fake_experiment_a(quick)
    b_layout = common.Layout(branching.NAME, quick=True)
    plan = fake_wsd_plan(quick, b_layout)
    spent = plan["plan_steps"]
    text = branching.report(b_layout, {"wsd": plan}, BEST_LR)
    assert f"| {spent * 1024:,} |" in text
    assert f"| {sum(quick.budgets) * 1024:,} |" in text  # separate runs
    assert text.count("max |Δ train loss| over the decay = 0.0e+00") == len(quick.budgets)
    assert (b_layout.results / "branching.png").is_file()
    assert "mean ± std" not in text and "seed 0," not in text  # one seed: the seed-0 report as before


def test_plan_names_keep_seed_0_paths():
    assert branching.plan_name("wsd") == "plan-wsd" and branching.plan_name("wsds", 0) == "plan-wsds"
    assert branching.plan_name("wsds", 1) == "plan-wsds-s1"


def test_seed_losses_and_mean_std():
    def rep(mode, losses):
        return {"mode": mode, "budgets": [{"budget": b, "final_val_loss": v} for b, v in losses.items()]}

    by_seed = {0: {"wsd": rep("wsd", {1: 5.0, 2: 4.0}), "wsds": rep("wsds", {1: 5.0, 2: 4.1})},
               1: {"wsd": rep("wsd", {1: 5.2, 2: 4.2}), "wsds": rep("wsds", {1: 5.2, 2: 4.5})},
               2: {"wsd": rep("wsd", {1: 9.0, 2: 9.0})}}  # no WSD-S plan: left out
    sl = branching.seed_losses(by_seed, (1, 2))
    assert sl["seeds"] == [0, 1]
    assert sl["wsd"][2] == {0: 4.0, 1: 4.2}
    assert sl["delta"][1] == {0: 0.0, 1: 0.0}
    assert sl["delta"][2][0] == pytest.approx(0.1) and sl["delta"][2][1] == pytest.approx(0.3)
    assert branching.mean_std(sl["delta"][2].values(), signed=True) == "+0.2000 ± 0.1414"
    assert branching.mean_std([4.0]) == "4.0000" and branching.mean_std([]) == "—"


def test_branching_report_with_two_seeds(quick):
    fake_experiment_a(quick)
    b_layout = common.Layout(branching.NAME, quick=True)
    wsd0 = fake_wsd_plan(quick, b_layout)
    shift = {"wsds": 0.02}

    def shifted(plan, mode, d):
        out = json.loads(json.dumps(plan))
        out["mode"] = mode
        for i, r in enumerate(out["budgets"]):
            r["final_val_loss"] += d * i  # the smallest budget is the same model in both plans
        return out

    plans0 = {"wsd": wsd0, "wsds": shifted(wsd0, "wsds", shift["wsds"])}
    wsd1 = shifted(wsd0, "wsd", 0.1)
    by_seed = {0: plans0, 1: {"wsd": wsd1, "wsds": shifted(wsd1, "wsds", 0.04)}}
    text = branching.report(b_layout, plans0, BEST_LR, by_seed=by_seed)
    assert "cosine, separate runs (a), seed 0" in text and "WSD plan: one main run + branches, seed 0" in text
    assert "WSD-S plan, mean ± std over seeds 0, 1" in text
    assert "| **Δ WSD-S − WSD plan** | 1 | +0.0000 | +0.0400 | +0.0800 |" in text
    assert "| **Δ WSD-S − WSD plan** | mean ± std | +0.0000 ± 0.0000 | +0.0300 ± 0.0141 | +0.0600 ± 0.0283 |" in text
    assert "mean Δ val loss" in text
    summary = json.loads((b_layout.results / "summary.json").read_text())
    assert summary["plans_by_seed"]["seeds"] == [0, 1]
    assert summary["plans_by_seed"]["delta"][str(quick.budgets[-1])]["1"] == pytest.approx(0.08)
