"""Fault injection for tests: a non-finite value on one rank at one optimizer step, in any engine.

``BUDGETLM_FAULT=KIND:RANK:STEP`` with ``python -m tests.faults train ...`` (like ``-m pretrain``), or
:func:`inject` in-process. STEP is the trainer's step number (1 = the first), also after a resume. Kinds:

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

_now = {"step": 0}  # the step the trainer is taking


def _wrap(engine, kind: str, rank: int, step: int) -> None:
    if engine.rank != rank:
        return
    forward_backward, optimizer_step = engine.forward_backward, engine.optimizer_step

    def hook(module, args, output):
        if kind == "grad" and _now["step"] == step and output.requires_grad:
            output.register_hook(lambda g: g * float("inf"))

    engine.unwrapped.model.norm.register_forward_hook(hook)

    def fb(tokens, scale, sync):
        loss = forward_backward(tokens, scale, sync)
        return loss * float("nan") if kind == "loss" and _now["step"] == step else loss

    def opt_step(norm):
        out = optimizer_step(norm)
        if kind == "weights" and _now["step"] == step:
            with torch.no_grad():
                next(engine.local_parameters()).view(-1)[0] = float("nan")
        return out

    engine.forward_backward, engine.optimizer_step = fb, opt_step


def inject(spec: str, setattr_=setattr) -> None:
    """Give every engine the trainer builds from now on the fault ``KIND:RANK:STEP`` (pass pytest's
    ``monkeypatch.setattr`` to undo it after the test)."""
    kind, rank, step = spec.split(":")
    make_engine, train_step = trainer_mod.make_engine, trainer_mod.Trainer._train_step

    def make(*args, **kwargs):
        engine = make_engine(*args, **kwargs)
        _wrap(engine, kind, int(rank), int(step))
        return engine

    def counted_step(self, stops):
        _now["step"] = self.step + 1
        return train_step(self, stops)

    setattr_(trainer_mod, "make_engine", make)
    setattr_(trainer_mod.Trainer, "_train_step", counted_step)


if __name__ == "__main__":
    from pretrain.cli import main

    inject(os.environ["BUDGETLM_FAULT"])
    sys.exit(main(sys.argv[1:]))
