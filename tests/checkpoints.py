"""What tests compare in checkpoints: the optimizer's whole state in any engine's format, finite weights, and
a skipped step that changed nothing."""
import json

import torch

from pretrain import checkpoint as ckpt_io
from pretrain.engines.weights import read_dcp, read_full
from tests.conftest import read_jsonl


def _flatten(obj, prefix=""):
    """Tensors and plain values of a nested state, keyed by their dotted path."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _flatten(val, f"{prefix}{key}.").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in _flatten(val, f"{prefix}{i}.").items()}
    if isinstance(obj, (torch.Tensor, int, float, str, bool)) or obj is None:
        return {prefix[:-1]: obj}
    return {}


def optimizer_state(ckpt):
    """Every tensor and number of a checkpoint's optimizer state, whichever engine wrote it."""
    if (ckpt / "dcp").is_dir():
        return read_dcp(ckpt / "dcp", "optim")
    if (ckpt / "ds").is_dir():
        return {k: v for f in sorted((ckpt / "ds").rglob("*optim_states.pt"))
                for k, v in _flatten(torch.load(f, map_location="cpu", weights_only=False), f"{f.name}.").items()}
    return _flatten(torch.load(ckpt / "optimizer.pt", weights_only=True))


def _same(a, b):
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def different_entries(a: dict, b: dict) -> list[str]:
    """Keys of two flattened states whose values differ (or that only one has)."""
    return sorted(set(a) ^ set(b)) + [k for k in a if k in b and not _same(a[k], b[k])]


def ckpt_of(run, step):
    return run / "checkpoints" / ckpt_io.step_dir_name(step)


def assert_all_finite(run):
    for ckpt in sorted((run / "checkpoints").glob("step-*")):
        assert all(torch.isfinite(w).all() for w in read_full(ckpt).values()), ckpt


NOT_APPLIED = ("lr", "overflow")  # set before every step by the schedule; DeepSpeed's record of the last step


def applied_state(ckpt):
    """The optimizer state an applied step changes: all of it (both Adam moments, the step count, the other
    hyper-parameters) but the learning rate, which the schedule sets before every step, applied or not, and
    DeepSpeed's flag saying whether its last step was dropped."""
    return {k: v for k, v in optimizer_state(ckpt).items() if k.rsplit(".", 1)[-1] not in NOT_APPLIED}


def assert_step_skipped(run, step):
    """The skipped step changed nothing: its checkpoint holds the previous step's weights and optimizer state
    (Adam's moments and step count), the next step did change them, and the log marks and counts the skip."""
    before, at, after = (ckpt_of(run, s) for s in (step - 1, step, step + 1))
    wa, wb, wc = read_full(before), read_full(at), read_full(after)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wb[k], wc[k]) for k in wb)
    sa, sb, sc = applied_state(before), applied_state(at), applied_state(after)
    assert different_entries(sa, sb) == []
    assert {k.rsplit(".", 1)[-1] for k in different_entries(sb, sc)} >= {"exp_avg", "exp_avg_sq", "step"}
    records = {r["step"]: r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "train"}
    assert records[step].get("skipped") and not any(records[s].get("skipped") for s in records if s != step)
    assert json.loads((run / "summary.json").read_text())["skipped_steps"] == 1
    assert json.loads((ckpt_of(run, step) / "trainer.json").read_text())["skipped_steps"] == 1
    assert_all_finite(run)
