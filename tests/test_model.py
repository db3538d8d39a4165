import pytest

from pretrain.config import ConfigError, ModelConfig, load_config
from pretrain.model import build_model, count_params, flops_per_token, resolve_vocab_size


def _preset(name):
    return load_config("configs/train/quickstart.yaml", [f"model={name}"]).model


def test_tinyllama_parameter_count_on_meta():
    m = _preset("tinyllama-1.1b")
    assert (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.intermediate_size, m.vocab_size) == \
        (22, 2048, 32, 4, 5632, 32000)
    model = build_model(m, resolve_vocab_size(m, 32000), device="meta")
    # embeddings 2·32000·2048 + 22 layers (attn 2048·(2048+256+256+2048) + MLP 3·2048·5632 + 2 norms) + final norm
    per_layer = 2048 * (2048 + 256 + 256 + 2048) + 3 * 2048 * 5632 + 2 * 2048
    assert count_params(model) == 2 * 32000 * 2048 + 22 * per_layer + 2048 == 1_100_048_384
    assert type(model).__name__ == "LlamaForCausalLM"


def test_olmo2_builds_and_has_qk_norm():
    m = _preset("olmo2-1b")
    model = build_model(m, resolve_vocab_size(m, None), device="meta")
    assert type(model).__name__ == "Olmo2ForCausalLM"
    assert hasattr(model.model.layers[0].self_attn, "q_norm")
    assert 1.4e9 < count_params(model) < 1.6e9


def test_vocab_resolution():
    assert resolve_vocab_size(ModelConfig(vocab_size=0), 1000) == 1024
    with pytest.raises(ConfigError, match="smaller than the tokenizer"):
        resolve_vocab_size(ModelConfig(vocab_size=512), 1000)


def test_flops_per_token_matches_6n_plus_attention():
    m = ModelConfig(num_layers=2, hidden_size=64)
    assert flops_per_token(m, 1000, 128) == 6 * 1000 + 12 * 2 * 64 * 128
