"""Export a checkpoint as a plain HF model directory (config, safetensors, tokenizer).

The output loads with ``AutoModelForCausalLM.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)``, with no project code installed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pretrain import checkpoint as ckpt_io
from pretrain.config import load_config
from pretrain.data import TokenData
from pretrain.engines.weights import load_checkpoint_weights
from pretrain.model import build_model, resolve_vocab_size


def export(run_or_checkpoint: str | Path, out: str | Path, *, verify: bool = True) -> Path:
    ckpt = ckpt_io.resolve(run_or_checkpoint)
    if verify:
        ckpt_io.verify(ckpt)
    cfg = load_config(ckpt / "config.yaml")
    data = TokenData(cfg.data.manifest)
    vocab = resolve_vocab_size(cfg.model, data.vocab_size)
    model = build_model(cfg.model, vocab, device="cpu", attn_impl="sdpa", eos_id=data.eos_id,
                        bos_id=data.bos_id, pad_id=data.pad_id)
    load_checkpoint_weights(model, ckpt)
    model.tie_weights()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.config.use_cache = True
    model.save_pretrained(tmp, safe_serialization=True)
    if not data.tokenizer_dir.is_dir():
        raise FileNotFoundError(f"tokenizer directory {data.tokenizer_dir} (named by {data.path}) is missing")
    for f in data.tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copy2(f, tmp / f.name)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
