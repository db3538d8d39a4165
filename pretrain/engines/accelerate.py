"""DDP through accelerate: one process, torchrun and `accelerate launch` alike.

Every rank holds the whole model, its gradients and the Adam state; rank 0 writes them as
``model.safetensors`` + ``optimizer.pt``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from pretrain.checkpoint import CheckpointError
from pretrain.config import TrainConfig
from pretrain.engines.base import PG_TIMEOUT, Engine, make_optimizer, resolve_backend, \
    resolve_precision, world_info
from pretrain.engines.weights import MODEL_FILE, OPTIM_FILE, load_into, save_safetensors


class AccelerateEngine(Engine):
    name = "accelerate"

    def __init__(self, cfg: TrainConfig, model_fn):
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        cuda = torch.cuda.is_available()
        self.precision = resolve_precision(cfg)
        distributed = world_info()[2] > 1
        self.accelerator = Accelerator(
            cpu=not cuda,
            mixed_precision="bf16" if self.precision == "bf16" else "no",
            kwargs_handlers=[InitProcessGroupKwargs(backend=resolve_backend(cfg), timeout=PG_TIMEOUT)] if distributed else None,
        )
        acc = self.accelerator
        self.rank, self.world_size, self.device = acc.process_index, acc.num_processes, acc.device
        model = model_fn(self.device)
        if cfg.dist.compile:
            model = torch.compile(model)
        optimizer = make_optimizer(model, cfg)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.grad_clip = cfg.optim.grad_clip

    @property
    def unwrapped(self) -> torch.nn.Module:
        """Under DDP (``.module``) and torch.compile (``._orig_mod``). Not accelerate's unwrap_model:
        it imports DeepSpeed, whose import would pin the process group (see shutdown_distributed)."""
        model = getattr(self.model, "module", self.model)
        return getattr(model, "_orig_mod", model)

    @property
    def _inner_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer inside accelerate's wrapper (its state_dict is the portable one)."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def forward_backward(self, tokens: torch.Tensor, scale: float, sync: bool) -> torch.Tensor:
        ctx = contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model)
        tokens = tokens.to(self.device)
        with ctx, self.accelerator.autocast():
            loss = self.model(input_ids=tokens, labels=tokens).loss
            self.accelerator.backward(loss * scale)
        return loss.detach()

    def save(self, tmp: Path) -> list[str]:
        """Model and optimizer are replicated under DDP: rank 0 writes both."""
        if self.rank != 0:
            return []
        save_safetensors(self.unwrapped.state_dict(), self.unwrapped, tmp / MODEL_FILE)
        torch.save(self._inner_optimizer.state_dict(), tmp / OPTIM_FILE)
        return [MODEL_FILE, OPTIM_FILE]

    def load_own(self, ckpt: Path, load_optimizer: bool) -> None:
        self.load_full_weights(load_file(str(ckpt / MODEL_FILE)), ckpt / MODEL_FILE)
        if load_optimizer:
            f = ckpt / OPTIM_FILE
            if not f.is_file():
                raise CheckpointError(f"checkpoint {ckpt} has no optimizer state ({OPTIM_FILE}); cannot continue training from it")
            self._inner_optimizer.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))

    def load_full_weights(self, state: dict[str, torch.Tensor], source: Path) -> None:
        load_into(self.unwrapped, state, source)
