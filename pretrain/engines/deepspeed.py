"""DeepSpeed ZeRO 1/2/3 (`deepspeed` launcher or torchrun) with a torch AdamW (no fused-op compile on first use).

Checkpoints hold DeepSpeed's own partitioned files under ``ds/`` (all ranks) and the full
weights as ``model.safetensors`` for export (ZeRO-3 gathers them collectively to write it).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch

from pretrain.checkpoint import CheckpointError
from pretrain.config import ConfigError, TrainConfig
from pretrain.engines.base import PG_TIMEOUT, Engine, default_launch_env, local_device, make_optimizer, \
    resolve_backend, resolve_precision, world_info
from pretrain.engines.weights import MODEL_FILE, load_into, save_safetensors

DS_DIR, DS_TAG = "ds", "state"


class DeepSpeedEngine(Engine):
    name = "deepspeed"

    def __init__(self, cfg: TrainConfig, model_fn, accum_steps: int):
        if not cfg.dist.deepspeed_config:
            raise ConfigError("dist.engine=deepspeed needs dist.deepspeed_config (e.g. configs/deepspeed/zero2.json)")
        path = Path(cfg.dist.deepspeed_config)
        if not path.is_file():
            raise ConfigError(f"dist.deepspeed_config: file not found: {path}")
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        default_launch_env()
        import deepspeed

        deepspeed.init_distributed(dist_backend=resolve_backend(cfg), timeout=PG_TIMEOUT)
        self.rank, _, self.world_size = world_info()
        self.device = local_device()
        self.precision = resolve_precision(cfg)
        ds = json.loads(path.read_text())
        b = cfg.budget
        ds.update({
            "train_batch_size": b.global_batch_size,
            "train_micro_batch_size_per_gpu": b.micro_batch_size,
            "gradient_accumulation_steps": accum_steps,
            "gradient_clipping": cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else 0.0,
            "bf16": {"enabled": self.precision == "bf16"},
            "fp16": {"enabled": False},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        })
        self.stage = int(ds.get("zero_optimization", {}).get("stage", 0))
        model = model_fn(self.device)
        optimizer = make_optimizer(model, cfg)
        self.model, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.model.module

    def forward_backward(self, tokens: torch.Tensor, scale: float, sync: bool) -> torch.Tensor:
        """DeepSpeed divides by its own accumulation count and syncs at the boundary itself."""
        tokens = tokens.to(self.device)
        loss = self.model(input_ids=tokens, labels=tokens).loss
        self.model.backward(loss)
        self.model.step()  # a no-op for the optimizer except at the accumulation boundary
        return loss.detach()

    def optimizer_step(self) -> float:
        """The step itself ran at the boundary micro-batch (clipped by DeepSpeed); report its pre-clip norm."""
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def _gathered(self, modifier_rank: int | None = None):
        """Full parameters inside the block under ZeRO-3 (a collective); nothing to do below it."""
        import deepspeed

        if self.stage != 3:
            return contextlib.nullcontext()
        return deepspeed.zero.GatheredParameters(list(self.unwrapped.parameters()), modifier_rank=modifier_rank)

    def save(self, tmp: Path) -> list[str]:
        """DeepSpeed's own partitioned files under ds/ (all ranks) plus full weights for export (rank 0)."""
        with self._gathered():
            state = ({k: v.detach().to("cpu", torch.float32).clone() for k, v in self.unwrapped.state_dict().items()}
                     if self.rank == 0 else None)
        self.model.save_checkpoint(str(tmp / DS_DIR), tag=DS_TAG, save_latest=False)
        if self.rank == 0:
            save_safetensors(state, self.unwrapped, tmp / MODEL_FILE)
        self.barrier()  # every rank's part is on disk: attribute them by DeepSpeed's file names
        files = sorted(p.relative_to(tmp).as_posix() for p in (tmp / DS_DIR).rglob("*") if p.is_file())
        partitioned = [f for f in files if "zero_pp_rank_" in f]
        mine = [f for f in partitioned if f"zero_pp_rank_{self.rank}_" in f]
        return mine + ([f for f in files if f not in partitioned] + [MODEL_FILE] if self.rank == 0 else [])

    def load_own(self, ckpt: Path, load_optimizer: bool) -> None:
        if not (ckpt / DS_DIR / DS_TAG).is_dir():
            raise CheckpointError(f"checkpoint {ckpt} lacks DeepSpeed's state ({DS_DIR}/{DS_TAG}): it is partial")
        self.model.load_checkpoint(str(ckpt / DS_DIR), tag=DS_TAG, load_optimizer_states=load_optimizer,
                                   load_lr_scheduler_states=False, load_module_strict=True)

    def load_full_weights(self, state: dict[str, torch.Tensor], source: Path) -> None:
        """Into the module, then into ZeRO's fp32 master copy (which the next step would otherwise restore)."""
        with self._gathered(modifier_rank=0):
            if self.stage != 3 or self.rank == 0:
                load_into(self.unwrapped, state, source)
        if hasattr(self.optimizer, "refresh_fp32_params"):
            self.optimizer.refresh_fp32_params()

    def close(self) -> None:
        """Release DeepSpeed's hooks and buffers: they reference the engine (and through it its process
        groups) from autograd, where Python's collector cannot reach, so nothing else would free them.
        Enough under ZeRO-1/2; under ZeRO-3 (DeepSpeed 0.19) the partitioned parameters still keep the
        engine, and its groups, alive until the process exits."""
        self.model.destroy()
