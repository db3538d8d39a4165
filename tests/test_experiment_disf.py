"""Pure helpers of tools/experiments/disf.py (sampling, tables, verdicts, plots) on fake inputs; no training."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "experiments"))

import disf  # noqa: E402
from common import ExperimentError  # noqa: E402


def _row(method: str, seed: int, loss: float, **extra) -> dict:
    row = {"method": method, "seed": seed, "files": 100, "train_tokens": 5000, "dominance": 0.3,
           "dominance_random": 0.4, "dominance_pool": 0.41, "effective_rank": 60.0, "effective_rank_random": 40.0,
           "loss": loss, "macro_loss": loss + 0.1}
    row.update({f"loss_{d}": loss + i * 0.01 for i, d in enumerate(disf.DOMAINS)})
    row.update({f"files_{d}": 10 + i for i, d in enumerate(disf.DOMAINS)})
    row.update(extra)
    return row


def test_truncate_utf8_cuts_on_a_character_boundary():
    assert disf.truncate_utf8("abc", 10) == "abc"
    assert disf.truncate_utf8("héllo", 2) == "h"  # 'é' is 2 bytes: no half character
    assert disf.truncate_utf8("héllo", 3) == "hé"


def test_overall_losses_token_weighted_and_macro():
    overall, macro = disf.overall_losses({"a": {"loss": 2.0, "tokens": 300}, "b": {"loss": 4.0, "tokens": 100}})
    assert overall == pytest.approx(2.5)
    assert macro == pytest.approx(3.0)
    with pytest.raises(ExperimentError):
        disf.overall_losses({})


def test_aggregate_means_and_sample_std_over_seeds():
    aggs = {a["method"]: a for a in disf.aggregate([_row("disf", 0, 3.0), _row("disf", 1, 3.2), _row("random", 0, 3.5)])}
    assert aggs["disf"]["seeds"] == [0, 1]
    assert aggs["disf"]["loss"] == pytest.approx(3.1)
    assert aggs["disf"]["loss_std"] == pytest.approx(0.1414, abs=1e-4)
    assert aggs["random"]["loss_std"] == 0.0


def test_verdict_separates_real_gaps_from_noise():
    rows = [_row("disf-minilm", 0, 3.0), _row("disf-minilm", 1, 3.02), _row("random", 0, 3.5), _row("random", 1, 3.52),
            _row("dsir", 0, 3.01), _row("dsir", 1, 3.05)]
    aggs = disf.aggregate(rows)
    v = disf.verdict(aggs, "disf-minilm", "random")
    assert "0.500 lower (better)" in v and "beyond seed noise" in v
    v = disf.verdict(aggs, "disf-minilm", "dsir")
    assert "lower (better)" in v and "within seed noise" in v
    assert "one seed only" in disf.verdict(disf.aggregate([_row("disf-minilm", 0, 3.0), _row("random", 0, 2.9)]),
                                           "disf-minilm", "random")
    assert "higher (worse)" in disf.verdict(disf.aggregate([_row("disf-minilm", 0, 3.0), _row("random", 0, 2.9)]),
                                            "disf-minilm", "random")
    with pytest.raises(ExperimentError):
        disf.verdict(aggs, "disf-minilm", "nope")


def test_tables_have_one_row_per_method_and_every_domain():
    aggs = disf.aggregate([_row("disf-minilm", 0, 3.0), _row("disf-minilm", 1, 3.2), _row("random", 0, 3.5)])
    table = disf.results_table(aggs)
    lines = table.splitlines()
    assert len(lines) == 4
    assert all(d in lines[0] for d in disf.DOMAINS)
    assert "3.100 ± 0.141" in table  # two seeds: mean ± std
    assert "| random | 1 |" in table and "3.500 |" in table
    dt = disf.domain_table([_row("disf-minilm", 0, 3.0)])
    assert dt.splitlines()[2] == "| disf-minilm | " + " | ".join(str(10 + i) for i in range(len(disf.DOMAINS))) + " |"


def test_plot_domain_losses_writes_a_png(tmp_path):
    aggs = disf.aggregate([_row("disf-minilm", 0, 3.0), _row("disf-minilm", 1, 3.2), _row("random", 0, 3.5)])
    out = tmp_path / "bars.png"
    disf.plot_domain_losses(aggs, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def _fake_corpus(root: Path, n: int = 12) -> Path:
    root.mkdir()
    for d in disf.DOMAINS:
        with open(root / f"{d}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"id": f"{d}/{i}", "domain": d, "text": f"{d} document {i} " + "x" * 50}) + "\n")
    (root / "corpus.json").write_text(json.dumps({"status": "complete"}))
    return root


def test_sample_corpus_draws_disjoint_deterministic_sets(tmp_path):
    corpus = _fake_corpus(tmp_path / "corpus")
    kw = dict(per_domain=5, heldout=3, target=2, cap_bytes=30, seed=0)
    rec = disf.sample_corpus(corpus, tmp_path / "a", **kw)
    disf.sample_corpus(corpus, tmp_path / "b", **kw)
    assert rec["domains"]["books"] == {"corpus": 12, "pool": 5, "heldout": 3, "target": 2, "pool_bytes": 150}
    assert rec["domains"]["code"]["target"] == 0
    for d in disf.DOMAINS:
        pool = [json.loads(x) for x in (tmp_path / "a" / "pool" / f"{d}.jsonl").read_text().splitlines()]
        held = [json.loads(x) for x in (tmp_path / "a" / "heldout" / f"{d}.jsonl").read_text().splitlines()]
        assert not {r["id"] for r in pool} & {r["id"] for r in held}
        assert all(len(r["text"].encode()) <= 30 for r in pool)
        assert (tmp_path / "a" / "pool" / f"{d}.jsonl").read_bytes() == (tmp_path / "b" / "pool" / f"{d}.jsonl").read_bytes()
    target = [json.loads(x) for x in (tmp_path / "a" / "target" / "target.jsonl").read_text().splitlines()]
    assert sorted({r["domain"] for r in target}) == sorted(disf.TARGET_DOMAINS) and len(target) == 4
    held_books = {json.loads(x)["id"] for x in (tmp_path / "a" / "heldout" / "books.jsonl").read_text().splitlines()}
    assert not {r["id"] for r in target} & held_books


def test_sample_corpus_refuses_a_too_small_or_incomplete_corpus(tmp_path):
    corpus = _fake_corpus(tmp_path / "corpus", n=6)
    with pytest.raises(ExperimentError, match=r"code.jsonl: 6 documents, need 8"):
        disf.sample_corpus(corpus, tmp_path / "a", per_domain=5, heldout=3, target=2, cap_bytes=30, seed=0)
    (corpus / "corpus.json").write_text(json.dumps({"status": "partial"}))
    with pytest.raises(ExperimentError, match="not a complete corpus"):
        disf.sample_corpus(corpus, tmp_path / "b", per_domain=1, heldout=1, target=1, cap_bytes=30, seed=0)


def test_plot_top_spectra_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    eigs = {"pool": np.sort(rng.exponential(size=64))[::-1], "disf": np.ones(64)}
    out = tmp_path / "spectra.png"
    disf.plot_top_spectra(eigs, out, kmax=20, top_k=5)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [out]


def test_welch_p_small_for_separated_methods_and_nan_with_one_seed():
    rows = [_row("a", s, 3.0 + 0.01 * s) for s in range(4)] + [_row("b", s, 3.5 + 0.01 * s) for s in range(4)]
    assert disf.welch_p(rows, "a", "b") < 1e-6
    assert disf.welch_p(rows, "a", "a") == pytest.approx(1.0)
    assert np.isnan(disf.welch_p(rows + [_row("c", 0, 3.0)], "a", "c"))
