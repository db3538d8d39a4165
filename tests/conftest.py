"""Shared fixtures: small token data sets and configs for the trainer tests."""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_CORPUS = ROOT / "tests" / "fixtures" / "corpus"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_manifest(out: Path, *, train_tokens: int = 60_000, val_tokens: int = 4_000, vocab: int = 256,
                   seed: int = 0, tag: str = "synthetic") -> Path:
    """A token-shard directory in the manifest format, from a seeded random walk over the vocabulary.

    The walk is learnable (each token is near the previous one), so losses fall within a few steps.
    Two train shards exercise sequences that straddle a shard boundary.
    """
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n, parts in (("train", train_tokens, 2), ("val", val_tokens, 1)):
        stream = (np.cumsum(rng.integers(-2, 3, n)) % vocab).astype(np.uint16)
        shards = []
        for i, chunk in enumerate(np.array_split(stream, parts)):
            name = f"{split}-{i:05d}.npy"
            np.save(out / name, chunk)
            shards.append({"path": name, "tokens": int(len(chunk)), "documents": 1,
                           "sha256": hashlib.sha256(chunk.tobytes()).hexdigest()})
        splits[split] = {"tokens": n, "documents": parts, "shards": shards}
    fingerprint = hashlib.sha256(json.dumps([tag, seed, splits], sort_keys=True).encode()).hexdigest()
    manifest = {"format": "budgetlm-tokens/1", "dtype": "uint16",
                "tokenizer": {"path": "tokenizer", "kind": "none", "vocab_size": vocab, "eos_id": 2, "bos_id": 1, "pad_id": 0},
                "splits": splits, "fingerprint": fingerprint}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out / "manifest.json"


def write_sparse_manifest(out: Path, train_tokens: int, shard_tokens: int, vocab: int = 32000,
                          val_tokens: int = 65536) -> Path:
    """A manifest of sparse uint16 shards: a .npy header, then the file truncated to its full size.

    Reads return zeros and no disk is used (3T tokens: 6 TB of address space, ~9 MB of manifest).
    """
    out.mkdir(parents=True)
    splits = {}
    for split, total in (("train", train_tokens), ("val", val_tokens)):
        shards = []
        for i, lo in enumerate(range(0, total, shard_tokens)):
            n = min(shard_tokens, total - lo)
            name = f"{split}-{i:05d}.npy"
            with open(out / name, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "<u2", "fortran_order": False, "shape": (n,)})
                f.truncate(f.tell() + 2 * n)
            shards.append({"path": name, "tokens": n, "documents": n // 1000,
                           "sha256": hashlib.sha256(name.encode()).hexdigest()})  # realistic size; not checked
        splits[split] = {"tokens": total, "documents": total // 1000, "shards": shards}
    manifest = {"format": "budgetlm-tokens/1", "dtype": "uint16",
                "tokenizer": {"path": "tokenizer", "kind": "none", "vocab_size": vocab, "eos_id": 2, "bos_id": 1,
                              "pad_id": 0},
                "splits": splits, "fingerprint": hashlib.sha256(f"sparse-{train_tokens}".encode()).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out / "manifest.json"


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("synthetic"))


def base_config(manifest: Path, run_dir: Path, **sections) -> dict:
    cfg = {
        "run_dir": str(run_dir),
        "seed": 0,
        "model": {"family": "llama", "vocab_size": 0, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2,
                  "num_heads": 4, "num_kv_heads": 2, "max_seq_len": 128},
        "data": {"manifest": str(manifest), "seq_len": 32, "seed": 0},
        "optim": {"lr": 3e-3},
        "schedule": {"name": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.1},
        "budget": {"steps": 12, "global_batch_size": 8, "micro_batch_size": 4},
        "checkpoint": {"every": 0, "keep_last": 3},
        "eval": {"every": 6, "batches": 2},
        "logging": {"wandb_mode": "disabled", "progress": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def python_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["WANDB_MODE"] = "offline"
    env["DS_ACCELERATOR"] = "cpu"
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.pop("LOCAL_RANK", None)
    return env


def torchrun_cmd(nproc: int, *args: str, port: int, module: str = "pretrain") -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
            "-m", module, *args]


CENSUS = "tests.census_main"  # `-m pretrain` that reports the gloo threads left after its teardown


def assert_no_gloo_threads_left(output: str, nproc: int) -> None:
    counts = re.findall(r"gloo threads after teardown: (\d+)", output)
    assert len(counts) == nproc and all(c == "0" for c in counts), counts


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def fixture_tokens(tmp_path_factory) -> Path:
    """The committed real-text fixture corpus, tokenized with a small sentencepiece vocabulary."""
    from data_select.tokenize import tokenize_corpus

    out = tmp_path_factory.mktemp("fixture-tokens")
    tokenize_corpus([str(FIXTURE_CORPUS / "*.jsonl")], out, vocab_size=512, val_fraction=0.1, num_workers=1,
                    progress=False)
    return out / "manifest.json"
