"""Budgets stated as a fraction of one epoch (`budget.epochs`): arithmetic, the one-epoch check, plans, bad input."""
import json
import shutil

import pytest

from pretrain.branching import budget_points
from pretrain.budget import describe, epoch_sequences, to_steps, total_steps_of
from pretrain.cli import main as pretrain_main
from pretrain.config import ConfigError, from_dict, load_config
from pretrain.data import DataError, OneEpochLoader, TokenData
from tests.conftest import base_config, read_jsonl, write_config, write_manifest

WSD = {"name": "wsd", "warmup_steps": 2, "decay_fraction": 0.25, "decay_shape": "1-sqrt", "min_lr_ratio": 0.0}


def _cfg(manifest, tmp_path, schedule=WSD, **budget):
    return from_dict(base_config(manifest, tmp_path / "run", budget=budget, schedule=schedule))


def test_epoch_fraction_becomes_steps_and_tokens(tmp_path):
    # 60,000 train tokens in sequences of 32: 1,875 sequences. Half an epoch: 937 sequences -> 117 steps of 8.
    manifest = write_manifest(tmp_path / "d", train_tokens=60_000)
    cfg = _cfg(manifest, tmp_path, epochs=0.5, steps=None, budgets=[0.25, 0.5, 1])
    assert epoch_sequences(cfg) == 1875
    assert total_steps_of(cfg) == 117
    assert [to_steps(cfg, b) for b in cfg.budget.budgets] == [58, 117, 234]  # 468 // 8, 937 // 8, 1875 // 8
    lines = describe(cfg)
    assert lines[0] == (f"budget.epochs 0.5 (of one epoch: 1,875 sequences of 32 tokens in {manifest}) "
                        "= 117 steps x 256 tokens = 29,952 tokens")
    assert lines[1:] == ["  plan budget 0.25 epochs = 58 steps = 14,848 tokens",
                         "  plan budget 0.5 epochs = 117 steps = 29,952 tokens",
                         "  plan budget 1 epochs = 234 steps = 59,904 tokens"]
    # the fraction as written: 0.57 of 100 sequences is 57 (0.57 * 100 is 56.99999999999999 in binary floats)
    small = write_manifest(tmp_path / "s", train_tokens=3200)
    cfg = _cfg(small, tmp_path, epochs=0.57, steps=None, global_batch_size=1, micro_batch_size=1)
    assert total_steps_of(cfg) == 57
    # a directory works as data.manifest, as it does for the loader
    cfg.data.manifest = str(small.parent)
    assert total_steps_of(cfg) == 57


@pytest.mark.parametrize("train_tokens", [3_200, 5_000, 60_000, 123_457])
@pytest.mark.parametrize("epochs", [0.1, 0.7, 0.999, 1.0])
def test_epoch_budget_always_fits_one_epoch(tmp_path, train_tokens, epochs):
    manifest = write_manifest(tmp_path / "d", train_tokens=train_tokens)
    cfg = _cfg(manifest, tmp_path, {"name": "constant", "warmup_steps": 0}, epochs=epochs, steps=None, global_batch_size=4, micro_batch_size=4)
    loader = OneEpochLoader(TokenData(manifest), seq_len=32, global_batch_size=4, micro_batch_size=4)
    steps = total_steps_of(cfg)
    loader.check_budget(steps)  # the trainer's one-epoch check passes
    assert steps * 4 <= epochs * (train_tokens // 32) < (steps + 1) * 4  # and no whole step is left on the table
    if epochs == 1.0:
        with pytest.raises(DataError, match="never repeats data"):
            loader.check_budget(steps + 1)  # a whole epoch is exactly what the loader holds


@pytest.mark.parametrize("budget, needle", [
    ({"epochs": 0}, "budget.epochs must be in (0, 1]"),
    ({"epochs": -0.5}, "budget.epochs must be in (0, 1]"),
    ({"epochs": 1.5}, "budget.epochs must be in (0, 1]"),
    ({"epochs": 0.5, "steps": 10}, "budget.steps and budget.epochs are given together"),
    ({"epochs": 0.5, "tokens": 1000, "steps": None}, "budget.tokens and budget.epochs are given together"),
    ({"epochs": 0.5, "budgets": [0.2, 2]}, r"budget.budgets\[1\]: 2 is not a fraction of one epoch"),
    ({"steps": 10, "budgets": [2.5, 10]}, r"budget.budgets\[0\]: 2.5 is not a positive whole number of steps"),
    ({"epochs": "half"}, "budget.epochs: expected"),
])
def test_bad_epoch_budgets_are_refused_at_load_naming_the_keys(tmp_path, budget, needle):
    budget = {"steps": None, **budget}
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("]", r"\]") if "[" not in needle else needle):
        from_dict(base_config(tmp_path / "absent.json", tmp_path / "r", budget=budget))


def test_epoch_budget_without_data_loads_and_names_the_manifest_when_resolved(tmp_path):
    cfg = from_dict(base_config(tmp_path / "absent.json", tmp_path / "r", budget={"steps": None, "epochs": 0.5}))
    with pytest.raises(ConfigError, match="data.manifest .*absent.json.* does not exist"):
        total_steps_of(cfg)
    tiny = write_manifest(tmp_path / "tiny", train_tokens=320)  # 10 sequences: a tenth of an epoch is 1 sequence
    with pytest.raises(ConfigError, match="0.1 epochs is less than one optimizer step .*one epoch holds 10 sequences"):
        from_dict(base_config(tiny, tmp_path / "r", budget={"steps": None, "epochs": 0.1}))


def test_quickstart_config_states_its_budget_in_epochs():
    cfg = load_config("configs/train/quickstart.yaml")  # loads without data: the budget waits for the manifest
    assert cfg.budget.given() == ["epochs"] and 0 < cfg.budget.epochs <= 1
    assert cfg.budget.budgets[-1] == cfg.budget.epochs and all(0 < b <= 1 for b in cfg.budget.budgets)


def test_plan_in_epoch_fractions_trains_within_one_epoch(tmp_path, capsys, fixture_tokens):
    # 160 sequences of 32: budgets 0.5 and 1 of an epoch are 10 and 20 steps of 8 sequences
    manifest = write_manifest(tmp_path / "d", train_tokens=160 * 32 + 7, vocab=512)
    shutil.copytree(fixture_tokens.parent / "tokenizer", tmp_path / "d" / "tokenizer")  # for the HF exports
    cfg = base_config(manifest, tmp_path / "plan", budget={"steps": None, "epochs": 1.0, "budgets": [0.5, 1.0]},
                      schedule=WSD, eval={"every": 0, "batches": 1})
    points = budget_points(from_dict(cfg))
    assert [(p.budget, p.steps, p.decay_steps) for p in points] == [(0.5, 10, 2), (1.0, 20, 5)]
    assert pretrain_main(["plan", str(write_config(tmp_path / "plan.yaml", cfg))]) == 0
    printed = capsys.readouterr().out
    assert "budget.epochs 1 (of one epoch: 160 sequences of 32 tokens" in printed and "= 20 steps x 256 tokens = 5,120 tokens" in printed
    assert "plan budget 0.5 epochs = 10 steps = 2,560 tokens" in printed
    report = json.loads((tmp_path / "plan" / "branches.json").read_text())
    assert [(r["budget"], r["steps"], r["tokens"]) for r in report["budgets"]] == [(0.5, 10, 2560), (1.0, 20, 5120)]
    last = read_jsonl(tmp_path / "plan" / "budget-1" / "metrics.jsonl")
    assert max(r["tokens"] for r in last) == 160 * 32  # the whole epoch, once
    assert (tmp_path / "plan" / "budget-0.5" / "hf" / "config.json").exists()
    branch_cfg = load_config(tmp_path / "plan" / "budget-0.5" / "config.yaml")  # the branches state plain steps
    assert branch_cfg.budget.given() == ["steps"] and branch_cfg.budget.steps == 10
