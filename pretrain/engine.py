"""Parallelism engines behind one small interface: accelerate (plain, torchrun, `accelerate launch`)
and DeepSpeed ZeRO 1/2/3 (`deepspeed` launcher or torchrun).

The trainer sees ``forward_backward``, ``optimizer_step``, ``save``/``load`` and the unwrapped
model; how gradients are synchronised and where optimizer state lives stays in here.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pretrain.checkpoint import CheckpointError
from pretrain.config import ConfigError, TrainConfig

_OPTIM_FILE = "optimizer.pt"
_MODEL_FILE = "model.safetensors"


def world_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the launcher's environment (1 process when absent)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_precision(cfg: TrainConfig) -> str:
    if cfg.dist.precision == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return cfg.dist.precision


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """AdamW groups: weight decay on matrices only (norm gains, biases and 1-D params excluded)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if decay_norm_and_bias or p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    fused = torch.cuda.is_available() and next(model.parameters()).is_cuda
    return torch.optim.AdamW(param_groups(model, o.weight_decay, o.decay_norm_and_bias), lr=o.lr,
                             betas=tuple(o.betas), eps=o.eps, fused=fused or None)


def _unscaled_grad_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads, 2.0)


class AccelerateEngine:
    """DDP through accelerate: works for one process, torchrun and `accelerate launch` alike."""

    name = "accelerate"

    def __init__(self, cfg: TrainConfig, model_fn):
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        cuda = torch.cuda.is_available()
        backend = cfg.dist.backend if cfg.dist.backend != "auto" else ("nccl" if cuda else "gloo")
        precision = resolve_precision(cfg)
        distributed = world_info()[2] > 1
        self.accelerator = Accelerator(
            cpu=not cuda,
            mixed_precision="bf16" if precision == "bf16" else "no",
            kwargs_handlers=[InitProcessGroupKwargs(backend=backend, timeout=timedelta(minutes=30))] if distributed else None,
        )
        acc = self.accelerator
        self.rank, self.world_size, self.device = acc.process_index, acc.num_processes, acc.device
        self.precision = precision
        model = model_fn(self.device)
        if cfg.dist.compile:
            model = torch.compile(model)
        optimizer = make_optimizer(model, cfg)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.grad_clip = cfg.optim.grad_clip

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    @property
    def _inner_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer inside accelerate's wrapper (its state_dict is the portable one)."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def forward_backward(self, tokens: torch.Tensor, scale: float, sync: bool) -> torch.Tensor:
        """Loss of one micro-batch (labels = inputs, shifted inside the HF model); grads accumulate."""
        ctx = contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model)
        tokens = tokens.to(self.device)
        with ctx, self.accelerator.autocast():
            loss = self.model(input_ids=tokens, labels=tokens).loss
            self.accelerator.backward(loss * scale)
        return loss.detach()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def optimizer_step(self) -> float:
        """Clip, step, zero; returns the pre-clip global gradient norm."""
        params = list(self.model.parameters())
        if self.grad_clip > 0:
            norm = self.accelerator.clip_grad_norm_(params, self.grad_clip)
        else:
            norm = _unscaled_grad_norm(params)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def mean(self, value: torch.Tensor) -> float:
        return float(self.accelerator.reduce(value.to(self.device), "mean"))

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(value.to(self.device), "sum")

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def save(self, tmp: Path) -> None:
        """Model and optimizer are replicated under DDP: rank 0 writes both."""
        if self.rank == 0:
            save_model(self.unwrapped, tmp / _MODEL_FILE)
            torch.save(self._inner_optimizer.state_dict(), tmp / _OPTIM_FILE)

    def load(self, ckpt: Path, load_optimizer: bool) -> None:
        load_model(self.unwrapped, ckpt / _MODEL_FILE)
        if load_optimizer:
            f = ckpt / _OPTIM_FILE
            if not f.is_file():
                raise CheckpointError(f"checkpoint {ckpt} has no optimizer state ({_OPTIM_FILE}); cannot continue training from it")
            self._inner_optimizer.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))

    def close(self) -> None:
        """Keep the process group: a plan trains several runs in one launcher job."""


class DeepSpeedEngine:
    """DeepSpeed ZeRO 1/2/3 with a torch AdamW (no fused-op compile on first use)."""

    name = "deepspeed"

    def __init__(self, cfg: TrainConfig, model_fn, accum_steps: int):
        if not cfg.dist.deepspeed_config:
            raise ConfigError("dist.engine=deepspeed needs dist.deepspeed_config (e.g. configs/deepspeed/zero2.json)")
        path = Path(cfg.dist.deepspeed_config)
        if not path.is_file():
            raise ConfigError(f"dist.deepspeed_config: file not found: {path}")
        cuda = torch.cuda.is_available()
        if not cuda:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        for key, default in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(key, default)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        import deepspeed

        backend = cfg.dist.backend if cfg.dist.backend != "auto" else ("nccl" if cuda else "gloo")
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=30))
        self.rank, _, self.world_size = world_info()
        self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
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
        self.grad_clip = cfg.optim.grad_clip

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
        """The step itself ran at the boundary micro-batch; report its pre-clip norm."""
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def mean(self, value: torch.Tensor) -> float:
        t = value.detach().to(self.device, torch.float32).clone()
        torch.distributed.all_reduce(t)
        return float(t) / self.world_size

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        t = value.detach().to(self.device).clone()
        torch.distributed.all_reduce(t)
        return t

    def barrier(self) -> None:
        torch.distributed.barrier()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights on every rank (ZeRO-3 gathers its partitions; a collective call)."""
        if self.stage == 3:
            import deepspeed

            params = list(self.unwrapped.parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return {k: v.detach().to("cpu", torch.float32).clone() for k, v in self.unwrapped.state_dict().items()}
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.unwrapped.state_dict().items()}

    def save(self, tmp: Path) -> None:
        """DeepSpeed's own sharded files under ds/ (all ranks) plus full weights for export."""
        state = self.state_dict() if (self.stage == 3 or self.rank == 0) else None  # ZeRO-3 gathers collectively
        self.model.save_checkpoint(str(tmp / "ds"), tag="state", save_latest=False)
        if self.rank == 0:
            save_file(_dedup_shared(state, self.unwrapped), str(tmp / _MODEL_FILE))

    def load(self, ckpt: Path, load_optimizer: bool) -> None:
        if not (ckpt / "ds" / "state").is_dir():
            raise CheckpointError(f"checkpoint {ckpt} was not written by the DeepSpeed engine (no ds/state); "
                                  "continue it with the engine that wrote it, or export it and start a new run")
        self.model.load_checkpoint(str(ckpt / "ds"), tag="state", load_optimizer_states=load_optimizer,
                                   load_lr_scheduler_states=False, load_module_strict=True)

    def close(self) -> None:
        pass


def _dedup_shared(state: dict, model: torch.nn.Module) -> dict:
    """safetensors refuses aliased tensors: drop the tied LM head, HF re-ties it on load."""
    if getattr(model.config, "tie_word_embeddings", False):
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    return state


def save_model(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(_dedup_shared(state, model), str(path))


def load_model(model: torch.nn.Module, path: Path) -> None:
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def make_engine(cfg: TrainConfig, model_fn, accum_steps: int):
    engine = cfg.dist.engine
    if engine == "auto":
        engine = "deepspeed" if cfg.dist.deepspeed_config else "accelerate"
    if engine == "deepspeed":
        return DeepSpeedEngine(cfg, model_fn, accum_steps)
    return AccelerateEngine(cfg, model_fn)
