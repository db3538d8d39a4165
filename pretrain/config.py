"""Typed run configuration: YAML in, dotted ``key=value`` overrides, validated before any work.

Every section is a dataclass; unknown keys and wrong types fail at load time with the dotted
name of the offending key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration problem the user must fix; the message names the key."""


@dataclass
class ModelConfig:
    family: str = "llama"  # llama | olmo2
    vocab_size: int = 0  # 0 = the tokenizer's vocabulary from the data manifest, rounded up to 64
    hidden_size: int = 256
    intermediate_size: int = 688
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    attn_impl: str = "auto"  # auto | eager | sdpa | flash_attention_2
    activation_checkpointing: bool = False  # recompute each decoder layer in backward (non-reentrant)


@dataclass
class DataConfig:
    manifest: str = ""  # path to a data_select manifest.json
    seq_len: int = 256
    seed: int = 0
    ledger: bool = False  # record consumed sequence ids (tests / audits)
    order: str = "feistel"  # feistel (computed per position) | permutation (O(N) per rank; runs started before feistel)


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_norm_and_bias: bool = False
    grad_clip: float = 1.0  # <= 0 disables clipping


@dataclass
class ScheduleConfig:
    """LR multiplier schedule; ``params`` holds the schedule-specific keys (phi, decay_steps, ...).

    In YAML the specific keys sit flat next to ``name``: ``{name: uba, phi: 1.0, warmup_steps: 100}``.
    """

    name: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    params: dict = field(default_factory=dict)

    def kwargs(self) -> dict:
        return {"warmup_steps": self.warmup_steps, "min_lr_ratio": self.min_lr_ratio, **self.params}


@dataclass
class BudgetConfig:
    """Training budget in exactly one unit, and the batch that spends it.

    Units (``UNITS``): ``tokens``; optimizer ``steps``; ``epochs``, a fraction in (0, 1] of one
    epoch of the data manifest's train split, so the budget follows the data it gets and never
    asks for a second epoch; training ``flops``, counted as the trainer counts them (6·N_non-embedding
    + 12·L·d·T per token). ``pretrain.budget.to_steps`` turns any of them into steps.
    """

    UNITS: typing.ClassVar[tuple[str, ...]] = ("tokens", "steps", "epochs", "flops")

    tokens: int | None = None
    steps: int | None = None
    epochs: float | None = None
    flops: float | None = None
    global_batch_size: int = 8  # sequences per optimizer step, over all ranks
    micro_batch_size: int = 8  # sequences per forward pass on one rank
    budgets: list[int | float] = field(default_factory=list)  # multi-budget plans, in the unit of the budget
    stop_at: int | None = None  # optimizer step to stop at early; the schedule still spans the whole budget

    def given(self) -> list[str]:
        """The units this budget is stated in (valid configs: exactly one)."""
        return [u for u in self.UNITS if getattr(self, u) is not None]

    def set_steps(self, steps: int) -> None:
        """Restate the budget as ``steps`` optimizer steps, clearing the other units and the plan."""
        for unit in self.UNITS:
            setattr(self, unit, None)
        self.steps, self.budgets = steps, []


@dataclass
class CheckpointConfig:
    every: int = 0  # optimizer steps; 0 = only at the end
    keep_last: int = 3
    at_steps: list[int] = field(default_factory=list)  # also save here and never prune (branch points)
    resume: str = "none"  # none | auto | PATH
    save_final: bool = True


@dataclass
class InitConfig:
    """Start from an existing checkpoint (branching). Not a resume: the run directory is new."""

    checkpoint: str = ""
    load_optimizer: bool = True
    load_data_state: bool = True


@dataclass
class EvalConfig:
    every: int = 0  # optimizer steps; 0 = only at the end
    batches: int = 8  # micro-batches of the validation split per evaluation (0 = all)


@dataclass
class LoggingConfig:
    log_every: int = 1
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_project: str = "budgetlm"
    progress: bool = True


@dataclass
class DistConfig:
    engine: str = "auto"  # auto | accelerate | deepspeed | fsdp2
    deepspeed_config: str = ""  # path to a DeepSpeed JSON (ZeRO stage etc.)
    backend: str = "auto"  # auto | gloo | nccl
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    deterministic: bool | None = None  # null = on for CPU, off on CUDA (slower there); true is enforced
    cpu_offload: bool = False  # fsdp2: shards, gradients and optimizer step in host memory
    gpu_peak_flops: float = 0.0  # per device, for MFU; 0 = look up by device name


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    init: InitConfig = field(default_factory=InitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    dist: DistConfig = field(default_factory=DistConfig)


# --------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting the harmless cases)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return _build(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):  # token counts are often written 50e9, which YAML 1.1 leaves a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    data = dict(data)
    if cls is ScheduleConfig:
        # schedule-specific keys sit flat beside `name`; they are validated by pretrain.schedules
        params = dict(data.pop("params", None) or {})
        for k in list(data):
            if k not in names:
                params[k] = data.pop(k)
        # `key=null` on the command line removes a parameter (e.g. when switching schedule)
        data["params"] = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        valid = ", ".join(sorted(names))
        raise ConfigError(f"unknown config key {where}{unknown[0]} (valid keys here: {valid})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], f"{prefix}.{f.name}" if prefix else f.name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """Plain-data view of a config (ScheduleConfig params flattened back beside ``name``)."""
    if isinstance(cfg, ScheduleConfig):
        return {"name": cfg.name, "warmup_steps": cfg.warmup_steps, "min_lr_ratio": cfg.min_lr_ratio, **cfg.params}
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, list):
        return [to_dict(v) for v in cfg]
    return cfg


# --------------------------------------------------------------------------- loading


def _resolve_include(value: str, kind: str, base: Path) -> dict:
    """``model: tiny`` -> configs/model/tiny.yaml; a path is read as given (relative to the file)."""
    candidates = [Path(value), base / value, CONFIGS_DIR / kind / f"{value}.yaml", CONFIGS_DIR / kind / value]
    for c in candidates:
        if c.is_file():
            return load_yaml(c)
    raise ConfigError(f"{kind}: no preset or file named {value!r} (looked in {CONFIGS_DIR / kind})")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def from_dict(data: dict, cls: type = TrainConfig, base: Path | None = None) -> Any:
    data = dict(data)
    base = base or Path.cwd()
    if isinstance(data.get("model"), str):
        data["model"] = _resolve_include(data["model"], "model", base)
    cfg = _build(cls, data)
    if cls is TrainConfig:
        validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = TrainConfig) -> Any:
    """Load a YAML config, apply dotted overrides, validate; all errors are ConfigError."""
    data: dict = {}
    base = Path.cwd()
    if path is not None:
        data = load_yaml(path)
        base = Path(path).resolve().parent
    if isinstance(data.get("model"), str):
        data["model"] = _resolve_include(data["model"], "model", base)
    data = apply_overrides(data, list(overrides or []))
    return from_dict(data, cls, base)


def validate(cfg: TrainConfig) -> None:
    m, b = cfg.model, cfg.budget
    positive = {"model.hidden_size": m.hidden_size, "model.num_layers": m.num_layers, "model.num_heads": m.num_heads,
                "model.num_kv_heads": m.num_kv_heads, "model.intermediate_size": m.intermediate_size,
                "logging.log_every": cfg.logging.log_every}
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{key} must be positive, got {v}")
    if cfg.data.seq_len < 2:
        raise ConfigError(f"data.seq_len must be at least 2 (inputs and their next tokens), got {cfg.data.seq_len}")
    if cfg.optim.lr < 0:
        raise ConfigError(f"optim.lr must be >= 0, got {cfg.optim.lr}")
    for key, v in (("eval.every", cfg.eval.every), ("eval.batches", cfg.eval.batches),
                   ("checkpoint.every", cfg.checkpoint.every), ("checkpoint.keep_last", cfg.checkpoint.keep_last),
                   ("model.vocab_size", m.vocab_size)):
        if v < 0:
            raise ConfigError(f"{key} must be >= 0, got {v}")
    if m.family not in ("llama", "olmo2"):
        raise ConfigError(f"model.family: {m.family!r} is not one of llama, olmo2")
    if m.attn_impl not in ("auto", "eager", "sdpa", "flash_attention_2"):
        raise ConfigError(f"model.attn_impl: {m.attn_impl!r} is not one of auto, eager, sdpa, flash_attention_2")
    if m.hidden_size % m.num_heads:
        raise ConfigError(f"model.hidden_size {m.hidden_size} is not divisible by model.num_heads {m.num_heads}")
    if m.num_heads % m.num_kv_heads:
        raise ConfigError(f"model.num_heads {m.num_heads} is not divisible by model.num_kv_heads {m.num_kv_heads}")
    if cfg.data.seq_len > m.max_seq_len:
        raise ConfigError(f"data.seq_len {cfg.data.seq_len} exceeds model.max_seq_len {m.max_seq_len}")
    _validate_budget(b)
    from pretrain.engines import validate_dist  # noqa: PLC0415  (engines know what they support)

    validate_dist(cfg)
    if cfg.dist.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"dist.precision: {cfg.dist.precision!r} is not one of auto, fp32, bf16")
    if cfg.logging.wandb_mode not in ("offline", "online", "disabled"):
        raise ConfigError(f"logging.wandb_mode: {cfg.logging.wandb_mode!r} is not one of offline, online, disabled")
    from pretrain.ordering import ORDERS  # noqa: PLC0415

    if cfg.data.order not in ORDERS:
        raise ConfigError(f"data.order: {cfg.data.order!r} is not one of {', '.join(ORDERS)}")
    from pretrain import schedules  # noqa: PLC0415  (schedules validate their own parameters)
    from pretrain.budget import resolvable, total_steps_of  # noqa: PLC0415

    # a budget stated against the data is resolved here when the data exists; otherwise the
    # budget-dependent schedule checks wait for the run (which cannot start without the data)
    total = total_steps_of(cfg) if resolvable(cfg) else None
    try:
        schedules.validate(cfg.schedule.name, total_steps=total, **cfg.schedule.kwargs())
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"schedule: {e}") from None


def _validate_budget(b: BudgetConfig) -> None:
    units = b.given()
    if len(units) != 1:
        named = " and ".join(f"budget.{u}" for u in units) + " are given together" if units else "no budget is given"
        raise ConfigError(f"budget: give exactly one of {', '.join(f'budget.{u}' for u in b.UNITS)} ({named})")
    unit = units[0]
    if unit == "epochs":
        if not 0 < b.epochs <= 1:
            raise ConfigError(f"budget.epochs must be in (0, 1], a fraction of one epoch of the data (more would "
                              f"repeat data), got {b.epochs}")
    elif not (getattr(b, unit) > 0 and math.isfinite(getattr(b, unit))):
        raise ConfigError(f"budget.{unit} must be positive, got {getattr(b, unit)}")
    for i, x in enumerate(b.budgets):
        if unit == "epochs" and not 0 < x <= 1:
            raise ConfigError(f"budget.budgets[{i}]: {x} is not a fraction of one epoch in (0, 1] (budget.epochs is set)")
        if unit != "epochs" and (not float(x).is_integer() or x <= 0):
            raise ConfigError(f"budget.budgets[{i}]: {x} is not a positive whole number of {unit} (budget.{unit} is set)")
    if b.global_batch_size <= 0 or b.micro_batch_size <= 0:
        raise ConfigError("budget.global_batch_size and budget.micro_batch_size must be positive")
    if any(x >= y for x, y in zip(b.budgets, b.budgets[1:])):
        raise ConfigError(f"budget.budgets must be strictly increasing, got {b.budgets}")


def save_config(cfg: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
