"""Training budget arithmetic: a budget in tokens or steps becomes a number of optimizer steps.

Schedules are defined over optimizer steps, so every consumer (trainer, schedule plot, loss
prediction, branching) must turn ``cfg.budget`` into steps the same way; this is that one way.
"""
from __future__ import annotations

from pretrain.config import ConfigError, TrainConfig


def tokens_per_step(cfg: TrainConfig) -> int:
    """Tokens consumed by one optimizer step over all ranks: global batch x sequence length."""
    return cfg.budget.global_batch_size * cfg.data.seq_len


def to_steps(cfg: TrainConfig, amount: int) -> int:
    """Convert ``amount`` in the config's budget unit (tokens if ``budget.tokens`` is set, else steps).

    Tokens round down (a partial step is never taken, so the budget is never exceeded);
    a budget smaller than one step is a ConfigError.
    """
    if cfg.budget.tokens is None:
        steps = int(amount)
    else:
        steps = int(amount) // tokens_per_step(cfg)
    if steps <= 0:
        per = tokens_per_step(cfg)
        raise ConfigError(
            f"budget: {amount} {'tokens' if cfg.budget.tokens is not None else 'steps'} is less than one optimizer "
            f"step ({per} tokens = budget.global_batch_size {cfg.budget.global_batch_size} x data.seq_len {cfg.data.seq_len})"
        )
    return steps


def total_steps_of(cfg: TrainConfig) -> int:
    """Number of optimizer steps of the run: ``budget.steps``, or ``floor(budget.tokens / tokens_per_step)``."""
    if cfg.budget.steps is not None:
        return to_steps(cfg, cfg.budget.steps)
    if cfg.budget.tokens is None:
        raise ConfigError("budget: give exactly one of budget.tokens or budget.steps")
    return to_steps(cfg, cfg.budget.tokens)
