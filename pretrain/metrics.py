"""Metrics sinks: ``metrics.jsonl`` (the record resume and prediction read), tqdm, wandb.

wandb runs offline unless the config says otherwise, so a machine without network never waits
on it; ``disabled`` skips it entirely.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from tqdm.auto import tqdm

# Dense bf16 peak FLOP/s per device, for MFU (vendor datasheets).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L40S": 362e12, "L4": 121e12,
                  "4090": 165e12, "3090": 71e12, "V100": 125e12}


def gpu_peak_flops(override: float = 0.0) -> float:
    if override:
        return override
    import torch

    if not torch.cuda.is_available():
        return 0.0
    name = torch.cuda.get_device_name()
    for key, flops in GPU_PEAK_FLOPS.items():
        if key in name:
            return flops
    return 0.0


def _records(path: Path) -> list[tuple[str, dict]]:
    """(line, record) pairs; a line torn by a crash mid-write is skipped."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            continue
    return out


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    return [rec for _, rec in _records(p) if kind is None or rec.get("type") == kind]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records after ``step``: on resume those steps are recomputed and logged again."""
    if not path.is_file():
        return
    keep = [line for line, rec in _records(path) if rec.get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


class MetricsLogger:
    """Rank 0 appends JSON lines, mirrors them to wandb and shows a tqdm bar."""

    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int, start_step: int, wandb_mode: str,
                 wandb_project: str, config: dict, progress: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._file = open(self.path, "a") if enabled else None
        self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                         disable=not (enabled and progress))
        self._wandb = None
        if enabled and wandb_mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(project=wandb_project, name=run_dir.name, dir=str(run_dir), mode=wandb_mode,
                                     config=config, reinit="finish_previous")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({f"{record['type']}/{k}": v for k, v in clean.items() if k not in ("type", "step")},
                            step=record["step"])
        if record["type"] == "train":
            self._bar.update(record["step"] - self._bar.n)
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                  tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
        elif record["type"] == "eval":
            self._bar.write(f"step {record['step']}: val_loss {record['val_loss']:.4f}")

    def close(self) -> None:
        if self._file:
            self._file.close()
        self._bar.close()
        if self._wandb is not None:
            self._wandb.finish()
