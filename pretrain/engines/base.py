"""What every engine shares: launcher environment, determinism, optimizer groups, clipping, the interface.

An engine owns the model once it is wrapped (DDP, DeepSpeed, FSDP2), the optimizer, and the
checkpoint files of its own format. The trainer only calls the methods of :class:`Engine`.
"""
from __future__ import annotations

import abc
import gc
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
# These torch modules evaluate `group.WORLD` in default arguments when first imported. Imported
# after a process group exists, they would pin it for the life of the process (see
# shutdown_distributed); imported here, before any engine forms a group, they capture None.
import torch.distributed.fsdp  # noqa: F401, E402  (ShardedGradScaler)
import torch.distributed.nn  # noqa: F401, E402  (the autograd collectives)
import torch.distributed.optim  # noqa: F401, E402  (ZeroRedundancyOptimizer)

from pretrain import checkpoint as ckpt_io
from pretrain.config import TrainConfig
from pretrain.engines import weights

PG_TIMEOUT = timedelta(minutes=30)


def world_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the launcher's environment (1 process when absent)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_launch_env() -> None:
    """Let a plain `python -m pretrain train` (no launcher) form a one-process group."""
    for key, default in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, default)
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def resolve_precision(cfg: TrainConfig) -> str:
    if cfg.dist.precision == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return cfg.dist.precision


def resolve_backend(cfg: TrainConfig) -> str:
    if cfg.dist.backend != "auto":
        return cfg.dist.backend
    return "nccl" if torch.cuda.is_available() else "gloo"


def local_device() -> torch.device:
    if torch.cuda.is_available():
        device = torch.device("cuda", world_info()[1])
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def set_determinism(cfg: TrainConfig) -> bool:
    """Apply ``dist.deterministic`` (unset: on for CPU, off on CUDA, where it costs speed).

    On means enforced: an op without a deterministic kernel raises instead of warning. cuBLAS
    needs its workspace variable before its first call, and flash-attn its own flag (HF reads
    ``FLASH_ATTENTION_DETERMINISTIC``), since ``use_deterministic_algorithms`` does not reach it.
    """
    on = cfg.dist.deterministic
    if on is None:
        on = not torch.cuda.is_available()
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        os.environ["FLASH_ATTENTION_DETERMINISTIC"] = "1"
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on)
    return on


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """AdamW groups: weight decay on matrices only (norm gains, biases and 1-D params excluded)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if decay_norm_and_bias or p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def group_hyperparameters(cfg: TrainConfig) -> list[dict]:
    """Betas, eps and weight decay the config gives each group of :func:`make_optimizer`, in its order
    (decayed matrices first); the learning rate follows the schedule and is set every step."""
    o = cfg.optim
    common = {"betas": tuple(o.betas), "eps": o.eps}
    return [{**common, "weight_decay": o.weight_decay}, {**common, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    fused = torch.cuda.is_available() and next(model.parameters()).is_cuda
    return torch.optim.AdamW(param_groups(model, o.weight_decay, o.decay_norm_and_bias), lr=o.lr,
                             betas=tuple(o.betas), eps=o.eps, fused=fused or None)


def total_grad_norm(params) -> float:
    """Global L2 norm of the gradients (before clipping).

    Sharded (DTensor) gradients give a sharded norm: it is reduced over the mesh first, so every
    rank sees (and clips by) the same global value as a replicated model would.
    """
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], 2.0)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


class Engine(abc.ABC):
    """The interface the trainer uses; subclasses fill in wrapping, stepping and their checkpoint format.

    ``load`` refuses a checkpoint another engine wrote when optimizer state is wanted (each engine
    keeps it in its own layout), and loads only its weights otherwise.
    """

    name = ""
    rank: int
    world_size: int
    device: torch.device
    precision: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    grad_clip: float

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The HF model (parameters may be sharded or partitioned)."""
        return self.model

    @abc.abstractmethod
    def forward_backward(self, tokens: torch.Tensor, scale: float, sync: bool) -> torch.Tensor:
        """Loss of one micro-batch (labels = inputs, shifted inside the HF model); grads accumulate."""

    def grad_norm(self) -> float | None:
        """This step's global gradient norm before clipping, known before the step is applied; ``None``
        where the engine computes it inside its own step (DeepSpeed)."""
        return total_grad_norm(self.model.parameters())

    def optimizer_step(self, norm: float | None) -> float:
        """Clip by ``norm`` (from :meth:`grad_norm`), step, zero; returns the pre-clip global gradient norm."""
        if self.grad_clip > 0:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, torch.tensor(norm, dtype=torch.float32))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def skip_step(self) -> None:
        """Drop this step's gradients without applying them (optimizer state and weights stay as they are)."""
        self.optimizer.zero_grad(set_to_none=True)

    def local_parameters(self):
        """This rank's part of every parameter (what it holds of the weights it would save)."""
        for p in self.model.parameters():
            yield p.to_local() if hasattr(p, "to_local") else p

    def weights_finite(self) -> bool:
        """Whether this rank's part of the weights is finite (checked before any checkpoint is written)."""
        return all(bool(torch.isfinite(t).all()) for t in self.local_parameters() if t.numel())

    @property
    def optimizer_groups(self) -> list[dict]:
        """The torch optimizer's parameter groups (hyper-parameters as loaded or configured)."""
        return self.optimizer.param_groups

    @abc.abstractmethod
    def save(self, tmp: Path) -> list[str]:
        """Write this rank's part of the model and optimizer state under ``tmp`` (every rank calls it).

        Returns the paths, relative to ``tmp``, of the files this rank wrote.
        """

    @abc.abstractmethod
    def load_own(self, ckpt: Path, load_optimizer: bool) -> None:
        """Load a checkpoint this engine wrote."""

    @abc.abstractmethod
    def load_full_weights(self, state: dict[str, torch.Tensor], source: Path) -> None:
        """Load full (unsharded) weights into the wrapped model; ``source`` names them in errors."""

    def load(self, ckpt: Path, load_optimizer: bool) -> None:
        writer = ckpt_io.read_trainer_state(ckpt).get("engine")
        if writer == self.name:
            self.load_own(ckpt, load_optimizer)
        elif load_optimizer:
            raise ckpt_io.CheckpointError(weights.foreign_engine_message(ckpt, writer, self.name))
        else:
            self.load_full_weights(weights.read_full(ckpt), ckpt)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        t = value.detach().to(self.device).clone()
        if dist.is_initialized():
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not dist.is_initialized():
            return [obj]
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Keep the process group: a plan trains several runs in one launcher job."""


def shutdown_distributed() -> None:
    """Destroy every process group for good while the interpreter is whole (once, at process exit).

    gloo runs each group's collectives on worker threads, and a worker can be the last holder of a
    tensor created in Python (the loss, an evaluation sum): freeing it takes the GIL. A group that
    outlives this call keeps those threads running into interpreter finalization, where a thread
    asking for the GIL is terminated inside a noexcept destructor: std::terminate, "terminate called
    without an active exception", SIGABRT after training has ended. A group is only freed (its
    threads joined) when nothing references it, so the libraries' references go too: DeepSpeed's
    module-level groups through its own teardown, DTensor's caches (keyed by the device mesh, which
    holds the groups), reference cycles (DDP's hooks) by a collection.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    deepspeed_comm = sys.modules.get("deepspeed.comm")
    if deepspeed_comm is not None and deepspeed_comm.is_initialized():
        deepspeed_comm.destroy_process_group()
    else:
        dist.destroy_process_group()
    if "torch.distributed.tensor" in sys.modules:
        from torch.distributed.tensor._collective_utils import MeshTopoInfo
        from torch.distributed.tensor._redistribute import _gen_transform_infos, clear_redistribute_planner_cache
        from torch.distributed.tensor.debug import _clear_sharding_prop_cache

        _clear_sharding_prop_cache()
        clear_redistribute_planner_cache()
        MeshTopoInfo.build_from_mesh.cache_clear()
        _gen_transform_infos.cache_clear()
    gc.collect()
