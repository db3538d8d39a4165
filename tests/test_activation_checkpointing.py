"""Activation checkpointing (same losses and gradients, layers really recomputed), its config checks,
and `dist.deterministic` (enforced when on, off by default on CUDA). The engines' runs with it on:
tests/test_distributed.py (DeepSpeed ZeRO-3, FSDP2 under accelerate launch)."""
import json
import os

import pytest
import torch

from pretrain.config import ConfigError, ModelConfig, from_dict
from pretrain.engines.base import set_determinism
from pretrain.model import build_model
from pretrain.trainer import train
from tests.conftest import base_config, read_jsonl

TINY = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=64)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_same_loss_and_gradients_with_layers_recomputed(attn):
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    results = []
    for ac in (False, True):
        torch.manual_seed(0)
        cfg = ModelConfig(**{**TINY.__dict__, "activation_checkpointing": ac})
        model = build_model(cfg, 256, attn_impl=attn).train()
        calls, saved = [], []
        for layer in model.model.layers:
            forward = layer.mlp.forward
            layer.mlp.forward = lambda *a, f=forward, **k: calls.append(1) or f(*a, **k)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}, len(calls), len(saved)))
    (loss_a, grads_a, calls_a, saved_a), (loss_b, grads_b, calls_b, saved_b) = results
    assert (calls_a, calls_b) == (2, 4)  # each layer's MLP ran again in the backward pass ...
    assert saved_b < saved_a / 3  # ... instead of its activations being kept for it
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and all(torch.allclose(grads_a[k], grads_b[k], rtol=0, atol=1e-7)
                                                    for k in grads_a)


def test_trainer_curve_unchanged_with_activation_checkpointing(tmp_path, synthetic_data):
    curves = []
    for ac in (False, True):
        train(from_dict(base_config(synthetic_data, tmp_path / str(ac), budget={"steps": 4},
                                    model={"activation_checkpointing": ac}, eval={"every": 2, "batches": 1})))
        curves.append([(r["step"], r.get("loss"), r.get("grad_norm"), r.get("val_loss"))
                       for r in read_jsonl(tmp_path / str(ac) / "metrics.jsonl")])
    assert curves[0] == curves[1]


def test_configs_that_cannot_checkpoint_fail_at_load(tmp_path, synthetic_data):
    own_ac = tmp_path / "ds.json"
    own_ac.write_text(json.dumps({"zero_optimization": {"stage": 2},
                                  "activation_checkpointing": {"partition_activations": True}}))
    cfg = base_config(synthetic_data, tmp_path / "r", model={"activation_checkpointing": True},
                      dist={"engine": "deepspeed", "deepspeed_config": str(own_ac)})
    with pytest.raises(ConfigError, match="activation_checkpointing section sets partition_activations"):
        from_dict(cfg)
    cfg["model"]["activation_checkpointing"] = False  # DeepSpeed's own section alone is DeepSpeed's business
    from_dict(cfg)
    with pytest.raises(ConfigError, match="model.attn_impl"):
        from_dict(base_config(synthetic_data, tmp_path / "r", model={"attn_impl": "flash"}))
    with pytest.raises(ConfigError, match="cpu_offload is an FSDP2 option"):
        from_dict(base_config(synthetic_data, tmp_path / "r", dist={"cpu_offload": True}))


def test_determinism_is_enforced_when_on_and_off_by_default_on_cuda(tmp_path, synthetic_data, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.delenv("FLASH_ATTENTION_DETERMINISTIC", raising=False)
    try:
        set_determinism(from_dict(base_config(synthetic_data, tmp_path, dist={"deterministic": True})))
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and os.environ["FLASH_ATTENTION_DETERMINISTIC"] == "1"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert set_determinism(from_dict(base_config(synthetic_data, tmp_path))) is False  # unset: off on CUDA
        assert not torch.are_deterministic_algorithms_enabled()
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert set_determinism(from_dict(base_config(synthetic_data, tmp_path))) is True  # unset: on for CPU
    finally:
        torch.use_deterministic_algorithms(True)  # the CPU default the rest of the suite runs with
