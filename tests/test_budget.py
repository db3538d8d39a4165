"""Selection by token budget (issue 10, point 2): estimates from the table's bytes with bytes per
token measured with the run's tokenizer, every method, DiSF's per-batch quotas, the report.

The corpus is built so that every number is known by hand: a word-level tokenizer (one token per
word), domain "short" of 40 four-letter words per document (199 bytes: 4.975 bytes per token) and
domain "long" of 200 nine-letter words (1,999 bytes: 9.995 bytes per token). A document then
costs exactly 41 or 201 tokens with its EOS, estimated and actual. Also: tokenizing a selection
reads only the selected records (issue 9, point 3).
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from data_select import budget, disf
from data_select.cli import main
from data_select.embed import embed_corpus, load_features
from data_select.errors import UsageError
from data_select.pipeline import load_run_config
from data_select.select import HashingFeaturesWarning, select_features

SHORT, LONG = 41, 201  # tokens of a document, EOS included


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    rng = np.random.default_rng(0)
    words = {"short": [f"{a}{b}{c}{d}" for a, b, c, d in rng.choice(list("abcdefgh"), size=(400, 4))],
             "long": [f"{w}xyzxy" for w in ("".join(x) for x in rng.choice(list("abcdefgh"), size=(400, 4)))]}
    vocab = {"[UNK]": 0, "</s>": 1}
    for w in words["short"] + words["long"]:
        vocab.setdefault(w, len(vocab))
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", eos_token="</s>").save_pretrained(tmp / "tok")
    with open(tmp / "corpus.jsonl", "w") as f:
        for i in range(900):
            d = "short" if i % 3 else "long"  # 600 short, 300 long documents, interleaved
            f.write(json.dumps({"text": " ".join(rng.choice(words[d], size=40 if d == "short" else 200)),
                                "domain": d}) + "\n")
    embed_corpus([tmp / "corpus.jsonl"], tmp / "f", encoder="hashing", dim=16, progress=False)
    return tmp


def _tokens(table, rows):
    return np.where(np.array(table.domain_names(table.column("domain", rows))) == "short", SHORT, LONG)


def test_bytes_per_token_is_measured_per_domain_with_the_given_tokenizer(setup):
    table = load_features(setup / "f").table
    est = budget.measure_bytes_per_token(table, tokenizer=setup / "tok")
    assert est["by_domain"] == pytest.approx({"short": 199 / 40, "long": 1999 / 200})
    assert est["bytes_per_token"] == pytest.approx((600 * 199 + 300 * 1999) / (600 * 40 + 300 * 200))
    assert est["sample"]["documents"] == 900 and str(setup / "tok") in est["how"]
    np.testing.assert_allclose(budget.estimated_tokens(table, est), _tokens(table, np.arange(900)))


@pytest.mark.parametrize("method", ["random", "dsir", "dedup", "dedup+random", "disf", "dedup+disf"])
def test_every_method_selects_by_token_budget(setup, method):
    budget_tokens = 20_000
    kw = dict(target="short") if method == "dsir" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HashingFeaturesWarning)
        rec = select_features(setup / "f", setup / f"s-{method}", method=method, tokens=budget_tokens, batch_size=128,
                              tokenizer=str(setup / "tok"), progress=False, **kw)
    table = load_features(setup / "f").table
    picked = np.load(setup / f"s-{method}" / "selection.npy")
    got = _tokens(table, picked)
    assert rec["tokens"]["estimated_selected"] == pytest.approx(got.sum())
    assert rec["tokens"]["estimated_pool"] == pytest.approx(600 * SHORT + 300 * LONG)
    if method in ("random", "dsir", "dedup", "dedup+random"):  # documents in the method's order until the budget is covered
        assert budget_tokens <= got.sum() < budget_tokens + LONG
        return
    # DiSF: each batch's quota is its share of the budget by its tokens; picks stop once it is met
    plan = disf.batch_plan(900, 128, 0)
    per_batch = np.array([_tokens(table, np.sort(b)).sum() for b in plan])
    quotas = budget_tokens * per_batch / per_batch.sum()
    at = 0
    for b, quota in zip(plan, quotas):  # picks are listed batch by batch, in pick order
        mine = picked[at:at + int(np.isin(picked, b).sum())]
        at += len(mine)
        costs = _tokens(table, mine)
        assert np.isin(mine, b).all() and costs.sum() >= quota > costs.sum() - costs[-1]
    assert at == len(picked)


def test_budget_over_the_pool_selects_everything_and_says_so(setup, capsys):
    assert main(["select", "--features", str(setup / "f"), "--out", str(setup / "all"), "--method", "random",
                 "--tokens", "1M", "--tokenizer", str(setup / "tok"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "selected 900 of 900" in out and "everything is selected" in out
    rec = json.loads((setup / "all" / "select.json").read_text())
    assert rec["tokens"]["everything"] and rec["counts"]["selected"] == 900


def test_tokens_with_ratio_is_an_error_naming_both(setup, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["select", "--features", str(setup / "f"), "--out", str(tmp_path), "--tokens", "5000", "--ratio", "0.1"])
    assert "--ratio" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--ratio and --tokens"):
        select_features(setup / "f", tmp_path, ratio=0.1, tokens=5000)
    with pytest.raises(UsageError, match="config keys select.ratio and select.tokens"):
        load_run_config(None, ["inputs=[x]", "select.ratio=0.1", "select.tokens=5000"])
    with pytest.raises(UsageError, match="select.tokens must be a positive"):
        load_run_config(None, ["inputs=[x]", "select.tokens=-3"])


def test_disf_on_hashing_features_warns(setup, tmp_path):
    with pytest.warns(HashingFeaturesWarning, match="short documents"):
        rec = select_features(setup / "f", tmp_path, method="disf", ratio=0.1, batch_size=128, progress=False)
    assert "hashing" in rec["warnings"][0]


def test_run_reports_files_bytes_estimated_and_actual_tokens(setup, tmp_path, capsys):
    cfg = {"inputs": [str(setup / "corpus.jsonl")], "out_dir": str(tmp_path / "run"), "progress": False,
           "embed": {"encoder": "hashing", "dim": 16},
           "select": {"method": "disf", "tokens": 15_000, "batch_size": 128},
           "tokenize": {"tokenizer": str(setup / "tok"), "val_fraction": 0.1, "workers": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HashingFeaturesWarning)
        assert main(["run", str(tmp_path / "run.yaml")]) == 0
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    sel = rep["selected"]
    manifest = json.loads((tmp_path / "run" / "tokens" / "manifest.json").read_text())
    written = manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"]
    assert sel["tokens"] == written == sel["estimated_tokens"] >= 15_000 == sel["token_budget"]
    files = sel["files"]
    assert sel["bytes"] == sum(d["selected_bytes"] for d in rep["domains"].values())
    assert {k: d["tokens"] for k, d in rep["domains"].items()} == {k: d["estimated_tokens"] for k, d in rep["domains"].items()}
    assert f"selected: {files:,} files, {sel['bytes']:,} bytes, estimated tokens {written:,}, tokens {written:,}" in out


def test_tokenize_refuses_a_selection_of_other_inputs(setup, tmp_path):
    from data_select.errors import DataSelectError
    from data_select.tokenize import tokenize_corpus

    select_features(setup / "f", tmp_path / "sel", method="random", ratio=0.1, batch_size=128, progress=False)
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "a b c"}\n')
    with pytest.raises(DataSelectError, match=r"made with inputs=\[.*corpus\.jsonl.*\], this run has inputs=\[.*other\.jsonl"):
        tokenize_corpus([other], tmp_path / "tok", selection=tmp_path / "sel", tokenizer=setup / "tok", progress=False)


def test_tokenizing_a_selection_reads_only_its_records_once_and_never_scans(setup, tmp_path, monkeypatch):
    from data_select import table as T
    from data_select.tokenize import tokenize_corpus

    select_features(setup / "f", tmp_path / "sel", method="random", ratio=0.05, batch_size=128, progress=False)
    picked = np.sort(np.load(tmp_path / "sel" / "selection.npy"))
    lines = (setup / "corpus.jsonl").read_bytes().splitlines(keepends=True)
    offsets = np.cumsum([0] + [len(line) for line in lines[:-1]])  # where each record starts, by hand
    read, real = [], T.read_texts_at

    def spy(path, kind, locations, text_field="text"):
        return real(path, kind, (read.append(loc[:2]) or loc for loc in locations), text_field)

    monkeypatch.setattr(T, "read_texts_at", spy)
    monkeypatch.setattr(T, "iter_documents", lambda *a, **k: pytest.fail("tokenize --selection scanned the inputs"))
    m = tokenize_corpus([setup / "corpus.jsonl"], tmp_path / "tok", selection=tmp_path / "sel", tokenizer=setup / "tok",
                        progress=False)
    assert read == [(int(offsets[r]), len(lines[r].rstrip(b"\n"))) for r in picked]
    assert m["sources"]["documents"] == len(picked) > 0
