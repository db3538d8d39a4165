"""What every rank agrees on once per optimizer step, in one collective, before the step is applied.

- **Non-finite values.** A rank whose loss, or whose view of the gradient norm, is not finite. The
  step is then not applied: the run stops with :class:`NonFiniteError`, or, with
  ``optim.skip_nonfinite: true``, the step's gradients are dropped and the skip is counted and
  logged. (DeepSpeed computes the norm inside its own step and skips a non-finite one itself, before
  applying it; the trainer treats that step the same way.)
- **Stop requests.** SIGTERM or SIGUSR1 on any rank (Slurm's preemption and its early warning,
  ``scancel``, a node drain, torchrun forwarding its own signal): every rank finishes the step, the
  checkpoint of that step is written, and the run exits with :data:`PREEMPTED_EXIT`.
- **Time-based checkpoints.** ``checkpoint.every_minutes`` by any rank's clock, so all save together.
"""
from __future__ import annotations

import math
import signal
import threading
from dataclasses import dataclass

import torch

PREEMPTED_EXIT = 75  # sysexits.h EX_TEMPFAIL: stopped early on request, checkpoint saved; run again to continue
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class NonFiniteError(RuntimeError):
    """A non-finite loss, gradient norm or weight; nothing non-finite was applied or saved."""


class Preempted(Exception):
    """The run stopped on a signal after saving the checkpoint of its current step."""

    def __init__(self, signals: str, step: int, checkpoint):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"stopped by {signals} at step {step}: checkpoint {checkpoint} is saved; "
                         f"continue with checkpoint.resume=auto (exit status {PREEMPTED_EXIT})")


class StopSignals:
    """Records SIGTERM / SIGUSR1 while training instead of dying; the loop reads it once per step.

    Installed only from the main thread (Python delivers signals there); the previous handlers
    come back on exit, so an in-process caller (tests, notebooks) keeps its own.
    """

    def __init__(self):
        self.received: signal.Signals | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


@dataclass
class Verdict:
    """What the ranks agreed on for one step (counts are numbers of ranks)."""

    loss: float  # mean of the ranks' losses
    nonfinite_loss: int
    nonfinite_norm: int
    signals: dict[str, int]  # signal name -> ranks that received it
    save_due: bool

    @property
    def nonfinite(self) -> bool:
        return bool(self.nonfinite_loss or self.nonfinite_norm)

    def stop_reason(self, world: int) -> str | None:
        got = [f"{name} on {n} of {world} rank{'s' if world > 1 else ''}" for name, n in self.signals.items() if n]
        return ", ".join(got) or None


def agree(engine, loss: torch.Tensor, norm: float | None, received: signal.Signals | None, save_due: bool) -> Verdict:
    """One all-reduce: the loss (for the log) and every rank's flags, before the step is applied."""
    flags = [loss.detach().float().reshape(()).cpu(),
             torch.tensor(float(not math.isfinite(float(loss)))),
             torch.tensor(float(norm is not None and not math.isfinite(norm)))]
    flags += [torch.tensor(float(received == s)) for s in STOP_SIGNALS] + [torch.tensor(float(save_due))]
    total = engine.sum(torch.stack(flags)).cpu().tolist()
    return Verdict(loss=total[0] / engine.world_size, nonfinite_loss=int(total[1]), nonfinite_norm=int(total[2]),
                   signals={s.name: int(n) for s, n in zip(STOP_SIGNALS, total[3:3 + len(STOP_SIGNALS)])},
                   save_due=total[-1] > 0)


def where_nonfinite(engine, loss: torch.Tensor, norm: float | None) -> str:
    """Which ranks saw what (a second collective, only on this rare path): 'loss nan on rank 1'."""
    seen = engine.gather((float(loss), norm))
    parts = []
    for what, values in (("loss", [v[0] for v in seen]), ("gradient norm", [v[1] for v in seen])):
        bad = [(r, v) for r, v in enumerate(values) if v is not None and not math.isfinite(v)]
        if bad:
            ranks = ", ".join(str(r) for r, _ in bad)
            parts.append(f"{what} {bad[0][1]} on rank{'s' if len(bad) > 1 else ''} {ranks}")
    return "non-finite " + " and ".join(parts)
