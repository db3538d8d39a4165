"""FSDP2: ``fully_shard`` on every decoder layer and on the root, sharded checkpoints with DCP.

Each rank holds 1/N of the parameters, gradients and Adam state; a layer's full weights exist
only while it runs (all-gather before, reduce-scatter of its gradients after). On GPU the
layers compute in bf16 and reduce gradients in fp32 over fp32 sharded parameters (the
mixed-precision policy); on CPU everything is fp32. ``dist.cpu_offload`` keeps the shards,
gradients and optimizer step in host memory.

Checkpoints go through ``torch.distributed.checkpoint``: every rank writes its own shards of the
model and optimizer state (``dcp/__R_0.distcp``), nobody gathers the full state, and a checkpoint
loads on any number of ranks (DCP reads each rank's new slice), so a run can change size.

Gradients are reduce-scattered after every micro-batch (``sync`` is not needed): accumulating
unsharded gradients instead would hold a full-size copy of them, which is what FSDP avoids.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.checkpoint import CheckpointError
from pretrain.config import TrainConfig
from pretrain.engines.base import PG_TIMEOUT, Engine, local_device, make_optimizer, \
    resolve_backend, resolve_precision, world_info
from pretrain.engines.weights import DCP_DIR, with_tied_head


def init_process_group(backend: str) -> None:
    """Join the launcher's group, or form a one-process group when started without a launcher."""
    if dist.is_initialized():
        return
    if "MASTER_ADDR" in os.environ or world_info()[2] > 1:
        dist.init_process_group(backend, timeout=PG_TIMEOUT)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=PG_TIMEOUT)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of an HF causal LM (Llama, OLMo-2: ``model.model.layers``)."""
    return list(model.model.layers)


class FSDP2Engine(Engine):
    name = "fsdp2"

    def __init__(self, cfg: TrainConfig, model_fn):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        self.device = local_device()  # before the group: NCCL binds to the current device
        init_process_group(resolve_backend(cfg))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.precision = resolve_precision(cfg)
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        # Built whole on the host, then each rank keeps (and moves to its device) only its shards.
        model = model_fn(torch.device("cpu"))
        layers = decoder_layers(model)
        if cfg.dist.compile:
            for layer in layers:  # per block, as torchtitan does: FSDP's hooks stay outside the graphs
                layer.compile()
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if self.precision == "bf16" else MixedPrecisionPolicy())
        offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cfg.dist.cpu_offload else OffloadPolicy()
        for layer in layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp, offload_policy=offload)
        fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload)
        self.model = model
        self.optimizer = make_optimizer(model, cfg)
        self.grad_clip = cfg.optim.grad_clip

    def forward_backward(self, tokens: torch.Tensor, scale: float, sync: bool) -> torch.Tensor:
        tokens = tokens.to(self.device)
        loss = self.model(input_ids=tokens, labels=tokens).loss
        (loss * scale).backward()
        return loss.detach()

    def _state(self, optimizer: bool) -> dict:
        """Sharded state dicts keyed by parameter name: the same keys whatever the number of ranks."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        state = {"model": get_model_state_dict(self.model)}
        if optimizer:
            state["optim"] = get_optimizer_state_dict(self.model, self.optimizer)
        return state

    def save(self, tmp: Path) -> list[str]:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(optimizer=True), checkpoint_id=str(tmp / DCP_DIR))
        mine = sorted(f"{DCP_DIR}/{p.name}" for p in (tmp / DCP_DIR).glob(f"__{self.rank}_*.distcp"))
        return mine + ([f"{DCP_DIR}/.metadata"] if self.rank == 0 else [])

    def load_own(self, ckpt: Path, load_optimizer: bool) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        if not (ckpt / DCP_DIR / ".metadata").is_file():
            raise CheckpointError(f"checkpoint {ckpt} lacks its sharded state ({DCP_DIR}/.metadata): it is partial")
        state = self._state(optimizer=load_optimizer)
        dcp.load(state, checkpoint_id=str(ckpt / DCP_DIR))
        set_model_state_dict(self.model, state["model"])
        if load_optimizer:
            set_optimizer_state_dict(self.model, self.optimizer, state["optim"])

    def load_full_weights(self, state: dict[str, torch.Tensor], source: Path) -> None:
        """Every rank reads the full weights and keeps its shards."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        try:
            set_model_state_dict(self.model, with_tied_head(state, self.model),
                                 options=StateDictOptions(full_state_dict=True))
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"{source} does not fit the model: {e}") from None
