import pytest
import yaml

from pretrain.config import ConfigError, load_config, save_config, to_dict


def test_quickstart_loads_with_overrides():
    cfg = load_config("configs/train/quickstart.yaml", ["optim.lr=1e-3", "run_dir=runs/x", "budget.budgets=[0.25,0.5]"])
    assert cfg.optim.lr == 1e-3 and cfg.run_dir == "runs/x" and cfg.budget.budgets == [0.25, 0.5]
    assert cfg.model.family == "llama" and cfg.model.num_layers == 2  # the `tiny` preset was pulled in
    assert cfg.schedule.name == "wsd" and cfg.schedule.params["decay_shape"] == "1-sqrt"


@pytest.mark.parametrize("override, needle", [
    ("optim.lrr=1", "optim.lrr"),
    ("nope=1", "nope"),
    ("budget.steps=abc", "budget.steps"),
    ("logging.progress=3", "logging.progress"),
    ("model.family=gpt2", "model.family"),
    ("schedule.phi=1.0", "phi"),
    ("schedule.name=bogus", "bogus"),
    ("budget.budgets=[0.6,0.3]", "increasing"),
])
def test_bad_keys_and_types_fail_naming_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_config("configs/train/quickstart.yaml", [override])


def test_budget_needs_exactly_one_unit():
    with pytest.raises(ConfigError, match="exactly one"):
        load_config("configs/train/quickstart.yaml", ["budget.tokens=1000"])


def test_missing_file_and_unknown_preset():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/train/does-not-exist.yaml")
    with pytest.raises(ConfigError, match="no preset"):
        load_config("configs/train/quickstart.yaml", ["model=nonexistent-preset"])


def test_round_trip(tmp_path):
    cfg = load_config("configs/train/quickstart.yaml", ["schedule.name=uba", "schedule.phi=1.0",
                                                        "schedule.decay_fraction=null", "schedule.decay_shape=null"])
    assert cfg.schedule.params.get("phi") == 1.0
    cfg = load_config("configs/train/quickstart.yaml")
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["schedule"]["decay_shape"] == "1-sqrt"
