"""Fault injection for tests: non-finite values on one rank at one step, in any engine.

``BUDGETLM_FAULT=KIND:RANK:STEP`` (``python -m tests.faults train ...``, like ``-m pretrain``), or
:func:`faulty` in-process. Kinds:

- ``grad``: the gradient flowing back from the final norm becomes inf on that rank (the loss stays
  finite); under DDP the all-reduce spreads it to every rank, under FSDP2 and ZeRO to the norm.
- ``loss``: that rank reports a NaN loss after an ordinary backward (its gradients stay finite), so
  only the ranks' agreement can catch it.
- ``weights``: after that step is applied, one weight becomes NaN on that rank.
"""
from __future__ import annotations

import os
import sys

import torch

from pretrain import trainer as trainer_mod


def _wrap(engine, kind: str, rank: int, step: int) -> None:
    if engine.rank != rank:
        return
    calls = {"n": 0}
    accum = {"n": None}
    forward_backward, optimizer_step = engine.forward_backward, engine.optimizer_step

    def current_step() -> int:
        return calls["n"] // accum["n"] + 1

    def hook(module, args, output):
        if kind == "grad" and current_step() == step and output.requires_grad:
            output.register_hook(lambda g: g * float("inf"))

    engine.unwrapped.model.norm.register_forward_hook(hook)

    def fb(tokens, scale, sync):
        if accum["n"] is None:
            accum["n"] = round(1.0 / scale)
        loss = forward_backward(tokens, scale, sync)
        hit = kind == "loss" and current_step() == step
        calls["n"] += 1
        return loss * float("nan") if hit else loss

    def opt_step(norm):
        out = optimizer_step(norm)
        if kind == "weights" and calls["n"] // accum["n"] == step:
            with torch.no_grad():
                next(engine.local_parameters()).view(-1)[0] = float("nan")
        return out

    engine.forward_backward, engine.optimizer_step = fb, opt_step


def faulty(make_engine, spec: str):
    """``make_engine`` whose engines carry the fault ``KIND:RANK:STEP`` (for ``pretrain.trainer.make_engine``)."""
    kind, rank, step = spec.split(":")

    def make(*args, **kwargs):
        engine = make_engine(*args, **kwargs)
        _wrap(engine, kind, int(rank), int(step))
        return engine

    return make


if __name__ == "__main__":
    from pretrain.cli import main

    trainer_mod.make_engine = faulty(trainer_mod.make_engine, os.environ["BUDGETLM_FAULT"])
    sys.exit(main(sys.argv[1:]))
