"""Parallelism engines behind one interface (:class:`pretrain.engines.base.Engine`).

- ``accelerate``: DDP (plain, torchrun, `accelerate launch`); full weights on every rank.
- ``deepspeed``: ZeRO 1/2/3 (`deepspeed` launcher or torchrun).
- ``fsdp2``: ``fully_shard`` per decoder layer + root; sharded DCP checkpoints that reshard.

The trainer sees ``forward_backward``, ``optimizer_step``, ``save``/``load`` and the model; how
gradients are synchronised and where optimizer state lives stays in the engine's module.
"""
from __future__ import annotations

import os

from pretrain.config import ConfigError, DistConfig, TrainConfig

ENGINES = ("accelerate", "deepspeed", "fsdp2")


def resolve_engine(dist: DistConfig) -> str:
    """``auto``: DeepSpeed when a DeepSpeed config is given, FSDP2 under an accelerate FSDP2 launch, else DDP."""
    launcher_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if launcher_fsdp and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ConfigError("accelerate launched with FSDP version 1; this framework shards with FSDP2 "
                          "(fsdp_version: 2, as in configs/accelerate/fsdp2.yaml)")
    if dist.engine != "auto":
        if launcher_fsdp and dist.engine != "fsdp2":
            raise ConfigError(f"accelerate launched with an FSDP config but dist.engine={dist.engine}; "
                              "use dist.engine=fsdp2 (or auto), or another accelerate config")
        return dist.engine
    if dist.deepspeed_config:
        return "deepspeed"
    return "fsdp2" if launcher_fsdp else "accelerate"


def validate_dist(cfg: TrainConfig) -> None:
    """Engine choices a run cannot satisfy fail at config load (no torch import here)."""
    d = cfg.dist
    if d.engine not in ("auto", *ENGINES):
        raise ConfigError(f"dist.engine: {d.engine!r} is not one of auto, {', '.join(ENGINES)}")
    engine = resolve_engine(d)
    if d.cpu_offload and engine != "fsdp2":
        raise ConfigError(f"dist.cpu_offload is an FSDP2 option; this run uses the {engine} engine "
                          "(for DeepSpeed, offload in its JSON: configs/deepspeed/zero2-offload.json)")
    if engine == "deepspeed" and d.compile:
        raise ConfigError("dist.compile is applied by the accelerate and fsdp2 engines, not by deepspeed")
    if engine == "deepspeed" and cfg.model.activation_checkpointing and d.deepspeed_config:
        own = _deepspeed_json(d.deepspeed_config).get("activation_checkpointing") or {}
        if any(own.get(k) for k in DEEPSPEED_AC_KEYS):
            raise ConfigError(
                f"model.activation_checkpointing with {d.deepspeed_config}, whose activation_checkpointing section "
                f"sets {', '.join(k for k in DEEPSPEED_AC_KEYS if own.get(k))}: DeepSpeed applies those only to "
                "layers run through deepspeed.checkpointing, and the HF layers here are checkpointed by torch "
                "(non-reentrant), so they would silently do nothing; remove that section from the JSON")


# DeepSpeed's own activation checkpointing (deepspeed.checkpointing), configured in its JSON
DEEPSPEED_AC_KEYS = ("partition_activations", "cpu_checkpointing", "contiguous_memory_optimization",
                     "synchronize_checkpoint_boundary", "number_checkpoints")


def _deepspeed_json(path: str) -> dict:
    import json

    try:
        return json.loads(open(path).read())
    except FileNotFoundError:
        raise ConfigError(f"dist.deepspeed_config: file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"dist.deepspeed_config: {path} is not valid JSON ({e})") from None


def make_engine(cfg: TrainConfig, model_fn, accum_steps: int):
    """Set determinism, then build the engine; ``model_fn(device)`` returns the unwrapped model."""
    from pretrain.engines.base import set_determinism

    name = resolve_engine(cfg.dist)
    set_determinism(cfg)
    if name == "deepspeed":
        from pretrain.engines.deepspeed import DeepSpeedEngine

        return DeepSpeedEngine(cfg, model_fn, accum_steps)
    if name == "fsdp2":
        from pretrain.engines.fsdp2 import FSDP2Engine

        return FSDP2Engine(cfg, model_fn)
    from pretrain.engines.accelerate import AccelerateEngine

    return AccelerateEngine(cfg, model_fn)
