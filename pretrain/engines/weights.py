"""Full (unsharded) model weights in and out of every engine's checkpoint format.

Checkpoint layouts (all under ``step-NNNNNNNN/``, next to ``trainer.json``, which names the engine):

- accelerate: ``model.safetensors`` (full weights) + ``optimizer.pt`` (torch optimizer state)
- deepspeed:  ``model.safetensors`` + ``ds/state/`` (DeepSpeed's own, partitioned per rank)
- fsdp2:      ``dcp/`` (torch.distributed.checkpoint: one ``__R_0.distcp`` shard per rank plus
  ``.metadata``); model under ``model.*``, optimizer under ``optim.*``, keyed by parameter name

Export, evaluation and weights-only starts read any of them through :func:`read_full`.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pretrain.checkpoint import CheckpointError

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.pt"
DCP_DIR = "dcp"
TIED_HEAD, EMBEDDING = "lm_head.weight", "model.embed_tokens.weight"


def is_tied(model: torch.nn.Module) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False))


def dedup_tied(state: dict, model: torch.nn.Module) -> dict:
    """safetensors refuses aliased tensors: drop the tied LM head, HF re-ties it on load."""
    if is_tied(model):
        state = {k: v for k, v in state.items() if k != TIED_HEAD}
    return state


def save_safetensors(state: dict[str, torch.Tensor], model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(dedup_tied(state, model), str(path))


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load full weights into an unwrapped module; ``source`` names the file in the error."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == TIED_HEAD and is_tied(model))]
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def with_tied_head(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The inverse of :func:`dedup_tied`, for loaders that want every key."""
    if is_tied(model) and TIED_HEAD not in state and EMBEDDING in state:
        state = {**state, TIED_HEAD: state[EMBEDDING]}
    return state


def _dcp_load(state: dict, path: Path) -> None:
    """Read (part of) a DCP checkpoint in this process alone, whatever process group exists."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
        dcp.load(state, checkpoint_id=str(path), no_dist=True)


def read_dcp(path: Path, part: str = "model") -> dict[str, torch.Tensor]:
    """Consolidate the tensors of one part (``model`` or ``optim``) of a DCP checkpoint into full CPU
    tensors, keyed by their flattened names below it (one process, no group needed)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    prefix = part + "."
    tensors = {k[len(prefix):]: torch.empty(m.size, dtype=m.properties.dtype)
               for k, m in meta.items() if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
    if not tensors:
        raise CheckpointError(f"{path} holds no {part} state")
    state = {part: tensors}
    _dcp_load(state, path)
    return state[part]


def read_full(ckpt: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of any engine's checkpoint, on CPU."""
    ckpt = Path(ckpt)
    if (ckpt / MODEL_FILE).is_file():
        return load_file(str(ckpt / MODEL_FILE))
    if (ckpt / DCP_DIR / ".metadata").is_file():
        return read_dcp(ckpt / DCP_DIR)
    raise CheckpointError(f"checkpoint {ckpt} holds no model weights ({MODEL_FILE} or {DCP_DIR}/)")


def load_checkpoint_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """Fill an unwrapped model with the weights of any engine's checkpoint (export, eval)."""
    load_into(model, read_full(ckpt), ckpt)


def has_optimizer_state(ckpt: Path) -> bool:
    ckpt = Path(ckpt)
    return ((ckpt / OPTIM_FILE).is_file() or (ckpt / "ds" / "state").is_dir()
            or (ckpt / DCP_DIR / ".metadata").is_file())


def foreign_engine_message(ckpt: Path, writer: str | None, engine: str) -> str:
    return (f"checkpoint {ckpt} was written by the {writer or 'unknown'} engine and this run uses the {engine} "
            f"engine; optimizer state does not move between engines. Continue it with dist.engine={writer}, "
            f"or start a new run from its weights alone with init.checkpoint={ckpt} init.load_optimizer=false "
            f"(`pretrain export` also turns it into an HF model)")
