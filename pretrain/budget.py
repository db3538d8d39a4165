"""Training budget arithmetic: a budget in tokens, steps or FLOPs becomes a number of optimizer steps.

Schedules are defined over optimizer steps, so every consumer (trainer, schedule plot, loss
prediction, branching, the planner) must turn ``cfg.budget`` into steps the same way; this is
that one way. A FLOPs budget is converted with the trainer's own training FLOPs per token
(:func:`pretrain.model.flops_per_token`: 6·N_non-embedding + 12·L·d·T) on the parameter count of
the configured model, so a run of ``budget.flops = C`` spends at most C as the trainer counts it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from pretrain.config import ConfigError, TrainConfig

UNITS = ("tokens", "steps", "flops")


def tokens_per_step(cfg: TrainConfig) -> int:
    """Tokens consumed by one optimizer step over all ranks: global batch x sequence length."""
    return cfg.budget.global_batch_size * cfg.data.seq_len


def budget_unit(cfg: TrainConfig) -> str:
    """The unit the config states its budget (and ``budget.budgets``) in: tokens, steps or flops."""
    given = [u for u in UNITS if getattr(cfg.budget, u) is not None]
    if len(given) != 1:
        raise ConfigError(f"budget: give exactly one of {', '.join('budget.' + u for u in UNITS)}"
                          + (f" (got {', '.join('budget.' + u for u in given)})" if given else ""))
    return given[0]


def vocab_size_of(cfg: TrainConfig) -> int:
    """The model's vocabulary: ``model.vocab_size``, or the manifest tokenizer's rounded as the trainer does."""
    from pretrain.model import resolve_vocab_size

    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    path = Path(cfg.data.manifest)
    if path.is_dir():
        path = path / "manifest.json"
    try:
        vocab = int(json.loads(path.read_text())["tokenizer"]["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"model.vocab_size is 0 (take it from the data) but data.manifest {str(path)!r} gives no "
                          f"tokenizer vocab_size ({type(e).__name__}: {e}); set model.vocab_size") from None
    return resolve_vocab_size(cfg.model, vocab)


def flops_per_token_of(cfg: TrainConfig) -> float:
    """Training FLOPs per token of the configured model, as the trainer reports them."""
    from pretrain.model import flops_per_token, param_counts

    _, non_embedding = param_counts(cfg.model, vocab_size_of(cfg))
    return flops_per_token(cfg.model, non_embedding, cfg.data.seq_len)


def to_steps(cfg: TrainConfig, amount: float) -> int:
    """Convert ``amount`` in the config's budget unit (:func:`budget_unit`) into optimizer steps.

    Tokens and FLOPs round down (a partial step is never taken, so the budget is never exceeded);
    a budget smaller than one step is a ConfigError.
    """
    unit = budget_unit(cfg)
    per = tokens_per_step(cfg)
    if unit == "steps":
        steps, step_size = int(amount), "1 step"
    elif unit == "tokens":
        steps, step_size = int(amount) // per, f"{per} tokens"
    else:
        step_flops = flops_per_token_of(cfg) * per
        steps, step_size = math.floor(amount / step_flops), f"{step_flops:.4g} FLOPs"
    if steps <= 0:
        raise ConfigError(
            f"budget: {amount:g} {unit} is less than one optimizer step ({step_size}: budget.global_batch_size "
            f"{cfg.budget.global_batch_size} x data.seq_len {cfg.data.seq_len} tokens)"
        )
    return steps


def set_steps(cfg: TrainConfig, steps: int) -> None:
    """State the budget as ``steps`` optimizer steps (every other unit cleared): plans and branches
    resolve a budget once and hand their runs plain step counts."""
    for unit in UNITS:
        setattr(cfg.budget, unit, None)
    cfg.budget.steps = steps


def total_steps_of(cfg: TrainConfig) -> int:
    """Number of optimizer steps of the run, from whichever of budget.steps / tokens / flops is set."""
    return to_steps(cfg, getattr(cfg.budget, budget_unit(cfg)))
