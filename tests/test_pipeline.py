"""`data-select` end to end: select / report / run and the CLI, with the hashing encoder."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from data_select.cli import main
from data_select.errors import DataSelectError, UsageError
from data_select.pipeline import (PipelineError, load_run_config, report, run, select_features,
                                  selection_size)

DOMAINS = {
    "code": "def return import class self value list dict loop print error file open read write".split(),
    "law": "court shall party contract hereby clause agreement liability notice section whereas".split(),
    "bio": "cell protein gene enzyme membrane tissue organism species receptor molecule dna".split(),
}
GOOD = 3 * 100 + 40 + 6  # jsonl records + text files + records in the .gz
BAD = 7  # malformed, empty record, missing text, non-string text, binary file, empty file, corrupt .gz


def make_corpus(root, seed=0):
    """A three-domain corpus with bad records and files; returns the number of input documents."""
    rng = np.random.default_rng(seed)

    def text(d):
        return " ".join(rng.choice(DOMAINS[d] + ["the", "of", "and"], size=int(rng.integers(20, 120))))

    root.mkdir()
    with open(root / "mixed.jsonl", "w") as f:
        for i in range(300):
            d = list(DOMAINS)[i % 3]
            f.write(json.dumps({"text": text(d), "domain": d}) + "\n")
        f.write("{oops\n")
        f.write(json.dumps({"text": "", "domain": "law"}) + "\n")
        f.write(json.dumps({"body": "no text field"}) + "\n")
        f.write(json.dumps({"text": 42}) + "\n")
    (root / "notes").mkdir()
    for i in range(40):
        (root / "notes" / f"n{i:02d}.txt").write_text(text("bio"))
    (root / "notes" / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    (root / "notes" / "empty.txt").write_text("")
    with gzip.open(root / "extra.jsonl.gz", "wt") as f:
        for _ in range(6):
            f.write(json.dumps({"text": text("code"), "domain": "code"}) + "\n")
    (root / "broken.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n')[:5])  # truncated header
    return GOOD + BAD


def write_config(tmp_path, corpus, **extra):
    cfg = {"inputs": [str(corpus)], "out_dir": str(tmp_path / "out"), "progress": False,
           "embed": {"encoder": "hashing", "dim": 32, "batch_size": 16},
           "select": {"method": "disf", "ratio": 0.25, "batch_size": 64},
           "tokenize": {"vocab_size": 320, "val_fraction": 0.05, "workers": 1},
           "report": {"top_k": 5}}
    for k, v in extra.items():
        cfg[k].update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    n_input = make_corpus(tmp / "corpus")
    cfg = load_run_config(write_config(tmp, tmp / "corpus"))
    return tmp, n_input, cfg, run(cfg)


def test_run_end_to_end_and_accounting_adds_up(pipeline_run):
    tmp, n_input, cfg, res = pipeline_run
    out = tmp / "out"
    for name in ("features/features.f32", "selection.jsonl", "select.json", "tokens/manifest.json",
                 "report.json", "spectrum.png", "domains.png", "run.json"):
        assert (out / name).is_file(), name
    rep = json.loads((out / "report.json").read_text())
    acc = rep["accounting"]
    assert acc["input_documents"] == n_input
    assert acc["selected"] + acc["not_selected"] + acc["deduplicated"] + acc["rejected"]["total"] == n_input
    assert acc["rejected"]["total"] == BAD and acc["adds_up"]
    assert acc["rejected"]["by_reason"] == {"binary": 1, "corrupt": 1, "empty": 2, "malformed_json": 1,
                                            "missing_text": 1, "non_string_text": 1}
    sel = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    assert len(sel) == acc["selected"] == selection_size(GOOD, ratio=0.25, k_per_batch=None, batch_size=64, seed=0)
    assert [r["rank"] for r in sel] == list(range(len(sel))) and len({r["id"] for r in sel}) == len(sel)
    dom = rep["domains"]
    assert sum(d["pool"] for d in dom.values()) == GOOD and sum(d["selected"] for d in dom.values()) == len(sel)
    assert {k: d["pool"] for k, d in dom.items()} == {"bio": 100, "code": 106, "law": 100, "unknown": 40}
    manifest = json.loads((out / "tokens" / "manifest.json").read_text())
    sp = manifest["splits"]
    assert sp["train"]["documents"] + sp["val"]["documents"] == len(sel)
    assert res["tokens"]["fingerprint"] == manifest["fingerprint"]
    for name in ("selected", "pool", "random"):
        assert 0 < rep["spectrum"][name]["dominance"] <= 1
        assert 1 <= rep["spectrum"][name]["effective_rank"] <= 32
    assert rep["spectrum"]["selected"]["files"] == rep["spectrum"]["random"]["files"] == len(sel)


def test_rerun_skips_finished_steps(pipeline_run):
    tmp, _, cfg, res = pipeline_run
    out = tmp / "out"
    watched = ["features/features.f32", "selection.jsonl", "tokens/manifest.json", "report.json"]
    before = {p: (out / p).stat().st_mtime_ns for p in watched}
    again = run(cfg)
    assert {p: (out / p).stat().st_mtime_ns for p in watched} == before
    assert again["select"] == res["select"] and again["report"] == res["report"]


def test_changed_selection_redoes_later_steps(tmp_path):
    make_corpus(tmp_path / "corpus")
    path = write_config(tmp_path, tmp_path / "corpus", tokenize={"enabled": False})
    first = run(load_run_config(path))
    second = run(load_run_config(path, ["select.method=random"]))
    assert second["select"]["method"] == "random" and second["report"]["selection"]["method"] == "random"
    assert second["select"]["counts"]["selected"] == first["select"]["counts"]["selected"]
    assert second["select"]["selection_sha256"] != first["select"]["selection_sha256"]
    assert "tokens" not in second


def test_exact_copies_are_dropped_at_embed_and_near_copies_are_their_own_bucket(tmp_path):
    corpus = tmp_path / "dups.jsonl"
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(sum(DOMAINS.values(), []), size=40)) for _ in range(60)]
    near = [t + " extra" for t in texts[:10]]  # cosine ~0.99 to their originals (hashing, 32-d)
    with open(corpus, "w") as f:
        for t in texts + near + texts[10:15]:  # then five exact copies under new ids
            f.write(json.dumps({"text": t, "domain": "mix"}) + "\n")
    from data_select.embed import embed_corpus, load_features

    embed_corpus([corpus], tmp_path / "f", encoder="hashing", dim=32, progress=False)
    table = load_features(tmp_path / "f").table
    assert table.n == 70 and table.rejected.counts == {"duplicate_content": 5}  # never embedded
    assert [e["where"] for e in table.rejected.examples["duplicate_content"]] == [f"{corpus}:{i}" for i in (71, 72, 73)]
    rec = select_features(tmp_path / "f", tmp_path / "sel", method="dedup+disf", ratio=0.5, batch_size=20, progress=False)
    c = rec["counts"]
    assert c["deduplicated"] == 10 and c["input"] == 70
    assert c["selected"] == selection_size(60, ratio=0.5, k_per_batch=None, batch_size=20, seed=0)
    dups = [json.loads(line) for line in (tmp_path / "sel" / "deduplicated.jsonl").read_text().splitlines()]
    assert sorted(d["row"] for d in dups) == list(range(60, 70))
    assert all(d["duplicate_of"] == f"dups.jsonl:{d['row'] - 60 + 1}" for d in dups)
    assert np.load(tmp_path / "sel" / "deduplicated.npy").tolist() == [[r, r - 60] for r in range(60, 70)]
    selected_rows = set(np.load(tmp_path / "sel" / "selection.npy").tolist())
    assert not selected_rows & set(range(60, 70))
    rep = report(tmp_path / "f", tmp_path / "sel" / "selection.jsonl", tmp_path / "rep", top_k=3)
    acc = rep["accounting"]
    assert (acc["selected"], acc["deduplicated"], acc["rejected"]["total"]) == (c["selected"], 10, 5)
    assert acc["selected"] + acc["not_selected"] + acc["deduplicated"] + 5 == acc["input_documents"] == 75
    assert acc["rejected"]["by_reason"] == {"duplicate_content": 5}
    assert rep["domains"]["mix"]["deduplicated"] == 10
    # dedup+random: as many files as DiSF picks from the whole pool, at random among the survivors
    rec = select_features(tmp_path / "f", tmp_path / "dr", method="dedup+random", ratio=0.5, batch_size=20, seed=3,
                          progress=False)
    assert rec["counts"]["deduplicated"] == 10
    assert rec["counts"]["selected"] == selection_size(70, ratio=0.5, k_per_batch=None, batch_size=20, seed=3)
    rows = [json.loads(line)["row"] for line in (tmp_path / "dr" / "selection.jsonl").read_text().splitlines()]
    assert not set(rows) & set(range(60, 70)) and len(set(rows)) == len(rows)
    again = select_features(tmp_path / "f", tmp_path / "dr2", method="dedup+random", ratio=0.5, batch_size=20, seed=3,
                            progress=False)
    assert again["selection_sha256"] == rec["selection_sha256"]


def test_dedup_ivf_lists_and_probes_come_from_the_cli_and_the_yaml(pipeline_run, tmp_path, monkeypatch):
    from data_select import baselines

    tmp, _, cfg, _ = pipeline_run
    seen, real = [], baselines.dedup
    monkeypatch.setattr(baselines, "dedup", lambda *a, **k: seen.append((k.get("nlist"), k.get("nprobe"))) or real(*a, **k))
    assert main(["select", "--features", str(Path(cfg.out_dir) / "features"), "--out", str(tmp_path / "s"),
                 "--method", "dedup+random", "--nlist", "6", "--nprobe", "3", "--no-progress"]) == 0
    assert seen == [(6, 3)]
    path = write_config(tmp_path, tmp / "corpus", select={"method": "dedup", "nlist": 5, "nprobe": 2})
    assert main(["run", str(path), "tokenize.enabled=false"]) == 0
    assert seen == [(6, 3), (5, 2)]
    assert json.loads((tmp_path / "out" / "select.json").read_text())["params"]["nlist"] == 5


def test_dsir_towards_a_domain(pipeline_run, tmp_path):
    tmp = pipeline_run[0]
    rec = select_features(tmp / "out" / "features", tmp_path, method="dsir", target="law", ratio=0.1, batch_size=64,
                          progress=False)
    sel = [json.loads(line) for line in (tmp_path / "selection.jsonl").read_text().splitlines()]
    assert len(sel) == rec["counts"]["selected"] > 0
    assert sum(r["domain"] == "law" for r in sel) / len(sel) > 0.9  # law is 1/3 of the pool
    with pytest.raises(PipelineError, match="needs --target"):
        select_features(tmp / "out" / "features", tmp_path, method="dsir", progress=False)


def test_config_errors_name_the_key(tmp_path):
    make_corpus(tmp_path / "corpus")
    path = write_config(tmp_path, tmp_path / "corpus")
    with pytest.raises(UsageError, match="unknown config key select.ratoi"):
        load_run_config(path, ["select.ratoi=0.1"])
    with pytest.raises(UsageError, match="unknown config key colour"):
        load_run_config(path, ["colour=red"])
    with pytest.raises(UsageError, match="select.batch_size: expected int"):
        load_run_config(path, ["select.batch_size=big"])
    with pytest.raises(UsageError, match="select.method"):
        load_run_config(path, ["select.method=best"])
    with pytest.raises(UsageError, match="give one, not both"):
        load_run_config(path, ["select.k_per_batch=4"])
    cfg = load_run_config(path, ["select.ratio=null", "select.k_per_batch=4", "embed.max_tokens=64"])
    assert cfg.select.k_per_batch == 4 and cfg.select.ratio is None and cfg.embed.max_tokens == 64
    with pytest.raises(UsageError, match="config file not found"):
        load_run_config(tmp_path / "missing.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parent.parent / "configs" / "data").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_run_config(path)
        assert cfg.inputs and cfg.out_dir


def test_cli_embed_select_report(tmp_path, capsys):
    make_corpus(tmp_path / "corpus")
    f, s = str(tmp_path / "f"), str(tmp_path / "s")
    assert main(["embed", str(tmp_path / "corpus"), "--out", f, "--encoder", "hashing", "--dim", "24", "--no-progress"]) == 0
    assert "embedded 346 documents" in capsys.readouterr().out
    assert main(["select", "--features", f, "--out", s, "--method", "disf", "--k-per-batch", "8",
                 "--batch-size", "64", "--workers", "2", "--no-progress"]) == 0
    assert "selected 43 of 346" in capsys.readouterr().out  # 5 full batches x 8 + round(8 * 26 / 64)
    assert main(["report", "--features", f, "--selection", f"{s}/selection.jsonl", "--out", s, "--top-k", "4"]) == 0
    out = capsys.readouterr().out
    assert "accounting: 353 input" in out and (tmp_path / "s" / "spectrum.png").is_file()
    assert "domains.png" in out and (tmp_path / "s" / "domains.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["select", "--features", str(tmp_path / "nope"), "--out", s]) == 2
    assert "no features.json" in capsys.readouterr().err


def test_cli_run_with_overrides(tmp_path, capsys):
    make_corpus(tmp_path / "corpus")
    path = write_config(tmp_path, tmp_path / "corpus")
    assert main(["run", str(path), "tokenize.enabled=false", "select.method=random"]) == 0
    out = capsys.readouterr().out
    assert "selection (random)" in out and "accounting: 353 input" in out
    assert main(["run", str(path), "select.nope=1"]) == 2
    assert "unknown config key select.nope" in capsys.readouterr().err


def test_cli_shards_and_merges_equal_one_process(tmp_path, capsys):
    """index, embed and select as 2 independent --shard tasks + merges (a Slurm array) give the
    bytes of one process; unfinished or foreign parts are refused before any merging."""
    from data_select.embed import load_features

    make_corpus(tmp_path / "corpus")
    corpus, one, two = str(tmp_path / "corpus"), str(tmp_path / "one"), str(tmp_path / "two")
    emb = ["--encoder", "hashing", "--dim", "8", "--no-progress"]
    assert main(["embed", corpus, "--out", one, *emb]) == 0
    assert "embedded 346 documents" in capsys.readouterr().out
    assert main(["embed", corpus, "--out", two, "--shard", "0/2", *emb]) == 2
    assert "needs the document table" in capsys.readouterr().err
    for i in range(2):
        assert main(["index", corpus, "--out", two, "--shard", f"{i}/2", "--no-progress"]) == 0
    assert main(["index", "--out", two, "--merge", "--no-progress"]) == 0
    assert "indexed 346 documents" in capsys.readouterr().out
    assert main(["embed", corpus, "--out", two, "--shard", "1/2", *emb]) == 0
    assert main(["embed", corpus, "--out", two, "--merge", "--no-progress"]) == 2
    assert "parts 0/2 are missing" in capsys.readouterr().err
    assert main(["embed", corpus, "--out", two, "--shard", "0/2", *emb]) == 0
    assert main(["embed", corpus, "--out", two, "--merge", "--no-progress"]) == 0
    assert "embedded 346 documents" in capsys.readouterr().out
    for name in ("features.f32", "DONE.json", "features.json", "table/ids.bin", "table/key.bin", "table/DONE.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    sel = ["--method", "disf", "--k-per-batch", "4", "--batch-size", "32", "--no-progress"]
    assert main(["select", "--features", one, "--out", str(tmp_path / "s1"), *sel]) == 0
    for i in range(2):
        assert main(["select", "--features", two, "--out", str(tmp_path / "s2"), "--shard", f"{i}/2", *sel]) == 0
    assert main(["select", "--out", str(tmp_path / "s2"), "--merge", "--no-progress"]) == 0
    assert "selected 43 of 346" in capsys.readouterr().out  # 10 full batches x 4 + round(4 * 26 / 32)
    for name in ("selection.npy", "selection.jsonl"):
        assert (tmp_path / "s1" / name).read_bytes() == (tmp_path / "s2" / name).read_bytes(), name
    assert load_features(two).n == 346
    assert main(["select", "--features", one, "--out", str(tmp_path / "s3"), "--shard", "2/2", *sel]) == 2
    assert "0 <= I < N" in capsys.readouterr().err
    assert main(["embed", "--out", str(tmp_path / "g")]) == 2
    assert "give at least one INPUT" in capsys.readouterr().err


def test_dsir_refuses_changed_inputs(tmp_path):
    from data_select.embed import embed_corpus

    make_corpus(tmp_path / "corpus")
    embed_corpus([tmp_path / "corpus"], tmp_path / "f", encoder="hashing", dim=8, progress=False)
    with open(tmp_path / "corpus" / "mixed.jsonl", "a") as f:
        f.write(json.dumps({"text": "one more law court document", "domain": "law"}) + "\n")
    with pytest.raises(DataSelectError, match=r"made from other inputs: \S*mixed.jsonl had \d+ bytes there, now \d+"):
        select_features(tmp_path / "f", tmp_path / "s", method="dsir", target="law", progress=False)


def test_run_on_the_fixture_corpus(tmp_path):
    """Real Debian text (tests/fixtures/corpus): every domain is counted in pool and selection."""
    from pathlib import Path

    fixture = Path(__file__).resolve().parent / "fixtures" / "corpus"
    expected = {d: v["documents"] for d, v in json.loads((fixture / "corpus.json").read_text())["domains"].items()}
    cfg = load_run_config(None, [f"inputs=[{fixture}/*.jsonl]", f"out_dir={tmp_path}", "progress=false",
                                 "embed.encoder=hashing", "select.ratio=0.25", "select.batch_size=32",
                                 "tokenize.enabled=false"])
    rep = run(cfg)["report"]
    assert {d: v["pool"] for d, v in rep["domains"].items()} == expected
    acc = rep["accounting"]
    assert acc["input_documents"] == sum(expected.values()) + acc["rejected"]["total"] and acc["adds_up"]
    assert acc["selected"] == selection_size(sum(expected.values()), ratio=0.25, k_per_batch=None, batch_size=32, seed=0)


def test_cli_select_released_variant(tmp_path, capsys):
    """`--disf-variant released`: the published script's layout and greedy, through the CLI and the YAML."""
    from data_select import disf
    from data_select.embed import embed_corpus, load_features

    make_corpus(tmp_path / "corpus")
    embed_corpus([tmp_path / "corpus"], tmp_path / "f", encoder="hashing", dim=16, progress=False)
    feats = load_features(tmp_path / "f").matrix
    assert main(["select", "--features", str(tmp_path / "f"), "--out", str(tmp_path / "s"), "--k-per-batch", "4",
                 "--batch-size", "32", "--disf-variant", "released", "--disf-processes", "3", "--no-progress"]) == 0
    # 346 documents: 3 ranges of 115, 3 full batches of 32 each, 4 picks per batch
    assert "selected 36 of 346" in capsys.readouterr().out
    rows = [json.loads(line)["row"] for line in (tmp_path / "s" / "selection.jsonl").read_text().splitlines()]
    assert rows == disf.select(feats[:], k_per_batch=4, batch_size=32, variant="released", processes=3).tolist()
    assert all(p * 115 <= r < p * 115 + 96 for r, p in zip(rows, np.repeat(range(3), 12)))
    params = json.loads((tmp_path / "s" / "select.json").read_text())["params"]
    assert (params["disf_variant"], params["disf_processes"]) == ("released", 3)
    rec = select_features(tmp_path / "f", tmp_path / "r", method="random", k_per_batch=4, batch_size=32,
                          disf_variant="released", disf_processes=3, progress=False)
    assert rec["counts"]["selected"] == 36  # baselines pick as many files as this DiSF would
    cfg = load_run_config(write_config(tmp_path, tmp_path / "corpus", select={"disf_variant": "released"}))
    assert cfg.select.disf_variant == "released"
    with pytest.raises(UsageError, match="select.disf_variant"):
        load_run_config(write_config(tmp_path, tmp_path / "corpus", select={"disf_variant": "paper"}))
    assert main(["select", "--features", str(tmp_path / "f"), "--out", str(tmp_path / "t"), "--disf-variant",
                 "released", "--no-progress"]) == 2  # 346 files hold no full batch of 1024
    assert "full batches of 1024" in capsys.readouterr().err
