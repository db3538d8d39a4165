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
from pretrain.budget import set_steps, to_steps, tokens_per_step
from pretrain.config import ConfigError, TrainConfig, apply_overrides, from_dict, load_config, to_dict
from pretrain.schedules import ScheduleError, WSD_SHAPES, stable_phase, wsd_decay_start
from pretrain.trainer import TrainResult, train


@dataclass
class BudgetPoint:
    budget: int  # in the config's budget unit
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
    has_optimizer = (ckpt / "optimizer.pt").is_file() or (ckpt / "ds" / "state").is_dir()
    if not has_optimizer:
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
    set_steps(cfg, n + decay_steps)
    cfg.budget.budgets, cfg.budget.stop_at = [], None
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
        raise ConfigError("a plan needs budget.budgets: [B1, B2, ...] (in the unit of budget.tokens / steps / flops)")
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


def run_plan(cfg: TrainConfig, *, mode: str = "wsd") -> dict:
    """Train the plan; write ``RUN/branches.json`` and return it."""
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
    if mode == "wsd":
        main = copy.deepcopy(cfg)
        main.run_dir = str(root / "main")
        set_steps(main, points[-1].steps)
        main.budget.budgets = []
        main.budget.stop_at = points[-1].branch_step
        main.schedule.params = {k: v for k, v in main.schedule.params.items() if k != "decay_fraction"}
        main.schedule.params["decay_steps"] = points[-1].decay_steps
        main.checkpoint.at_steps = [p.branch_step for p in points]
        main.checkpoint.save_final, main.checkpoint.resume = True, "auto"
        train(main)
        spent = points[-1].branch_step
        for p in points:
            ckpt = Path(main.run_dir) / "checkpoints" / ckpt_io.step_dir_name(p.branch_step)
            r = branch(ckpt, decay_steps=p.decay_steps, out=root / f"budget-{p.budget}")
            spent += p.decay_steps
            rows.append(_row(p, r, tps))
    else:
        previous: Path | None = None
        for p in points:
            seg = copy.deepcopy(cfg)
            seg.run_dir = str(root / f"budget-{p.budget}")
            set_steps(seg, p.steps)
            seg.budget.budgets = []
            seg.schedule.params = {k: v for k, v in seg.schedule.params.items() if k != "decay_fraction"}
            seg.schedule.params["decay_steps"] = p.decay_steps
            seg.checkpoint.save_final, seg.checkpoint.resume = True, "auto"
            if previous is not None:
                seg.init.checkpoint = str(previous)
            r = train(seg)
            _export_main(r)
            previous = r.checkpoint
            rows.append(_row(p, r, tps))
        spent = points[-1].steps
    separate = sum(p.steps for p in points)
    report = {"mode": mode, "tokens_per_step": tps, "budgets": rows,
              "plan_steps": spent, "plan_tokens": spent * tps,
              "separate_runs_steps": separate, "separate_runs_tokens": separate * tps}
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        ckpt_io.atomic_write_text(root / "branches.json", json.dumps(report, indent=1))
        print(format_table(report), flush=True)
    return report


def _row(p: BudgetPoint, r: TrainResult, tps: int) -> dict:
    return {"budget": p.budget, "steps": p.steps, "branch_step": p.branch_step, "decay_steps": p.decay_steps,
            "tokens": p.steps * tps, "final_val_loss": r.final_val_loss, "run_dir": str(r.run_dir),
            "hf": str(Path(r.run_dir) / "hf")}


def format_table(report: dict) -> str:
    lines = [f"plan ({report['mode']}): one main branch, decays at each budget",
             f"{'budget':>12} {'steps':>8} {'decay from':>10} {'val loss':>9}  model"]
    for r in report["budgets"]:
        lines.append(f"{r['budget']:>12,} {r['steps']:>8} {r['branch_step']:>10} {r['final_val_loss']:>9.4f}  {r['hf']}")
    saved = 1 - report["plan_tokens"] / report["separate_runs_tokens"]
    lines.append(f"tokens spent by this plan: {report['plan_tokens']:,}; by separate runs: "
                 f"{report['separate_runs_tokens']:,} ({100 * saved:.0f}% saved)")
    return "\n".join(lines)


