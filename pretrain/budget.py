"""Training budget arithmetic: a budget in any unit becomes a number of optimizer steps.

Schedules are defined over optimizer steps, so every consumer (trainer, schedule plot, loss
prediction, branching) must turn ``cfg.budget`` into steps the same way; :func:`to_steps` is that
one way, for every unit of ``BudgetConfig.UNITS``:

- ``tokens``: ``floor(tokens / tokens_per_step)``;
- ``steps``: as given;
- ``epochs``: a fraction f of one epoch of the manifest's train split, which the one-epoch loader
  serves as ``N = floor(train tokens / data.seq_len)`` sequences: ``floor(floor(f * N) / global batch)``
  steps, so ``f <= 1`` always fits in one epoch, whatever the data;
- ``flops``: ``floor(flops / (flops_per_token x tokens_per_step))`` with the trainer's own training
  FLOPs per token (:func:`pretrain.model.flops_per_token`: 6·N_non-embedding + 12·L·d·T) on the
  parameter count of the configured model, so a run spends at most its FLOPs as the trainer counts them.

Every rounding is down: a partial step is never taken, so a budget is never exceeded.
"""
from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

from pretrain.config import ConfigError, TrainConfig


def tokens_per_step(cfg: TrainConfig) -> int:
    """Tokens consumed by one optimizer step over all ranks: global batch x sequence length."""
    return cfg.budget.global_batch_size * cfg.data.seq_len


def budget_unit(cfg: TrainConfig) -> str:
    """The unit the budget is stated in (``budget.tokens``, ``steps`` or ``epochs``)."""
    units = cfg.budget.given()
    if len(units) != 1:
        raise ConfigError(f"budget: give exactly one of {', '.join(f'budget.{u}' for u in cfg.budget.UNITS)}")
    return units[0]


def _manifest_path(cfg: TrainConfig) -> Path:
    path = Path(cfg.data.manifest)
    return path / "manifest.json" if path.is_dir() else path


def resolvable(cfg: TrainConfig) -> bool:
    """Whether the budget can be turned into steps now (an epoch budget needs its manifest on disk, a FLOPs
    budget the vocabulary: ``model.vocab_size`` or the manifest's)."""
    unit = budget_unit(cfg)
    on_disk = bool(cfg.data.manifest) and _manifest_path(cfg).is_file()
    return on_disk or unit in ("tokens", "steps") or (unit == "flops" and bool(cfg.model.vocab_size))


def vocab_size_of(cfg: TrainConfig) -> int:
    """The model's vocabulary: ``model.vocab_size``, or the manifest tokenizer's rounded as the trainer does."""
    from pretrain.model import resolve_vocab_size

    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    path = _manifest_path(cfg)
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


def epoch_sequences(cfg: TrainConfig) -> int:
    """Sequences of ``data.seq_len`` tokens in one epoch of the manifest's train split (as the loader cuts them)."""
    path = _manifest_path(cfg)
    if not cfg.data.manifest or not path.is_file():
        raise ConfigError(f"budget.epochs is a fraction of the data, but data.manifest {str(path)!r} does not exist "
                          "(run `data-select run` or `data-select tokenize` first)")
    try:
        tokens = int(json.loads(path.read_text())["splits"]["train"]["tokens"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"budget.epochs: cannot read the train token count of {path} ({e!r})") from None
    return tokens // cfg.data.seq_len


def _steps_of_tokens(cfg: TrainConfig, amount: float) -> int:
    return int(amount) // tokens_per_step(cfg)


def _steps_of_steps(cfg: TrainConfig, amount: float) -> int:
    return int(amount)


def _steps_of_epochs(cfg: TrainConfig, amount: float) -> int:
    # the fraction as written (0.57, not the binary float just below it), so f * N is exact
    sequences = math.floor(Fraction(str(amount)) * epoch_sequences(cfg))
    return sequences // cfg.budget.global_batch_size


def _steps_of_flops(cfg: TrainConfig, amount: float) -> int:
    return math.floor(amount / (flops_per_token_of(cfg) * tokens_per_step(cfg)))


_TO_STEPS = {"tokens": _steps_of_tokens, "steps": _steps_of_steps, "epochs": _steps_of_epochs,
             "flops": _steps_of_flops}


def to_steps(cfg: TrainConfig, amount: float) -> int:
    """Convert ``amount``, in the unit the config states its budget in, into optimizer steps.

    A budget smaller than one step is a ConfigError naming what one step is.
    """
    unit = budget_unit(cfg)
    steps = _TO_STEPS[unit](cfg, amount)
    if steps <= 0:
        per = f"{tokens_per_step(cfg)} tokens = budget.global_batch_size {cfg.budget.global_batch_size} x data.seq_len {cfg.data.seq_len}"
        if unit == "epochs":
            per += f"; one epoch holds {epoch_sequences(cfg):,} sequences"
        if unit == "flops":
            per += f" tokens; {flops_per_token_of(cfg):.4g} training FLOPs per token"
        raise ConfigError(f"budget: {_fmt(amount, unit) if unit == 'flops' else amount} {unit} is less than one "
                          f"optimizer step ({per})")
    return steps


def total_steps_of(cfg: TrainConfig) -> int:
    """Number of optimizer steps of the run: the budget, in whichever unit it is stated, as steps."""
    unit = budget_unit(cfg)
    return to_steps(cfg, getattr(cfg.budget, unit))


def _fmt(x: float, unit: str = "") -> str:
    if unit == "flops":
        return f"{x:.4g}"
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def describe(cfg: TrainConfig) -> list[str]:
    """The budget (and each plan budget) as the user stated it, in steps and in tokens: printed at start."""
    unit, tps = budget_unit(cfg), tokens_per_step(cfg)
    where = ""
    if unit == "epochs":
        where = f" (of one epoch: {epoch_sequences(cfg):,} sequences of {cfg.data.seq_len} tokens in {_manifest_path(cfg)})"
    steps = total_steps_of(cfg)
    lines = [f"budget.{unit} {_fmt(getattr(cfg.budget, unit), unit)}{where} = {steps:,} steps x {tps:,} tokens = {steps * tps:,} tokens"]
    for b in cfg.budget.budgets:
        s = to_steps(cfg, b)
        lines.append(f"  plan budget {_fmt(b, unit)} {unit} = {s:,} steps = {s * tps:,} tokens")
    return lines
