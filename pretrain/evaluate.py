"""Held-out loss of a checkpoint on any token manifest (e.g. one per domain).

Losses are only comparable under one tokenizer, so a manifest whose tokenizer differs from
the one the model was trained with is refused.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from pretrain import checkpoint as ckpt_io
from pretrain.config import load_config
from pretrain.data import DataError, TokenData, eval_batches
from pretrain.engines.weights import load_checkpoint_weights
from pretrain.model import build_model, resolve_vocab_size


def _tokenizer_digest(data: TokenData) -> str:
    f = data.tokenizer_dir / "tokenizer.json"
    if not f.is_file():
        raise DataError(f"{data.path}: tokenizer file {f} is missing")
    return hashlib.sha256(f.read_bytes()).hexdigest()


def evaluate(source: str | Path, manifest: str | Path, *, split: str = "val", seq_len: int | None = None,
             micro_batch_size: int = 8, max_batches: int = 0) -> dict:
    """Token-weighted mean loss of the checkpoint ``source`` (run dir or step dir) on ``manifest``."""
    if micro_batch_size < 1 or (seq_len is not None and seq_len < 2):
        raise DataError(f"batch size ({micro_batch_size}) must be >= 1 and sequence length ({seq_len}) >= 2")
    ckpt = ckpt_io.resolve(source)
    ckpt_io.verify(ckpt)
    cfg = load_config(ckpt / "config.yaml")
    train_data, data = TokenData(cfg.data.manifest), TokenData(manifest)
    if _tokenizer_digest(train_data) != _tokenizer_digest(data):
        raise DataError(f"{data.path} was tokenized with another tokenizer than the model's training data "
                        f"({train_data.path}); re-tokenize it with --tokenizer {train_data.tokenizer_dir}")
    seq_len = seq_len or cfg.data.seq_len
    vocab = resolve_vocab_size(cfg.model, train_data.vocab_size)
    model = build_model(cfg.model, vocab, attn_impl="sdpa")
    load_checkpoint_weights(model, ckpt)
    model.eval()
    batches = eval_batches(data, seq_len=seq_len, micro_batch_size=micro_batch_size, max_batches=max_batches,
                           split=split)
    total, count = 0.0, 0
    with torch.no_grad():
        for tokens, _ in batches:
            n = tokens.shape[0] * (tokens.shape[1] - 1)
            total += float(model(input_ids=tokens, labels=tokens).loss) * n
            count += n
    loss = total / count
    return {"checkpoint": str(ckpt), "manifest": str(data.path), "split": split, "loss": loss,
            "predicted_tokens": count, "sequences": sum(len(b) for b, _ in batches), "seq_len": seq_len}
