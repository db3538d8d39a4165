"""What continuing from a checkpoint may change, and what it refuses (before any training).

A *resume* (``checkpoint.resume``) continues one run: its schedule and budget are the
checkpoint's, and a change is refused, because the LR curve already followed would silently no
longer be the one logged and planned; decaying or extending from a checkpoint is a new run
(``pretrain branch``, ``init.checkpoint``), or ``checkpoint.allow_schedule_change=true`` says it
is meant. A *start* from another checkpoint (``init.checkpoint``) may change them, but starting
over on the very data the checkpoint trained on (``init.load_data_state=false``) would repeat
tokens the model has seen: refused unless ``init.allow_repeat_data=true``.

Optimizer state carries its own hyper-parameters; after it is loaded the configured betas, eps
and weight decay are applied, and every difference is reported.
"""
from __future__ import annotations

from pathlib import Path

from pretrain.checkpoint import CheckpointError
from pretrain.config import ConfigError, TrainConfig, to_dict
from pretrain.engines.weights import foreign_engine_message


def _changes(before: dict, after: dict, prefix: str) -> list[str]:
    keys = sorted(set(before) | set(after))
    return [f"{prefix}{k} {before.get(k, '(unset)')} -> {after.get(k, '(unset)')}" for k in keys
            if before.get(k) != after.get(k)]


def schedule_changes(cfg: TrainConfig, state: dict, total_steps: int) -> list[str]:
    """How this run's schedule and budget differ from those the checkpoint was trained under."""
    found = []
    if "schedule" in state:
        found += _changes(state["schedule"], to_dict(cfg.schedule), "schedule.")
    if int(state["total_steps"]) != total_steps:
        found.append(f"budget {state['total_steps']} -> {total_steps} steps")
    saved_batch = state.get("global_batch_size")
    if saved_batch is not None and saved_batch != cfg.budget.global_batch_size:
        found.append(f"budget.global_batch_size {saved_batch} -> {cfg.budget.global_batch_size}")
    return found


def check_schedule(cfg: TrainConfig, state: dict, total_steps: int, ckpt: Path) -> str | None:
    """Refuse a resume that changes the schedule or budget; with the override, the line to log."""
    found = schedule_changes(cfg, state, total_steps)
    if not found:
        return None
    listed = "; ".join(found)
    if cfg.checkpoint.allow_schedule_change:
        return f"resuming with a changed schedule or budget ({listed}), as checkpoint.allow_schedule_change=true allows"
    raise ConfigError(
        f"checkpoint {ckpt} was trained under another schedule or budget than this run asks for ({listed}); "
        f"a resume would silently change the run. To decay or extend from it, start a new run: "
        f"`pretrain branch --from {ckpt} --decay-steps D --out DIR` (or init.checkpoint={ckpt} in a new run_dir); "
        "to change this run anyway, set checkpoint.allow_schedule_change=true")


def check_data_state(cfg: TrainConfig, state: dict, fingerprint: str, ckpt: Path) -> None:
    """Refuse to start over on the data a checkpoint already trained on, unless asked to."""
    loader = state["loader"]
    seen = int(loader.get("sequences_consumed", 0))
    if loader.get("fingerprint") != fingerprint or seen == 0 or cfg.init.allow_repeat_data:
        return
    raise ConfigError(
        f"checkpoint {ckpt} has trained on {int(loader.get('tokens_consumed', 0)):,} tokens of this very data "
        f"(fingerprint {fingerprint[:16]}…); init.load_data_state=false would start the epoch over and train on "
        "tokens the model has already seen. Keep its position (init.load_data_state=true), train on other data, "
        "or set init.allow_repeat_data=true to repeat them on purpose")


def check_engine(engine: str, state: dict, ckpt: Path) -> None:
    """Optimizer state continues only under the engine that wrote it (each keeps its own layout)."""
    if state.get("engine") != engine:
        raise CheckpointError(foreign_engine_message(ckpt, state.get("engine"), engine))


def check_world_size(engine: str, state: dict, world: int, ckpt: Path) -> None:
    """DeepSpeed's partitioned optimizer state loads only on the world size that wrote it: say so first."""
    saved = int(state.get("world_size", world))
    if engine != "deepspeed" or state.get("engine") != "deepspeed" or saved == world:
        return
    raise CheckpointError(
        f"checkpoint {ckpt} was written by {saved} DeepSpeed process{'es' if saved > 1 else ''} and this run has "
        f"{world}: DeepSpeed's partitioned optimizer state loads only on the number of processes that wrote it. "
        f"Continue it on {saved} process{'es' if saved > 1 else ''}, or start a new run from its weights alone with "
        f"init.checkpoint={ckpt} init.load_optimizer=false (the Adam moments start over)")


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(float(x) == float(y) for x, y in zip(a, b))
    return a is not None and b is not None and float(a) == float(b)


def apply_hyperparameters(groups: list[dict], configured: list[dict]) -> list[str]:
    """Set the configured values on the loaded optimizer's groups; return what differed from the saved ones."""
    changed = []
    for name, group, want in zip(("decayed group", "undecayed group"), groups, configured):
        for key, value in want.items():
            saved = group.get(key)
            if not _same(saved, value):
                shown = tuple(saved) if isinstance(saved, list) else saved
                changed.append(f"optim.{key} {shown} -> {value} ({name})")
            group[key] = value
    return changed
