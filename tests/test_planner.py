"""The compute planner (`pretrain budget`) and FLOPs budgets (`budget.flops`).

Expected values come from outside the code under test: Chinchilla's own compute-optimal point
(Hoffmann et al. 2022: 5.76e23 FLOPs -> 70B parameters, 1.4T tokens), a numerical minimisation of
the law on its iso-FLOP curve, HF's own parameter count of the built model, and the trainer's
reported FLOPs per token.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from scipy.optimize import minimize_scalar

from pretrain import planner
from pretrain.budget import flops_per_token_of, tokens_per_step, total_steps_of
from pretrain.cli import main
from pretrain.config import ConfigError, ModelConfig, from_dict, load_config
from pretrain.model import build_model, count_params, flops_per_token, param_counts
from tests.conftest import base_config, write_manifest


def _hf_count(cfg: ModelConfig, vocab: int) -> tuple[int, int]:
    model = build_model(cfg, vocab, device="meta")
    return count_params(model), count_params(model, exclude_embeddings=True)


def test_chinchilla_point_without_a_data_cap():
    plan = planner.make_plan(5.76e23)
    assert not plan.binds and plan.recommended is plan.optimum
    assert plan.optimum.params == pytest.approx(70e9, rel=0.25)
    assert plan.optimum.tokens == pytest.approx(1.4e12, rel=0.25)
    assert plan.shape_params == pytest.approx(70e9, rel=0.25)


@pytest.mark.parametrize("law", sorted(planner.LAWS))
def test_optimum_minimises_the_law_on_its_iso_flop_curve(law):
    lw = planner.LAWS[law]
    for compute in (1e19, 1e22, 5.76e23):
        n, d = lw.optimum(compute)
        assert 6 * n * d == pytest.approx(compute)
        res = minimize_scalar(lambda log_n: lw.loss(math.exp(log_n), compute / (6 * math.exp(log_n))),
                              bounds=(10, 30), method="bounded", options={"xatol": 1e-10})
        assert n == pytest.approx(math.exp(res.x), rel=1e-3)
        assert lw.compute_for_tokens(d) == pytest.approx(compute, rel=1e-9)


def test_one_epoch_cap_binds_and_compares_the_alternatives():
    compute, unique = 1.6e20, 5e9
    plan = planner.make_plan(compute, unique_tokens=unique)
    lw = planner.LAWS[planner.DEFAULT_LAW]
    assert plan.binds and plan.optimum.tokens > unique
    larger, less = plan.options
    assert larger.tokens == less.tokens == unique
    assert larger.params == pytest.approx(compute / (6 * unique)) and larger.flops == compute
    assert less.flops < compute and lw.optimum(less.flops)[1] == pytest.approx(unique)  # optimal for one epoch
    assert larger.loss == pytest.approx(lw.loss(compute / (6 * unique), unique)) and larger.loss < less.loss
    assert plan.recommended is larger
    assert plan.train_tokens <= unique  # never a second epoch
    text = planner.format_plan(plan)
    assert "not allowed" in text and "<- recommended" in text and "saves" in text
    free = planner.make_plan(compute, unique_tokens=1e12)
    assert not free.binds and free.train_tokens == int(compute / free.flops_per_token)
    # a large vocabulary: the trainer's FLOPs/token (6 x non-embedding + attention) buy more than the law's
    # 6·N, so the shape could afford more than one epoch; it gets one epoch
    small = planner.make_plan(1e17, unique_tokens=5e8, family="olmo2", vocab_size=100352)
    assert small.binds and 1e17 / small.flops_per_token > 5e8
    assert small.train_tokens == 5e8 and small.train_flops < 1e17


@pytest.mark.parametrize("family,vocab", [("llama", 32000), ("olmo2", 100352)])
def test_parameter_count_and_flops_match_the_trainer(family, vocab):
    for cfg in (ModelConfig(family=family, hidden_size=256, intermediate_size=704, num_layers=3, num_heads=8,
                            num_kv_heads=2),
                ModelConfig(family=family, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=2,
                            num_kv_heads=2, tie_embeddings=True)):
        assert param_counts(cfg, vocab) == _hf_count(cfg, vocab)
    plan = planner.make_plan(1.6e20, family=family, vocab_size=vocab)
    _, non_emb = _hf_count(plan.shape, vocab)  # as the trainer counts the built model
    assert plan.flops_per_token == flops_per_token(plan.shape, non_emb, 2048)
    assert plan.train_flops <= 1.6e20 < plan.train_flops + plan.flops_per_token


@pytest.mark.parametrize("family,vocab", [("llama", 32000), ("olmo2", 100352)])
@pytest.mark.parametrize("n", [1.2e8, 1.1e9, 7e9, 7e10])
def test_shape_is_within_ten_percent(family, vocab, n):
    shape = planner.shape_for(n, family=family, vocab_size=vocab)
    total, _ = _hf_count(shape, vocab)
    assert abs(total / n - 1) <= 0.10
    assert shape.hidden_size % shape.num_heads == 0 and shape.num_heads % shape.num_kv_heads == 0


def test_kv_heads_divide_the_query_heads():
    shape = planner._shape(planner.FAMILIES["llama"], 4, 52 * 64, 32000, 2048)  # 52 heads: 52 // 8 = 6 does not divide
    assert (shape.num_heads, shape.num_kv_heads) == (52, 4)


def test_shape_reproduces_the_reference_models():
    tiny = planner.shape_for(1_100_048_384, family="llama", vocab_size=32000)
    assert (tiny.num_layers, tiny.hidden_size, tiny.num_heads, tiny.num_kv_heads, tiny.intermediate_size) == \
        (22, 2048, 32, 4, 5632)  # TinyLlama-1.1B
    olmo = load_config("configs/train/quickstart.yaml", ["model=olmo2-1b"]).model
    shape = planner.shape_for(param_counts(olmo, 100352)[0], family="olmo2", vocab_size=100352)
    assert (shape.num_layers, shape.hidden_size, shape.num_heads, shape.intermediate_size) == (16, 2048, 16, 8192)


def test_gpu_hours_conversion():
    flops, how = planner.compute_from_gpu_hours("112", "h100", "0.4")
    assert flops == pytest.approx(112 * 3600 * 989e12 * 0.4)
    assert "H100" in how and "MFU 0.4 (assumed)" in how


@pytest.mark.parametrize("args,message", [
    (["--flops", "abc"], "--flops: 'abc' is not a number"),
    (["--flops", "-1"], "--flops: must be a positive number"),
    (["--flops", "0"], "--flops: must be a positive number"),
    (["--flops", "nan"], "--flops: must be a positive number"),
    (["--gpu-hours", "10", "--gpu", "B300"], "--gpu: unknown GPU type 'B300'; known: H200, H100, A100"),
    (["--gpu-hours", "10", "--gpu", "H100", "--mfu", "0"], "--mfu: a utilisation must lie in (0, 1], got '0'"),
    (["--gpu-hours", "10", "--gpu", "H100", "--mfu", "1.5"], "--mfu: a utilisation must lie in (0, 1]"),
    (["--gpu-hours", "10", "--gpu", "H100", "--mfu", "x"], "--mfu: 'x' is not a number"),
    (["--gpu-hours", "-3", "--gpu", "H100"], "--gpu-hours: must be a positive number"),
    (["--gpu-hours", "3"], "--gpu-hours needs --gpu"),
    (["--flops", "1e20", "--gpu-hours", "3"], "exactly one of --flops or --gpu-hours"),
    (["--flops", "1e20", "--unique-tokens", "0"], "--unique-tokens: must be a positive number"),
])
def test_bad_input_fails_with_one_clear_line(capsys, args, message):
    assert main(["budget", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pretrain budget: ") and message in err


def test_cli_json_and_written_config_is_a_ready_plan(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "tokens", train_tokens=3_000_000, vocab=1000)
    out = tmp_path / "planned.yaml"
    rc = main(["budget", "--flops", "2e14", "--manifest", str(manifest), "--seq-len", "128", "--json",
               "--write-config", str(out), "--branches", "0.5", "1", "--decay-fraction", "0.2",
               "--batch-tokens", "4096", "--micro-batch", "4"])
    assert rc == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["unique_tokens"] == 3_000_000 and plan["shape"]["vocab_size"] == 1024  # tokenizer's, rounded to 64
    cfg = load_config(out)  # validates, including the WSD schedule over the budget
    assert cfg.model.hidden_size == plan["shape"]["hidden_size"] and cfg.data.manifest == str(manifest)
    assert cfg.schedule.name == "wsd" and cfg.schedule.params["decay_fraction"] == 0.2
    assert cfg.budget.tokens == cfg.budget.budgets[-1] <= plan["train_tokens"]
    assert cfg.budget.budgets[0] == pytest.approx(cfg.budget.tokens / 2, rel=0.02)
    assert cfg.budget.global_batch_size * cfg.data.seq_len == 4096 and cfg.budget.micro_batch_size == 4
    assert flops_per_token_of(cfg) == plan["trainer_flops_per_token"]
    assert flops_per_token_of(cfg) * cfg.budget.tokens <= 2e14
    from pretrain.branching import budget_points

    points = budget_points(cfg)
    assert [p.steps for p in points] == [b // tokens_per_step(cfg) for b in cfg.budget.budgets]
    assert out.read_text().startswith("# written by `pretrain budget`")
    assert yaml.safe_load(out.read_text())["optim"]["lr"] == 4.0e-4  # from the TinyLlama recipe


def test_budget_flops_converts_with_the_trainers_flops_per_token(tmp_path, fixture_tokens):
    from pretrain.trainer import train

    raw = base_config(fixture_tokens, tmp_path / "run", budget={"steps": None, "flops": 1.0},
                      eval={"every": 0, "batches": 1}, checkpoint={"save_final": False})
    per_step = flops_per_token_of(from_dict({**raw, "budget": {**raw["budget"], "flops": 1e12}})) * 8 * 32
    raw["budget"]["flops"] = 5.5 * per_step
    cfg = from_dict(raw)
    assert total_steps_of(cfg) == 5
    summary_dir = tmp_path / "run"
    train(cfg)
    summary = json.loads((summary_dir / "summary.json").read_text())
    assert summary["flops_per_token"] == flops_per_token_of(cfg)  # the trainer's own accounting
    assert summary["step"] == 5 and summary["tokens"] * summary["flops_per_token"] <= cfg.budget.flops
    with pytest.raises(ConfigError, match="exactly one of budget.tokens, budget.steps, budget.epochs, budget.flops"):
        from_dict({**raw, "budget": {**raw["budget"], "tokens": 1000}})
    with pytest.raises(ConfigError, match="budget.flops must be positive"):
        from_dict({**raw, "budget": {**raw["budget"], "flops": -1.0}})
    with pytest.raises(ConfigError, match="less than one optimizer step"):
        from_dict({**raw, "budget": {**raw["budget"], "flops": 0.5 * per_step}})
    assert np.isfinite(per_step)
