import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pretrain.cli import main as pretrain_main
from pretrain.config import from_dict
from pretrain.data import TokenData, eval_batches
from pretrain.trainer import train
from tests.conftest import base_config


@pytest.mark.parametrize("family", ["llama", "olmo2"])
def test_export_loads_without_project_code_and_matches_trainer_loss(tmp_path, fixture_tokens, family):
    cfg = base_config(fixture_tokens, tmp_path / "run", model={"family": family},
                      budget={"steps": 6}, eval={"every": 0, "batches": 1}, data={"seq_len": 64})
    res = train(from_dict(cfg))
    out = tmp_path / "hf"
    assert pretrain_main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()

    assert_loads_without_project_code_with_loss(out, fixture_tokens, res.final_val_loss,
                                                {"llama": "LlamaForCausalLM", "olmo2": "Olmo2ForCausalLM"}[family])


def assert_loads_without_project_code_with_loss(out, manifest, val_loss, class_name, batches=1):
    """Vanilla transformers loads the export and reproduces the trainer's validation loss on the first
    ``batches`` validation micro-batches (4 x 64 tokens); its tokenizer round-trips text."""
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        losses = [model(input_ids=b, labels=b).loss.item()
                  for b, _ in eval_batches(TokenData(manifest), seq_len=64, micro_batch_size=4, max_batches=batches)]
    assert sum(losses) / len(losses) == pytest.approx(val_loss, rel=1e-5)
    assert tok.eos_token_id == TokenData(manifest).eos_id
    ids = tok("def main():\n    return 0\n", add_special_tokens=False).input_ids
    assert tok.decode(ids) == "def main():\n    return 0\n"

    # A clean interpreter that never imports this project loads it too.
    code = ("import sys, transformers; m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]); "
            "assert 'pretrain' not in sys.modules; print(type(m).__name__)")
    p = subprocess.run([sys.executable, "-I", "-c", code, str(out)], capture_output=True, text=True, cwd=out.parent,
                       env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == class_name


def test_export_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert pretrain_main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoint found" in capsys.readouterr().err


def test_eval_matches_trainer_and_refuses_another_tokenizer(tmp_path, fixture_tokens, synthetic_data, capsys):
    cfg = base_config(fixture_tokens, tmp_path / "run", budget={"steps": 3}, eval={"every": 0, "batches": 0},
                      data={"seq_len": 64})
    res = train(from_dict(cfg))
    assert pretrain_main(["eval", str(tmp_path / "run"), str(fixture_tokens)]) == 0
    import json

    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["loss"] == pytest.approx(res.final_val_loss, rel=1e-6)
    assert pretrain_main(["eval", str(tmp_path / "run"), str(synthetic_data)]) == 2
    assert "tokenizer" in capsys.readouterr().err
