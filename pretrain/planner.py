"""Compute planner: what model and how many tokens a fixed compute budget buys (``pretrain budget``).

A published compute-optimal law (Hoffmann et al. 2022, "Chinchilla", approach 3; or its refit by
Besiroglu et al. 2024) gives the loss of N parameters trained on D tokens,

    L(N, D) = E + A / N^alpha + B / D^beta,   with training compute C = 6·N·D,

whose minimum over C = 6·N·D is (Hoffmann et al., eq. 4)

    N*(C) = G · (C/6)^(beta/(alpha+beta)),  D*(C) = (C/6) / N*(C),  G = (alpha·A / (beta·B))^(1/(alpha+beta)).

One epoch (Komatsuzaki 2019): data is never repeated, so D <= the unique tokens U. When D* > U
the cap binds and the planner compares (a) a larger model on all the data, N = C/(6U), which
spends the whole budget, with (b) less compute, the budget whose optimum uses exactly U tokens.
Under the law (a) always has the lower loss (the D term is the same, N is larger), so it is the
recommendation; (b) is printed with the compute it saves and the loss it costs. The recommended
parameter count is then mapped to a concrete Llama or OLMo-2 shape, and the token budget of that
shape is what the trainer's own FLOPs accounting (``pretrain.budget``) can afford.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from pretrain.config import ModelConfig
from pretrain.model import flops_per_token, param_counts


class PlannerError(ValueError):
    """A planner input that cannot be used; the message is one line naming the option."""


@dataclass(frozen=True)
class Law:
    """L(N, D) = E + A/N^alpha + B/D^beta with C = 6·N·D (N: all parameters, embeddings included)."""

    name: str
    source: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n: float, d: float) -> float:
        return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

    @property
    def _g(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def optimum(self, compute: float) -> tuple[float, float]:
        """(N*, D*) minimising L on C = 6·N·D."""
        n = self._g * (compute / 6.0) ** (self.beta / (self.alpha + self.beta))
        return n, compute / (6.0 * n)

    def compute_for_tokens(self, tokens: float) -> float:
        """The compute whose optimum trains on exactly ``tokens`` tokens (inverse of D*(C))."""
        # D* = (C/6)^(alpha/(alpha+beta)) / G  =>  C = 6 · (G · D)^((alpha+beta)/alpha)
        return 6.0 * (self._g * tokens) ** ((self.alpha + self.beta) / self.alpha)


# Constants as published: Hoffmann et al. 2022 (arXiv 2203.15556) eq. 10 / approach 3; Besiroglu et al.
# 2024 (arXiv 2404.10102) Table 1, refit of approach 3 on data reconstructed from Hoffmann et al.'s figures.
LAWS = {
    "besiroglu": Law("besiroglu", "Besiroglu et al. 2024, 'Chinchilla Scaling: A replication attempt' (arXiv 2404.10102), "
                     "refit of Hoffmann et al.'s approach 3; agrees with their approaches 1-2 (~20 tokens/parameter)",
                     E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658),
    "hoffmann": Law("hoffmann", "Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models' (arXiv 2203.15556), "
                    "approach 3 (eq. 10); gives smaller models than their approaches 1-2",
                    E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
}
DEFAULT_LAW = "besiroglu"


# --------------------------------------------------------------------------- inputs


def positive_number(option: str, text: str | float) -> float:
    """``text`` as a finite positive float, or a PlannerError naming ``option``."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise PlannerError(f"{option}: {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise PlannerError(f"{option}: must be a positive number, got {text!r}")
    return value


def gpu_peak_flops(gpu: str) -> float:
    """Dense bf16 peak FLOP/s of a GPU type (the table the trainer's MFU uses)."""
    from pretrain.metrics import GPU_PEAK_FLOPS

    for name, peak in GPU_PEAK_FLOPS.items():
        if gpu.upper() == name.upper():
            return peak
    raise PlannerError(f"--gpu: unknown GPU type {gpu!r}; known: {', '.join(GPU_PEAK_FLOPS)}")


def compute_from_gpu_hours(hours: str | float, gpu: str, mfu: str | float) -> tuple[float, str]:
    """(FLOPs, how they were obtained) for ``hours`` GPU-hours of ``gpu`` at model FLOPs utilisation ``mfu``."""
    h = positive_number("--gpu-hours", hours)
    peak = gpu_peak_flops(gpu)
    try:
        u = float(mfu)
    except (TypeError, ValueError):
        raise PlannerError(f"--mfu: {mfu!r} is not a number") from None
    if not 0 < u <= 1:
        raise PlannerError(f"--mfu: a utilisation must lie in (0, 1], got {mfu!r}")
    return h * 3600 * peak * u, f"{h:g} GPU-hours x {gpu.upper()} {peak:.4g} FLOP/s (dense bf16 peak) x MFU {u:g} (assumed)"


def manifest_tokens(path: str) -> tuple[int, int]:
    """(train tokens, tokenizer vocabulary) of a data_select manifest: one epoch of the data."""
    import json
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    try:
        m = json.loads(p.read_text())
        return int(m["splits"]["train"]["tokens"]), int(m["tokenizer"]["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PlannerError(f"--manifest: {p} is not a readable data_select manifest ({type(e).__name__}: {e})") from None


DEFAULT_VOCAB = 32000  # TinyLlama's, when neither --vocab-size nor --manifest gives one


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Family:
    """Shape rules of a model family, read off its reference model."""

    name: str
    reference: str
    head_dim: int
    kv_group: int  # query heads per KV head (1 = full multi-head attention)
    mlp_ratio: float  # intermediate / hidden
    aspect: float  # hidden / layers


FAMILIES = {
    # TinyLlama-1.1B: 22 layers, d 2048, 32 heads of 64, 4 KV heads, MLP 5632 = 2.75 d
    "llama": Family("llama", "TinyLlama-1.1B", head_dim=64, kv_group=8, mlp_ratio=2.75, aspect=2048 / 22),
    # OLMo-2 1B: 16 layers, d 2048, 16 heads of 128, full MHA, MLP 8192 = 4 d
    "olmo2": Family("olmo2", "OLMo-2 1B", head_dim=128, kv_group=1, mlp_ratio=4.0, aspect=2048 / 16),
}
SHAPE_TOLERANCE = 0.05  # shapes within this relative distance of N compete on aspect ratio


WIDTH_STEP = 128  # hidden sizes are multiples of this (whole heads of 64 or 128; tensor-core friendly)


def _shape(family: Family, layers: int, hidden: int, vocab: int, seq_len: int) -> ModelConfig:
    heads = hidden // family.head_dim
    kv = max(1, heads // family.kv_group)
    while heads % kv:  # the most KV heads that divide the query heads, at most heads / kv_group
        kv -= 1
    multiple = max(32, min(256, hidden // 2))
    inter = multiple * math.ceil(family.mlp_ratio * hidden / multiple)
    return ModelConfig(family=family.name, vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                       num_layers=layers, num_heads=heads, num_kv_heads=kv, max_seq_len=seq_len)


def shape_for(params: float, *, family: str = "llama", vocab_size: int = 32000, seq_len: int = 2048) -> ModelConfig:
    """A model of ``family`` with about ``params`` parameters (embeddings included).

    For every depth, the widths nearest in parameters are taken, both among multiples of
    WIDTH_STEP and among widths whose heads group evenly into the family's KV heads. Among the
    shapes within SHAPE_TOLERANCE of ``params``, even grouping wins, then the hidden/layers ratio
    nearest (in log) to the reference model's; if none is that close, the nearest in parameters.
    """
    if family not in FAMILIES:
        raise PlannerError(f"--family: unknown family {family!r}; known: {', '.join(FAMILIES)}")
    fam = FAMILIES[family]
    even = math.lcm(WIDTH_STEP, fam.head_dim * fam.kv_group)

    def size(layers: int, width: int) -> int:
        return param_counts(_shape(fam, layers, width, vocab_size, seq_len), vocab_size)[0]

    candidates: list[tuple[float, bool, float, ModelConfig]] = []
    for layers in range(1, 257):
        for step in (WIDTH_STEP, even):
            lo, hi = 1, 1
            while size(layers, hi * step) < params and hi < 2 ** 12:
                lo, hi = hi, hi * 2
            while lo < hi:  # smallest multiple of `step` with at least `params`
                mid = (lo + hi) // 2
                if size(layers, mid * step) < params:
                    lo = mid + 1
                else:
                    hi = mid
            for k in {max(1, lo - 1), lo}:
                cfg = _shape(fam, layers, k * step, vocab_size, seq_len)
                miss = abs(math.log(size(layers, k * step) / params))
                uneven = cfg.num_heads >= fam.kv_group and cfg.num_heads != cfg.num_kv_heads * fam.kv_group
                candidates.append((miss, uneven, abs(math.log(cfg.hidden_size / layers / fam.aspect)), cfg))
    close = [c for c in candidates if c[0] <= math.log1p(SHAPE_TOLERANCE)]
    if close:
        return min(close, key=lambda c: (c[1], c[2], c[0]))[3]
    return min(candidates, key=lambda c: c[0])[3]


# --------------------------------------------------------------------------- plan


@dataclass
class Option:
    label: str
    params: float
    tokens: float
    flops: float
    loss: float

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params


@dataclass
class Plan:
    compute: float
    compute_source: str
    law: Law
    unique_tokens: float | None
    optimum: Option  # the law's compute-optimal point, ignoring the data
    options: list[Option]  # what the budget allows within one epoch (1, or 2 when the cap binds)
    recommended: Option
    binds: bool
    family: str
    vocab_size: int
    seq_len: int
    shape: ModelConfig
    shape_params: int
    flops_per_token: float  # the trainer's, for the shape
    train_tokens: int  # what the shape's FLOPs allow, capped at one epoch
    reasons: list[str] = field(default_factory=list)

    @property
    def train_flops(self) -> float:
        return self.flops_per_token * self.train_tokens

    def to_dict(self) -> dict:
        m = self.shape
        return {
            "compute_flops": self.compute, "compute_source": self.compute_source,
            "law": asdict(self.law), "unique_tokens": self.unique_tokens, "data_cap_binds": self.binds,
            "compute_optimal": {**asdict(self.optimum), "tokens_per_param": self.optimum.tokens_per_param},
            "options": [{**asdict(o), "tokens_per_param": o.tokens_per_param} for o in self.options],
            "recommended": self.recommended.label, "reasons": self.reasons,
            "shape": {"family": m.family, "num_layers": m.num_layers, "hidden_size": m.hidden_size,
                      "num_heads": m.num_heads, "num_kv_heads": m.num_kv_heads,
                      "intermediate_size": m.intermediate_size, "vocab_size": m.vocab_size, "seq_len": self.seq_len,
                      "params": self.shape_params},
            "trainer_flops_per_token": self.flops_per_token, "train_tokens": self.train_tokens,
            "train_flops": self.train_flops,
        }


def make_plan(compute: float, *, unique_tokens: float | None = None, law: str = DEFAULT_LAW, family: str = "llama",
              vocab_size: int = 32000, seq_len: int = 2048, compute_source: str = "") -> Plan:
    """The law's recommendation for ``compute`` FLOPs under the one-epoch cap, and its shape."""
    if law not in LAWS:
        raise PlannerError(f"--law: unknown law {law!r}; known: {', '.join(LAWS)}")
    compute = positive_number("compute", compute)
    if unique_tokens is not None:
        unique_tokens = positive_number("unique tokens", unique_tokens)
    lw = LAWS[law]
    n, d = lw.optimum(compute)
    optimum = Option("compute-optimal", n, d, compute, lw.loss(n, d))
    binds = unique_tokens is not None and d > unique_tokens
    reasons = []
    if not binds:
        options = [optimum]
        recommended = optimum
        if unique_tokens is not None:
            reasons.append(f"the data does not bind: D* is {100 * d / unique_tokens:.1f}% of one epoch")
    else:
        u = unique_tokens
        larger = Option("(a) larger model on all the data", compute / (6 * u), u, compute, lw.loss(compute / (6 * u), u))
        c_b = lw.compute_for_tokens(u)
        n_b = c_b / (6 * u)
        less = Option("(b) less compute (optimal for one epoch)", n_b, u, c_b, lw.loss(n_b, u))
        options = [larger, less]
        recommended = larger
        reasons.append(f"one epoch binds: D* = {d:.3g} tokens is {d / u:.2f} epochs of the {u:.3g} unique tokens")
        reasons.append(f"(a) has the lowest predicted loss within the budget ({larger.loss:.4f} vs {less.loss:.4f}); "
                       f"(b) saves {100 * (1 - c_b / compute):.0f}% of the compute for +{less.loss - larger.loss:.4f} loss")
    shape = shape_for(recommended.params, family=family, vocab_size=vocab_size, seq_len=seq_len)
    total, non_emb = param_counts(shape, vocab_size)
    fpt = flops_per_token(shape, non_emb, seq_len)
    tokens = int(min(compute / fpt, unique_tokens if unique_tokens is not None else math.inf))
    return Plan(compute, compute_source, lw, unique_tokens, optimum, options, recommended, binds, family, vocab_size,
                seq_len, shape, total, fpt, tokens, reasons)


def format_plan(plan: Plan) -> str:
    lw, m = plan.law, plan.shape
    lines = [f"compute: {plan.compute:.4g} FLOPs" + (f" = {plan.compute_source}" if plan.compute_source else ""),
             f"law: {lw.name}: {lw.source}",
             f"     L(N, D) = E + A/N^alpha + B/D^beta, E={lw.E:g} A={lw.A:g} B={lw.B:g} alpha={lw.alpha:g} "
             f"beta={lw.beta:g}; C = 6·N·D; losses are on the law's data (MassiveText), for comparing options",
             "data: " + (f"{plan.unique_tokens:.4g} unique tokens; one epoch at most (no token repeated)"
                         if plan.unique_tokens is not None else "no cap given (--unique-tokens or --manifest)")]
    header = f"  {'option':<42} {'parameters':>11} {'tokens':>10} {'tok/param':>9} {'FLOPs':>10} {'pred. loss':>10}"
    lines.append(header)

    def row(o: Option, note: str = "") -> str:
        return (f"  {o.label:<42} {o.params:>11.4g} {o.tokens:>10.4g} {o.tokens_per_param:>9.1f} {o.flops:>10.4g} "
                f"{o.loss:>10.4f}{note}")

    if plan.binds:
        lines.append(row(plan.optimum, f"  (needs {plan.optimum.tokens / plan.unique_tokens:.2f} epochs: not allowed)"))
    for o in plan.options:
        lines.append(row(o, "  <- recommended" if o is plan.recommended else ""))
    lines += [f"  {r}" for r in plan.reasons]
    ratio = plan.shape_params / plan.recommended.params - 1
    lines.append(f"shape ({m.family}, rules of {FAMILIES[m.family].reference}): {m.num_layers} layers, hidden "
                 f"{m.hidden_size}, {m.num_heads} heads, {m.num_kv_heads} KV heads, MLP {m.intermediate_size}, vocab "
                 f"{m.vocab_size}: {plan.shape_params:,} parameters ({100 * ratio:+.1f}% of N)")
    if abs(ratio) > 0.1:
        lines.append(f"  note: no {m.family} shape within 10% of N with a vocabulary of {m.vocab_size:,} (the input "
                     f"embedding alone holds {m.vocab_size * WIDTH_STEP:,} parameters at the narrowest width)")
    cap = " (one epoch)" if plan.unique_tokens is not None and plan.train_tokens >= int(plan.unique_tokens) else ""
    lines.append(f"trainer FLOPs: {plan.flops_per_token:.4g} per token at seq {plan.seq_len} (6·N_non-emb + 12·L·d·T) "
                 f"-> {plan.train_tokens:,} tokens{cap} = {plan.train_flops:.4g} FLOPs")
    return "\n".join(lines)


# --------------------------------------------------------------------------- config


def train_config(plan: Plan, *, template: dict, manifest: str | None, branches: list[float], decay_fraction: float,
                 batch_tokens: int, micro_batch: int, min_steps: int = 100, run_dir: str = "runs/planned") -> dict:
    """A train config (plain data, for YAML) for the plan: its shape, the token budget, a global batch of
    about ``batch_tokens`` (fewer when the run would otherwise take under ``min_steps`` steps), WSD with
    a 1-sqrt decay over ``decay_fraction`` of each budget, and ``budget.budgets`` at the fractions
    ``branches`` of the budget. ``template`` provides the optimizer, checkpoint, eval, logging and dist
    sections (a recipe of configs/train)."""
    if not 0 < decay_fraction < 1:
        raise PlannerError(f"--decay-fraction: must lie in (0, 1), got {decay_fraction}")
    fracs = sorted(set(branches))
    if not fracs or fracs[0] <= 0 or fracs[-1] > 1:
        raise PlannerError(f"--branches: fractions of the budget must lie in (0, 1], got {branches}")
    seq = plan.seq_len
    seqs = max(micro_batch, min(batch_tokens // seq, plan.train_tokens // (seq * min_steps)))
    seqs -= seqs % micro_batch
    if seqs <= 0:
        raise PlannerError(f"--micro-batch {micro_batch} x seq {seq} exceeds what {plan.train_tokens:,} tokens allow")
    per_step = seqs * seq
    steps = plan.train_tokens // per_step
    budgets = sorted({max(1, round(f * steps)) * per_step for f in fracs})
    smallest = budgets[0] // per_step
    if smallest < 4:
        raise PlannerError(f"--branches: the smallest budget ({smallest} steps) is too short for warm-up, stable and decay")
    warmup = max(1, min(int(template.get("schedule", {}).get("warmup_steps", 0) or steps // 100),
                        int(smallest * (1 - decay_fraction)) // 2))
    m = plan.shape
    cfg = {k: v for k, v in template.items() if k not in ("model", "schedule", "budget")}
    cfg["run_dir"] = run_dir
    cfg["model"] = {"family": m.family, "vocab_size": m.vocab_size, "hidden_size": m.hidden_size,
                    "intermediate_size": m.intermediate_size, "num_layers": m.num_layers, "num_heads": m.num_heads,
                    "num_kv_heads": m.num_kv_heads, "max_seq_len": seq, "tie_embeddings": False}
    cfg["data"] = {**template.get("data", {}), "seq_len": seq, "manifest": manifest or ""}
    cfg["schedule"] = {"name": "wsd", "warmup_steps": warmup, "decay_fraction": decay_fraction,
                       "decay_shape": "1-sqrt", "min_lr_ratio": 0.0}
    cfg["budget"] = {"tokens": budgets[-1], "budgets": budgets, "global_batch_size": seqs,
                     "micro_batch_size": micro_batch}
    return cfg
