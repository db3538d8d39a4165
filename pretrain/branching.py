"""Decayed-checkpoint branching: finished models for several budgets from one main run.

A branch is an ordinary run (config, checkpoints, metrics) whose config says: start from this
stable-phase checkpoint (weights, optimizer state, data position, RNG), keep the step count,
and decay the LR from the stable value to the floor over D steps with a WSD shape. Because WSD
multipliers are exactly 1.0 in the stable phase whatever the budget, a WSD run of budget B with
decay D and a main run branched at B - D with D decay steps take identical steps.

Plans (``budget.budgets``):
- ``wsd``: the main run trains the stable phase once, up to the largest budget's decay start;
  every budget branches off it at its own decay start (Hägele et al. 2405.18392; MiniCPM
  2404.06395).
- ``wsds`` (WSD-S, Wen et al. 2410.05192): the main branch stops at each decay start, the decay
  yields that budget's model, and the main branch continues *from the decayed checkpoint* at
  peak LR with no re-warmup, so no decay is thrown away.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from pretrain import checkpoint as ckpt_io
from pretrain.budget import to_steps, tokens_per_step
from pretrain.config import ConfigError, TrainConfig, apply_overrides, from_dict, load_config, to_dict
from pretrain.engines.weights import has_optimizer_state
from pretrain.schedules import ScheduleError, WSD_SHAPES, stable_phase, wsd_decay_start
from pretrain.trainer import TrainResult, train


@dataclass
class BudgetPoint:
    budget: int | float  # in the config's budget unit
    steps: int
    decay_steps: int

    @property
    def branch_step(self) -> int:
        return self.steps - self.decay_steps


def branch_config(ckpt: str | Path, *, decay_steps: int, out: str | Path, shape: str | None = None,
                  min_lr_ratio: float | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """The config of a branch from a stable-phase checkpoint; every bad request fails here, before work."""
    ckpt = ckpt_io.resolve(ckpt)
    ckpt_io.verify(ckpt)
    state = ckpt_io.read_trainer_state(ckpt)
    main = load_config(ckpt / "config.yaml")
    n = int(state["step"])
    main_total = int(state["total_steps"])
    if not has_optimizer_state(ckpt):
        raise ckpt_io.CheckpointError(f"checkpoint {ckpt} has no optimizer state: a branch continues training and needs it")
    if decay_steps <= 0:
        raise ConfigError(f"--decay-steps must be positive, got {decay_steps}")
    if n > main_total:
        raise ConfigError(f"branch point {n} is past the main run's budget of {main_total} steps")
    s = main.schedule
    try:
        phase = stable_phase(s.name, main_total, **s.kwargs())
    except ScheduleError as e:
        raise ConfigError(f"main run schedule: {e}") from None
    if phase is None or not (phase[0] <= n <= phase[1]):
        where = f"[{phase[0]}, {phase[1]}]" if phase else "none"
        raise ConfigError(f"checkpoint {ckpt} (step {n}) is outside the stable phase of the main run's "
                          f"{s.name} schedule (stable steps {where}); branch from a step inside it")
    if n + decay_steps > main_total:
        raise ConfigError(f"decay of {decay_steps} steps from step {n} ends at {n + decay_steps}, past the "
                          f"main run's budget of {main_total} steps ({main_total - n} left)")
    shape = shape or s.params.get("decay_shape", "1-sqrt")
    if shape not in WSD_SHAPES:
        raise ConfigError(f"--shape {shape!r} is not one of {', '.join(WSD_SHAPES)}")
    cfg = copy.deepcopy(main)
    cfg.run_dir = str(out)
    cfg.init.checkpoint = str(ckpt)
    cfg.init.load_optimizer = cfg.init.load_data_state = True
    cfg.checkpoint.resume = "auto"  # a re-run continues the branch; a first run starts from init.checkpoint
    cfg.checkpoint.at_steps = []
    cfg.checkpoint.save_final = True  # the finished model is the point of a branch
    cfg.budget.set_steps(n + decay_steps)
    cfg.budget.stop_at = None
    cfg.schedule.name = "wsd"
    cfg.schedule.min_lr_ratio = s.min_lr_ratio if min_lr_ratio is None else min_lr_ratio
    cfg.schedule.params = {"decay_steps": decay_steps, "decay_shape": shape}
    if overrides:
        cfg = from_dict(apply_overrides(to_dict(cfg), overrides))
    return cfg


def branch(ckpt: str | Path, *, decay_steps: int, out: str | Path, shape: str | None = None,
           min_lr_ratio: float | None = None, export_hf: bool = True, overrides: list[str] | None = None) -> TrainResult:
    """Train the decay of one branch and export its model to ``OUT/hf``."""
    cfg = branch_config(ckpt, decay_steps=decay_steps, out=out, shape=shape, min_lr_ratio=min_lr_ratio,
                        overrides=overrides)
    result = train(cfg)
    if export_hf:
        _export_main(result)
    return result


def _export_main(result: TrainResult) -> None:
    import torch.distributed as dist

    from pretrain.export import export

    final = ckpt_io.step_dir_name(result.step)
    if result.checkpoint is None or result.checkpoint.name != final:
        raise ckpt_io.CheckpointError(f"{result.run_dir} has no checkpoint of its final step {result.step} to export")
    if not dist.is_initialized() or dist.get_rank() == 0:
        export(result.checkpoint, Path(result.run_dir) / "hf")
    if dist.is_initialized():
        dist.barrier()


def budget_points(cfg: TrainConfig) -> list[BudgetPoint]:
    budgets = cfg.budget.budgets
    if not budgets:
        raise ConfigError("a plan needs budget.budgets: [B1, B2, ...] (in the unit of the budget: tokens, steps, epochs or flops)")
    if any(b >= c for b, c in zip(budgets, budgets[1:])):
        raise ConfigError(f"budget.budgets must be strictly increasing, got {budgets}")
    if cfg.schedule.name != "wsd":
        raise ConfigError(f"a multi-budget plan branches a WSD main run; schedule.name is {cfg.schedule.name!r}")
    points = [BudgetPoint(b, to_steps(cfg, b), 0) for b in budgets]
    for p in points:
        try:
            p.decay_steps = p.steps - wsd_decay_start(p.steps, **cfg.schedule.kwargs())
        except ScheduleError as e:
            raise ConfigError(f"budget {p.budget} ({p.steps} steps): {e}") from None
        if p.decay_steps <= 0 or p.branch_step < cfg.schedule.warmup_steps:
            raise ConfigError(f"budget {p.budget} ({p.steps} steps) leaves no stable phase: decay {p.decay_steps} "
                              f"steps after {cfg.schedule.warmup_steps} warmup steps")
    starts = [p.branch_step for p in points]
    if any(a >= b for a, b in zip(starts, starts[1:])):
        raise ConfigError(f"decay starts {starts} of budgets {budgets} are not increasing: use budgets further apart "
                          "or a smaller decay")
    return points


class PlanPredictor:
    """``pretrain plan --predict``: before each budget's decay is trained, a loss law fitted on what the plan
    has trained so far predicts that budget's final train loss; after it, the actual one is set beside it.

    A WSD main run never decays its LR, so before the first branch the law's annealing term cannot be
    identified (:func:`pretrain.predict.check_identifiable`): that budget gets the law's loss *without* a
    decay (LR held at its peak), labelled as such, and every later budget a real prediction fitted on the
    main run and the branches decayed so far. Final losses are means over the last ``final_window``
    logged steps, as ``pretrain predict`` compares them. Works on rank 0 only (no collective is involved).
    """

    def __init__(self, law: str, *, log_every: int = 1, final_window: int = 10):
        from pretrain.predict import LAWS

        if law not in LAWS:
            raise ConfigError(f"--predict: unknown law {law!r}; choose one of {', '.join(LAWS)}")
        self.law, self.log_every, self.final_window = law, log_every, final_window
        self.runs: list = []
        self.curves: dict[int, tuple] = {}

    def add(self, name: str, run_dir: str | Path, lrs) -> None:
        """A finished run (its metrics.jsonl) with the LR of every update of its history."""
        from pretrain.predict import Run, load_metrics

        steps, losses, _ = load_metrics(Path(run_dir) / "metrics.jsonl")
        self.runs.append(Run(steps, losses, lrs, name=name))

    def _tail(self, n_steps: int):
        import numpy as np

        return np.arange(n_steps, max(0, n_steps - self.final_window * self.log_every), -self.log_every)[::-1]

    def before(self, p: BudgetPoint, lrs) -> dict:
        """Predict budget ``p`` (LRs of its whole history); print it; return the fields of its report row."""
        import numpy as np

        from pretrain.predict import FitError, fit_runs, predict

        fields = {"prediction_law": self.law, "predicted_final_loss": None, "prediction_fit": None}
        if not self.runs:
            print(f"[predict] budget {p.budget:,}: nothing trained yet to fit a law on", flush=True)
            return fields
        names = " + ".join(r.name for r in self.runs)
        tail = self._tail(p.steps) - 1
        try:
            params = fit_runs(self.runs, law=self.law)
        except FitError as e:
            fields["prediction_note"] = str(e)
            print(f"[predict] budget {p.budget:,}: no prediction from {names}: {e}", flush=True)
            try:
                flat = fit_runs(self.runs, law=self.law, annealing=False)
            except FitError:
                return fields
            held = float(np.mean(predict(flat, np.full(p.steps, float(np.max(lrs))))[tail]))
            fields["no_decay_loss"] = held
            print(f"[predict] budget {p.budget:,}: with its LR held at the peak to step {p.steps} (no decay) the "
                  f"{self.law} law gives {held:.4f}; the decay should end below it", flush=True)
            return fields
        curve = predict(params, lrs)
        self.curves[p.budget] = (np.arange(p.branch_step + 1, p.steps + 1), curve[p.branch_step:])
        fields.update(predicted_final_loss=float(np.mean(curve[tail])), prediction_fit=names,
                      prediction_params=params.to_dict())
        print(f"[predict] budget {p.budget:,} ({p.steps} steps): predicted final train loss "
              f"{fields['predicted_final_loss']:.4f} ({self.law} law fitted on {names})", flush=True)
        if params.note:
            fields["prediction_note"] = params.note
            print(f"[predict] budget {p.budget:,}: note: {params.note}", flush=True)
        return fields

    def after(self, p: BudgetPoint, row: dict) -> None:
        """Set the actual final train loss (and the error) of a trained budget beside its prediction."""
        import numpy as np

        from pretrain.predict import load_metrics

        steps, losses, _ = load_metrics(Path(row["run_dir"]) / "metrics.jsonl")
        row["actual_final_train_loss"] = float(np.mean(losses[-self.final_window:]))
        msg = f"[predict] budget {p.budget:,}: actual final train loss {row['actual_final_train_loss']:.4f}"
        if row.get("predicted_final_loss") is not None:
            row["prediction_error"] = row["predicted_final_loss"] / row["actual_final_train_loss"] - 1
            msg += f" (predicted {row['predicted_final_loss']:.4f}, error {100 * row['prediction_error']:+.2f}%)"
        print(msg + f"; val loss {row['final_val_loss']:.4f}", flush=True)


def _budget_lrs(cfg: TrainConfig, p: BudgetPoint):
    """LR of every update of a WSD run of budget ``p`` (what its branch or segment trains under)."""
    from pretrain.schedule_plot import lr_curve

    c = copy.deepcopy(cfg)
    c.budget.set_steps(p.steps)
    c.schedule.params = {k: v for k, v in c.schedule.params.items() if k != "decay_fraction"}
    c.schedule.params["decay_steps"] = p.decay_steps
    return lr_curve(c).lrs


def run_plan(cfg: TrainConfig, *, mode: str = "wsd", predict: str | None = None) -> dict:
    """Train the plan; write ``RUN/branches.json`` and ``RUN/plan.png``, and return the report.

    ``predict`` (a law of ``pretrain.predict``): print each budget's predicted final loss before its decay
    is trained and the actual one after (:class:`PlanPredictor`)."""
    import numpy as np
    import torch.distributed as dist
    if mode not in ("wsd", "wsds"):
        raise ConfigError(f"plan mode {mode!r} is not one of wsd, wsds")
    points = budget_points(cfg)
    if mode == "wsds":
        for prev, p in zip(points, points[1:]):
            if prev.steps > p.branch_step:
                raise ConfigError(f"WSD-S: budget {p.budget} starts its decay at step {p.branch_step}, before the "
                                  f"previous budget's model is finished at step {prev.steps}")
    root = Path(cfg.run_dir)
    tps = tokens_per_step(cfg)
    rows = []
    lead = not dist.is_initialized() or dist.get_rank() == 0
    predictor = PlanPredictor(predict, log_every=cfg.logging.log_every) if predict and lead else None
    if mode == "wsd":
        main = copy.deepcopy(cfg)
        main.run_dir = str(root / "main")
        main.budget.set_steps(points[-1].steps)
        main.budget.stop_at = points[-1].branch_step
        main.schedule.params = {k: v for k, v in main.schedule.params.items() if k != "decay_fraction"}
        main.schedule.params["decay_steps"] = points[-1].decay_steps
        main.checkpoint.at_steps = [p.branch_step for p in points]
        main.checkpoint.save_final, main.checkpoint.resume = True, "auto"
        train(main)
        if predictor:
            predictor.add("main", main.run_dir, _budget_lrs(cfg, points[-1]))
        spent = points[-1].branch_step
        for p in points:
            lrs = _budget_lrs(cfg, p)
            fields = predictor.before(p, lrs) if predictor else {}
            ckpt = Path(main.run_dir) / "checkpoints" / ckpt_io.step_dir_name(p.branch_step)
            r = branch(ckpt, decay_steps=p.decay_steps, out=root / f"budget-{p.budget}")
            spent += p.decay_steps
            rows.append({**_row(p, r, tps), **fields})
            if predictor:
                predictor.after(p, rows[-1])
                predictor.add(f"budget-{p.budget}", r.run_dir, lrs)
    else:
        previous: Path | None = None
        history = np.zeros(0)
        for p in points:
            lrs = np.concatenate([history, _budget_lrs(cfg, p)[len(history):]])  # earlier decays stay in the history
            fields = predictor.before(p, lrs) if predictor else {}
            seg = copy.deepcopy(cfg)
            seg.run_dir = str(root / f"budget-{p.budget}")
            seg.budget.set_steps(p.steps)
            seg.schedule.params = {k: v for k, v in seg.schedule.params.items() if k != "decay_fraction"}
            seg.schedule.params["decay_steps"] = p.decay_steps
            seg.checkpoint.save_final, seg.checkpoint.resume = True, "auto"
            if previous is not None:
                seg.init.checkpoint = str(previous)
            r = train(seg)
            _export_main(r)
            previous = r.checkpoint
            rows.append({**_row(p, r, tps), **fields})
            if predictor:
                predictor.after(p, rows[-1])
                predictor.add(f"budget-{p.budget}", r.run_dir, lrs)
            history = lrs
        spent = points[-1].steps
    separate = sum(p.steps for p in points)
    report = {"mode": mode, "tokens_per_step": tps, "budgets": rows,
              "plan_steps": spent, "plan_tokens": spent * tps,
              "separate_runs_steps": separate, "separate_runs_tokens": separate * tps}
    if lead:
        from pretrain.plan_plot import plot_plan

        report["plot"] = str(plot_plan(root, report, root / "plan.png",
                                       predicted_curves=predictor.curves if predictor else None))
        ckpt_io.atomic_write_text(root / "branches.json", json.dumps(report, indent=1))
        print(format_table(report), flush=True)
        print(f"plot: {report['plot']}", flush=True)
    return report


def _row(p: BudgetPoint, r: TrainResult, tps: int) -> dict:
    return {"budget": p.budget, "steps": p.steps, "branch_step": p.branch_step, "decay_steps": p.decay_steps,
            "tokens": p.steps * tps, "final_val_loss": r.final_val_loss, "run_dir": str(r.run_dir),
            "hf": str(Path(r.run_dir) / "hf")}


def format_table(report: dict) -> str:
    predicted = any("actual_final_train_loss" in r for r in report["budgets"])
    lines = [f"plan ({report['mode']}): one main branch, decays at each budget",
             f"{'budget':>12} {'steps':>8} {'decay from':>10} {'val loss':>9}"
             + (f" {'pred. train':>11} {'act. train':>10} {'error':>8}" if predicted else "") + "  model"]
    for r in report["budgets"]:
        extra = ""
        if predicted:
            p = r.get("predicted_final_loss")
            extra = (f" {p:>11.4f}" if p is not None else f" {'—':>11}") + f" {r.get('actual_final_train_loss', 0.0):>10.4f}" \
                + (f" {100 * r['prediction_error']:>+7.2f}%" if "prediction_error" in r else f" {'—':>8}")
        lines.append(f"{r['budget']:>12,} {r['steps']:>8} {r['branch_step']:>10} {r['final_val_loss']:>9.4f}{extra}  {r['hf']}")
    saved = 1 - report["plan_tokens"] / report["separate_runs_tokens"]
    lines.append(f"tokens spent by this plan: {report['plan_tokens']:,}; by separate runs: "
                 f"{report['separate_runs_tokens']:,} ({100 * saved:.0f}% saved)")
    return "\n".join(lines)


