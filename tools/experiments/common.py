"""Shared plumbing of the issue-6 experiment drivers: runs, results copies, tables, plots, RESULTS.md.

Every driver trains in-process through the ``pretrain`` Python API (one interpreter start
instead of one per run: importing torch/transformers costs ~30 s here), skips any run whose
``summary.json`` exists (so a driver is resumable and cheap to re-run for its report), and
copies the compact raw results (``metrics.jsonl``, ``summary.json``) into ``docs/results``.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BASE_CONFIG = ROOT / "configs" / "train" / "exp-base.yaml"
WORK = ROOT / "work" / "experiments"
DOCS = ROOT / "docs"
RESULTS_MD = DOCS / "RESULTS.md"
MANIFEST = ROOT / "work" / "exp-tokens" / "manifest.json"

# Budgets in optimizer steps (1,024 tokens each): B, 2B, 4B; warm-up is 5% of the smallest budget.
BUDGETS = (128, 256, 512)
WARMUP = 6
QUICK_BUDGETS = (12, 24, 48)
QUICK_WARMUP = 2


class ExperimentError(RuntimeError):
    """A driver cannot go on (missing data, a run's results unreadable); the message names the file."""


def publish_section(md: Path, name: str, body: str, t0: float) -> None:
    """Replace one driver's section of RESULTS.md and say so."""
    write_section(md, name, body)
    print(f"wrote {md} ({time.time() - t0:.0f} s)")


def run_driver(main, name: str) -> None:
    """Entry point of a driver: a clear one-line error instead of a traceback for ExperimentError."""
    try:
        raise SystemExit(main())
    except ExperimentError as e:
        raise SystemExit(f"{name}: {e}")


@dataclass
class Layout:
    """Where one driver's runs and published results live (``--quick`` keeps both under work/)."""

    name: str
    quick: bool = False

    @property
    def runs(self) -> Path:
        return WORK / (f"{self.name}-quick" if self.quick else self.name)

    @property
    def docs(self) -> Path:
        return WORK / "quick-docs" if self.quick else DOCS

    @property
    def results(self) -> Path:
        return self.docs / "results" / self.name

    @property
    def results_md(self) -> Path:
        return self.docs / "RESULTS.md"

    def rel(self, path: Path) -> str:
        """Path of a result file as RESULTS.md links it."""
        return os.path.relpath(path, self.results_md.parent)

    @property
    def budgets(self) -> tuple[int, ...]:
        return QUICK_BUDGETS if self.quick else BUDGETS

    @property
    def warmup(self) -> int:
        return QUICK_WARMUP if self.quick else WARMUP


def setup_threads(threads: int) -> None:
    """Tiny models run fastest on one thread per process here; two drivers then share the 2 cores."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(threads)


def schedule_spec(kind: str, warmup: int) -> dict:
    """The ``schedule`` section of a run from a short label: cosine, linear, wsd, rex, uba-<phi>."""
    common = {"warmup_steps": warmup, "min_lr_ratio": 0.0}
    if kind in ("cosine", "linear", "rex"):
        return {"name": kind, **common}
    if kind == "wsd":
        return {"name": "wsd", **common, "decay_fraction": 0.2, "decay_shape": "1-sqrt"}
    m = re.fullmatch(r"uba-([0-9.]+)", kind)
    if m:
        return {"name": "uba", **common, "phi": float(m.group(1))}
    raise ExperimentError(f"unknown schedule label {kind!r} (cosine, linear, wsd, rex, uba-<phi>)")


def make_config(run_dir: Path, *, schedule: dict, steps: int, lr: float, seed: int = 0, quick: bool = False,
                extra: dict | None = None):
    """A TrainConfig from configs/train/exp-base.yaml with this run's schedule, budget, LR and seed."""
    from pretrain.config import from_dict, load_yaml

    if not MANIFEST.is_file():
        raise ExperimentError(f"{MANIFEST} not found: build the tokens first (see the setup section of docs/RESULTS.md)")
    data = load_yaml(BASE_CONFIG)
    data["run_dir"] = str(run_dir)
    data["seed"] = seed
    data["data"] = {**data["data"], "manifest": str(MANIFEST), "seed": seed}
    data["optim"] = {**data["optim"], "lr": lr}
    data["schedule"] = dict(schedule)
    data["budget"] = {**data["budget"], "steps": steps}
    if quick:
        data["eval"] = {**data["eval"], "batches": 2}
    for section, values in (extra or {}).items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return from_dict(data, base=ROOT)


def train_run(cfg, label: str) -> dict:
    """Train one run unless its summary.json exists; return the summary."""
    from pretrain.trainer import train

    summary = Path(cfg.run_dir) / "summary.json"
    if summary.is_file():
        print(f"[skip] {label}: {summary} exists", flush=True)
        return read_summary(summary)
    print(f"[train] {label} -> {cfg.run_dir}", flush=True)
    train(cfg)
    return read_summary(summary)


def read_summary(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExperimentError(f"{path}: unreadable run summary ({e})") from None


def read_jsonl(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; a malformed line is an error naming the file (our runs write whole lines)."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ExperimentError(f"{path}: {e}") from None
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise ExperimentError(f"{path}:{i}: not a JSON line") from None
    return out


def train_curve(metrics: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, losses, lrs) of the train lines of a metrics.jsonl."""
    rows = [r for r in read_jsonl(metrics) if r.get("type") == "train"]
    if not rows:
        raise ExperimentError(f"{metrics}: no train lines")
    return (np.array([r["step"] for r in rows]), np.array([r["loss"] for r in rows]),
            np.array([r["lr"] for r in rows]))


def final_val_loss(metrics: Path) -> float:
    evals = [r for r in read_jsonl(metrics) if r.get("type") == "eval"]
    if not evals:
        raise ExperimentError(f"{metrics}: no eval line")
    return float(evals[-1]["val_loss"])


def publish(run_dir: Path, dest: Path) -> None:
    """Copy a run's metrics.jsonl and summary.json (not its checkpoints) into docs/results."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "summary.json"):
        src = Path(run_dir) / name
        if not src.is_file():
            raise ExperimentError(f"{src} missing: the run did not finish")
        tmp = dest / f".{name}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest / name)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def smooth(values: np.ndarray, window: int = 15) -> np.ndarray:
    """Centred moving average (edges over the points that exist): per-step train loss on a batch of 8
    sequences is noisy, and unlike an EMA this neither lags nor depends on the curve's first value,
    so a branch's curve joins its parent's."""
    values = np.asarray(values, dtype=np.float64)
    kernel = np.ones(min(window, len(values)))
    return np.convolve(values, kernel, mode="same") / np.convolve(np.ones(len(values)), kernel, mode="same")


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(md: Path, name: str, body: str, *, order: tuple[str, ...] = ("setup", "schedules", "branching",
                                                                                  "disf", "disf-imbalanced", "prediction",
                                                                                  "conclusions")) -> None:
    """Replace (or insert, in ``order``) the block between ``<!-- BEGIN name -->`` and ``<!-- END name -->``.

    Each driver owns one block, so re-running one never clobbers another's results.
    """
    md.parent.mkdir(parents=True, exist_ok=True)
    text = md.read_text() if md.is_file() else "# Results\n"
    block = f"<!-- BEGIN {name} -->\n{body.strip()}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        later = order[order.index(name) + 1:] if name in order else ()
        pos = min((text.find(f"<!-- BEGIN {n} -->") for n in later if f"<!-- BEGIN {n} -->" in text), default=-1)
        text = text.rstrip() + "\n\n" + block + "\n" if pos < 0 else text[:pos] + block + "\n\n" + text[pos:]
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, md)


def _throughput(layout: Layout) -> str:
    """Measured speed of experiment (a)'s runs: median tokens/s per process and the summed step time."""
    rates, seconds = [], 0.0
    for metrics in sorted((WORK / ("schedules-quick" if layout.quick else "schedules")).glob("*/metrics.jsonl")):
        rows = [r for r in read_jsonl(metrics) if r.get("type") == "train"]
        rates += [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
        seconds += sum(r.get("time", 0.0) for r in rows)
    if not rates:
        return ""
    return (f"Measured over (a)'s runs: median {np.median(rates):,.0f} tokens/s per process (range of the 10-90th "
            f"percentile {np.percentile(rates, 10):,.0f}-{np.percentile(rates, 90):,.0f}, the machine was shared), "
            f"{seconds / 60:.0f} min of summed step time.")


def setup_section(layout: Layout) -> str:
    """The opening of RESULTS.md: data, model, machine and the commands that regenerate everything."""
    import torch

    manifest = json.loads(MANIFEST.read_text())
    splits = manifest["splits"]
    cfg = make_config(layout.runs / "probe", schedule=schedule_spec("cosine", layout.warmup), steps=layout.budgets[0],
                      lr=1e-3)
    from pretrain.model import build_model, count_params, resolve_vocab_size

    vocab = resolve_vocab_size(cfg.model, manifest["tokenizer"]["vocab_size"])
    model = build_model(cfg.model, vocab, device="cpu", attn_impl="sdpa", eos_id=2, bos_id=1, pad_id=0)
    n_params, n_non_emb = count_params(model), count_params(model, exclude_embeddings=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    tps = cfg.budget.global_batch_size * cfg.data.seq_len
    m = cfg.model
    budgets = ", ".join(f"{b} steps = {b * tps:,} tokens" for b in layout.budgets)
    return f"""## Setup of (a), (b) and (d)

All numbers of these three sections come from `tools/experiments/*.py` on this repository; raw per-step metrics and
the summary of every run are under `docs/results/<experiment>/`.

- **Data**: `data-select corpus --out work/corpus-small` (the small build of the Debian-package
  corpus: 8 domains of about 0.8 MB of cleaned text each: code, manuals, books, encyclopedia, standards,
  web, Q&A, legal), tokenized once with
  `data-select tokenize 'work/corpus-small/*.jsonl' --out work/exp-tokens --vocab-size 4096 --val-fraction 0.02 --seed 0`
  (sentencepiece BPE): **{splits['train']['tokens']:,} train tokens** ({splits['train']['documents']} documents) and
  **{splits['val']['tokens']:,} validation tokens** ({splits['val']['documents']} held-out documents). Fingerprint
  `{manifest['fingerprint'][:16]}`. Every run stays inside one epoch (no token is seen twice).
- **Model** (`configs/train/exp-base.yaml`): Llama, hidden {m.hidden_size}, {m.num_layers} layers, {m.num_heads} heads,
  MLP {m.intermediate_size}, vocab {vocab}, untied: **{n_params:,} parameters** ({n_non_emb:,} non-embedding);
  sequence length {cfg.data.seq_len}, batch {cfg.budget.global_batch_size} sequences = {tps:,} tokens per step; AdamW
  β=(0.9, 0.95), weight decay 0.1, clip 1.0, fp32.
- **Budgets**: {budgets}; linear warm-up {layout.warmup} steps (5% of the smallest budget) for every schedule;
  LR floor 0 (`min_lr_ratio: 0`) for every schedule.
- **Validation loss**: mean token loss over the *whole* validation split, at the end of each run.
- **Machine**: {os.cpu_count()} CPU cores ({cpu}), no GPU, shared with other jobs; torch {torch.__version__},
  one torch thread per process (up to three driver processes ran side by side). {_throughput(layout)}
- **Regenerate** (each driver skips finished runs; `--quick` runs a tiny version under `work/`):

```bash
python -m data_select corpus --out work/corpus-small
python -m data_select tokenize 'work/corpus-small/*.jsonl' --out work/exp-tokens --vocab-size 4096 --val-fraction 0.02 --seed 0
python tools/experiments/schedules.py --seeds 3   # (a); --shard 0/2 and --shard 1/2 split it over two processes
python tools/experiments/branching.py --seeds 0 1 # (b); needs the LR chosen by (a)'s sweep
python tools/experiments/prediction.py            # (d); fits on (a)'s runs, trains nothing
```
"""
