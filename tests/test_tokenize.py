"""data_select.tokenize: shards + manifest per docs/FORMATS.md, deterministic across worker counts."""
from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from data_select import tokenize as tkz
from data_select.cli import main
from data_select.errors import DataSelectError, NoDocumentsError, UsageError
from data_select.sources import iter_documents
from data_select.tokenize import load_tokenizer, tokenize_corpus, train_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
VOCAB = 600


def _corpus(root: Path) -> Path:
    """Two domains of real text (stdlib code, its docstrings as prose) plus edge-case documents."""
    root.mkdir(parents=True)
    code = sorted(STDLIB.glob("[a-m]*.py"))[:24]
    with open(root / "code.jsonl", "w", encoding="utf-8") as f:
        for p in code:
            f.write(json.dumps({"text": p.read_text(encoding="utf-8")[:4000], "domain": "code"}) + "\n")
    with open(root / "prose.jsonl", "w", encoding="utf-8") as f:
        for p in code:
            text = p.read_text(encoding="utf-8")
            doc = text.split('"""')[1] if text.count('"""') >= 2 else text[:500]
            f.write(json.dumps({"text": doc.strip() + "\n", "domain": "prose"}) + "\n")
        f.write(json.dumps({"text": "literal specials <s> and </s> stay text; émoji 🤖 falls back to bytes",
                            "domain": "prose"}) + "\n")
        f.write(json.dumps({"text": "   ", "domain": "prose"}) + "\n")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("tok") / "corpus")


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tok") / "tokens"
    m = tokenize_corpus([corpus], out, vocab_size=VOCAB, val_fraction=0.1, shard_tokens=20_000, num_workers=2,
                        progress=False)
    return out, m


def _segments(out: Path, m: dict, split: str) -> list[np.ndarray]:
    """Each document's tokens (EOS stripped), in shard order."""
    eos = m["tokenizer"]["eos_id"]
    segs = []
    for s in m["splits"][split]["shards"]:
        arr = np.load(out / s["path"], mmap_mode="r")
        assert arr.dtype == np.dtype(m["dtype"]) and arr.ndim == 1
        assert arr[-1] == eos
        cuts = np.flatnonzero(arr == eos)
        assert len(cuts) == s["documents"]
        start = 0
        for c in cuts:
            segs.append(np.asarray(arr[start:c]))
            start = c + 1
    return segs


def test_manifest_matches_the_contract(built):
    out, m = built
    assert json.loads((out / "manifest.json").read_text()) == m
    assert m["format"] == "budgetlm-tokens/1" and m["dtype"] == "uint16"
    assert m["tokenizer"] == {"path": "tokenizer", "kind": "sentencepiece", "vocab_size": VOCAB,
                              "eos_id": 2, "bos_id": 1, "pad_id": 0}
    assert m["sources"]["documents"] == 49 and m["sources"]["rejected"] == {"empty": 1}
    assert m["domains"]["code"]["documents"] == 24 and m["domains"]["prose"]["documents"] == 25
    train, val = m["splits"]["train"], m["splits"]["val"]
    assert train["documents"] + val["documents"] == 49
    assert 1 <= val["documents"] < 49
    assert train["tokens"] + val["tokens"] == sum(d["tokens"] for d in m["domains"].values())
    assert len(train["shards"]) >= 2, "shard_tokens=20000 must split the train set"
    for split in (train, val):
        assert split["tokens"] == sum(s["tokens"] for s in split["shards"])
        for s in split["shards"]:
            assert hashlib.sha256((out / s["path"]).read_bytes()).hexdigest() == s["sha256"]
            assert len(np.load(out / s["path"])) == s["tokens"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [], "no temp files left"


def test_every_document_round_trips_with_eos_and_no_bos(built, corpus):
    out, m = built
    docs = list(iter_documents([corpus]))
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    train_segs, val_segs = _segments(out, m, "train"), _segments(out, m, "val")
    decoded = [tok.decode(s.tolist()) for s in train_segs + val_segs]
    assert sorted(decoded) == sorted(d.text for d in docs), "byte-exact round trip of every document"
    train_texts = [tok.decode(s.tolist()) for s in train_segs]
    assert train_texts == [d.text for d in docs if d.text in set(train_texts)], "input order kept"
    assert all(m["tokenizer"]["bos_id"] not in s for s in train_segs + val_segs)
    assert set(train_texts).isdisjoint(tok.decode(s.tolist()) for s in val_segs), "split by whole documents"


def test_autotokenizer_and_spm_model_encode_like_the_shards(built, corpus):
    out, m = built
    tok = AutoTokenizer.from_pretrained(out / "tokenizer", local_files_only=True)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer" / "tokenizer.model"))
    segs = {tok.decode(s.tolist()): s.tolist() for s in _segments(out, m, "train") + _segments(out, m, "val")}
    for doc in iter_documents([corpus]):
        ids = tok(doc.text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert ids == segs[doc.text] == sp.encode(doc.text)
        if "</s>" in doc.text:
            assert m["tokenizer"]["eos_id"] not in ids, "a literal '</s>' in text must not become EOS"
    assert tok.eos_token_id == 2 and tok.pad_token_id == 0 and len(tok) == VOCAB


def test_output_does_not_depend_on_worker_count(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(tkz, "_CHUNK_DOCS", 5)
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        m = tokenize_corpus([corpus], out, vocab_size=VOCAB, val_fraction=0.1, shard_tokens=20_000,
                            num_workers=workers, progress=False)
        runs[workers] = (m, {p.name: p.read_bytes() for p in out.glob("*.npy")})
    (m1, f1), (m2, f2) = runs[1], runs[2]
    assert f1 == f2 and len(f1) >= 3
    assert m1["fingerprint"] == m2["fingerprint"]
    assert m1 == m2


def test_val_split_is_seeded_by_document_id(corpus, tmp_path, monkeypatch):
    docs = list(iter_documents([corpus]))

    def val_ids(seed):
        u = np.array([tkz._unit_hash(seed, "split", d.id) for d in docs])
        return {d.id for d, v in zip(docs, tkz._Split(u, 0.2).val) if v}

    assert val_ids(0) == val_ids(0) and val_ids(0) != val_ids(1)
    assert {d.id for d in docs if tkz._unit_hash(0, "split", d.id) < 0.2} == val_ids(0)
    two = tmp_path / "two.jsonl"
    two.write_text('{"text": "first document here"}\n{"text": "second document here"}\n')
    m = tokenize_corpus([two], tmp_path / "out", vocab_size=300, val_fraction=0.01, num_workers=1, progress=False)
    assert m["splits"]["val"]["documents"] == 1 and m["splits"]["train"]["documents"] == 1
    m = tokenize_corpus([two], tmp_path / "out", vocab_size=300, val_fraction=0.99, num_workers=1, progress=False)
    assert m["splits"]["train"]["documents"] == 1, "the train split is never emptied"


def test_selection_filters_and_rejects_unknown_ids(corpus, built, tmp_path):
    out, _ = built
    sel = tmp_path / "selection.jsonl"
    sel.write_text("".join(json.dumps({"id": i, "score": 0.5}) + "\n" for i in ("code.jsonl:3", "prose.jsonl:7")))
    m = tokenize_corpus([corpus], tmp_path / "sel", tokenizer=out / "tokenizer", selection=sel, num_workers=1,
                        progress=False)
    assert m["sources"]["documents"] == 2 and m["sources"]["not_selected"] == 47
    assert m["tokenizer"]["kind"] == "hf"
    docs = {d.id: d.text for d in iter_documents([corpus])}
    tok = load_tokenizer(tmp_path / "sel" / "tokenizer")
    got = sorted(tok.decode(s.tolist()) for sp in ("train", "val") for s in _segments(tmp_path / "sel", m, sp))
    assert got == sorted([docs["code.jsonl:3"], docs["prose.jsonl:7"]])
    sel.write_text('{"id": "code.jsonl:3"}\n{"id": "nope.jsonl:1"}\n')
    with pytest.raises(UsageError, match="nope.jsonl:1"):
        tokenize_corpus([corpus], tmp_path / "sel2", tokenizer=out / "tokenizer", selection=sel, progress=False)
    sel.write_text('{"id": "code.jsonl:3"}\nnot json\n')
    with pytest.raises(UsageError, match=r"selection\.jsonl:2"):
        tokenize_corpus([corpus], tmp_path / "sel3", tokenizer=out / "tokenizer", selection=sel, progress=False)


def test_given_tokenizer_reproduces_the_trained_tokens(corpus, built, tmp_path):
    out, m = built
    m2 = tokenize_corpus([corpus], tmp_path / "again", tokenizer=out / "tokenizer", val_fraction=0.1,
                         shard_tokens=20_000, num_workers=1, progress=False)
    assert [s["sha256"] for s in m2["splits"]["train"]["shards"]] == [s["sha256"] for s in m["splits"]["train"]["shards"]]
    assert m2["fingerprint"] == m["fingerprint"]


def test_large_vocab_uses_uint32(tmp_path):
    vocab = {"[UNK]": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", eos_token="</s>").save_pretrained(tmp_path / "big")
    (tmp_path / "d.jsonl").write_text('{"text": "w69999 w5 w0"}\n{"text": "w1 w2"}\n')
    m = tokenize_corpus([tmp_path / "d.jsonl"], tmp_path / "out", tokenizer=tmp_path / "big", num_workers=1,
                        progress=False)
    assert m["dtype"] == "uint32" and m["tokenizer"]["vocab_size"] == 70_002
    tokens = np.concatenate([np.load(tmp_path / "out" / s["path"]) for sp in ("train", "val")
                             for s in m["splits"][sp]["shards"]])
    assert tokens.dtype == np.uint32 and 70_001 in tokens.tolist()


def test_empty_corpus_fails_before_training(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "blank.txt").write_text("\n\n")
    with pytest.raises(NoDocumentsError, match="empty=1"):
        tokenize_corpus([tmp_path / "in"], tmp_path / "out", vocab_size=300, progress=False)
    assert not (tmp_path / "out" / "tokenizer").exists()


def test_rerun_replaces_old_output(corpus, built, tmp_path):
    out, _ = built
    tok = out / "tokenizer"
    tokenize_corpus([corpus], tmp_path / "o", tokenizer=tok, shard_tokens=2_000, num_workers=1, progress=False)
    many = len(list((tmp_path / "o").glob("*.npy")))
    m = tokenize_corpus([corpus], tmp_path / "o", tokenizer=tok, shard_tokens=10**9, num_workers=1, progress=False)
    names = sorted(p.name for p in (tmp_path / "o").glob("*.npy"))
    assert many > 2 and names == sorted(s["path"] for sp in m["splits"].values() for s in sp["shards"])


def test_bad_arguments_are_clear_errors(corpus, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_tokenizer(tmp_path / "no-tokenizer")
    with pytest.raises(UsageError, match="val_fraction"):
        tokenize_corpus([corpus], tmp_path / "o", val_fraction=1.0)
    with pytest.raises(UsageError, match="too small"):
        train_tokenizer(["some text for a tokenizer"] * 3, tmp_path / "t", vocab_size=50)
    with pytest.raises(UsageError, match="model_type"):
        train_tokenizer(["x"], tmp_path / "t", model_type="unigram")
    assert issubclass(UsageError, DataSelectError)


def test_cli_end_to_end(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["tokenize", str(corpus), "--out", str(out), "--vocab-size", "400", "--val-fraction", "0.05",
               "--workers", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert f"documents: {m['sources']['documents']}" in printed and "empty=1" in printed
    assert m["tokenizer"]["vocab_size"] == 400 and m["val_fraction"] == 0.05
    rc = main(["tokenize", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 2
    assert "no usable document" in capsys.readouterr().err
