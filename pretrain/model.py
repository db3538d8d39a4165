"""Build HF Llama / OLMo-2 causal LMs from a ModelConfig; parameter and FLOP counts.

The model is a stock ``transformers`` class so that an export loads with no project code;
how it is parallelised (DDP, DeepSpeed ZeRO, FSDP2) is the engine's business, not this module's.
torch and transformers are imported where a model is built, so the counts (used by budget
arithmetic and the planner) cost no heavy import.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pretrain.config import ConfigError, ModelConfig

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig, Olmo2Config, PreTrainedModel


def _families() -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM, Olmo2Config, Olmo2ForCausalLM

    return {"llama": (LlamaConfig, LlamaForCausalLM), "olmo2": (Olmo2Config, Olmo2ForCausalLM)}


def resolve_vocab_size(cfg: ModelConfig, tokenizer_vocab: int | None) -> int:
    """``vocab_size: 0`` takes the tokenizer's size rounded up to 64 (tensor-core friendly)."""
    if cfg.vocab_size:
        if tokenizer_vocab is not None and tokenizer_vocab > cfg.vocab_size:
            raise ConfigError(
                f"model.vocab_size {cfg.vocab_size} is smaller than the tokenizer's vocabulary "
                f"{tokenizer_vocab}: token ids would index past the embedding"
            )
        return cfg.vocab_size
    if tokenizer_vocab is None:
        raise ConfigError("model.vocab_size is 0 (take it from the data) but no data manifest gives a vocabulary")
    return -(-tokenizer_vocab // 64) * 64


def hf_config(cfg: ModelConfig, vocab_size: int, *, eos_id: int | None = None, bos_id: int | None = None,
              pad_id: int | None = None, attn_impl: str = "sdpa") -> LlamaConfig | Olmo2Config:
    config_cls, _ = _families()[cfg.family]
    config = config_cls(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.rms_norm_eps,
        initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_dropout=0.0,
        use_cache=False,
        eos_token_id=eos_id,
        bos_token_id=bos_id,
        pad_token_id=pad_id,
    )
    config._attn_implementation = attn_impl
    return config


def build_model(cfg: ModelConfig, vocab_size: int, *, device: str | torch.device = "cpu", attn_impl: str = "sdpa",
                eos_id: int | None = None, bos_id: int | None = None, pad_id: int | None = None) -> PreTrainedModel:
    """Instantiate with HF's own init (seed the RNG first for a reproducible start).

    ``cfg.activation_checkpointing`` recomputes each decoder layer in the backward pass instead
    of keeping its activations (non-reentrant ``torch.utils.checkpoint``, so it composes with
    DDP, ZeRO, FSDP2 and torch.compile); it applies in training mode only.
    """
    import torch

    _, model_cls = _families()[cfg.family]
    config = hf_config(cfg, vocab_size, eos_id=eos_id, bos_id=bos_id, pad_id=pad_id, attn_impl=attn_impl)
    with torch.device(device):
        model = model_cls(config)
    if cfg.activation_checkpointing:
        # transformers >= 5.24 names it activation_checkpointing_enable (the old name warns)
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    return model


def _numel(p: torch.nn.Parameter) -> int:
    """Full size, also for a ZeRO-3 partitioned parameter (whose local tensor is empty)."""
    return getattr(p, "ds_numel", p.numel())


def count_params(model: torch.nn.Module, *, exclude_embeddings: bool = False) -> int:
    n = sum(_numel(p) for p in model.parameters())
    if exclude_embeddings:
        n -= _numel(model.get_input_embeddings().weight)
    return n


def param_counts(cfg: ModelConfig, vocab_size: int) -> tuple[int, int]:
    """(total, non-embedding) parameters of the model :func:`build_model` makes, without building it.

    Per layer: q and o projections (d x heads*head_dim), k and v (d x kv_heads*head_dim), the
    SwiGLU MLP (3 x d x intermediate), and the norms: Llama has two per layer (input,
    post-attention), OLMo-2 two (post-attention, post-feedforward) plus QK-norm over the query and
    key projections. A final norm, the input embedding and, unless tied, the LM head. No biases.
    Non-embedding = total minus the input embedding, as :func:`count_params` counts it.
    """
    d, heads, kv = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads
    head_dim = d // heads
    q_out, kv_out = heads * head_dim, kv * head_dim
    attn = 2 * d * q_out + 2 * d * kv_out
    norms = 2 * d + (q_out + kv_out if cfg.family == "olmo2" else 0)
    layer = attn + 3 * d * cfg.intermediate_size + norms
    embedding = vocab_size * d
    total = embedding + cfg.num_layers * layer + d + (0 if cfg.tie_embeddings else vocab_size * d)
    return total, total - embedding


def flops_per_token(cfg: ModelConfig, n_params_non_embedding: int, seq_len: int) -> float:
    """Training FLOPs per token: 6·N (dense matmuls, fwd+bwd) + 12·L·d·T (attention scores).

    N excludes the input embedding (a lookup) but includes the LM head; the attention term is
    the PaLM-appendix estimate used for MFU by PaLM, nanoGPT and torchtitan.
    """
    return 6.0 * n_params_non_embedding + 12.0 * cfg.num_layers * cfg.hidden_size * seq_len
