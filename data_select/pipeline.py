"""The `data-select` pipeline: features → selection → token shards → report, from one YAML.

Every step writes its outputs first and a small JSON record last (atomically), so a re-run of
:func:`run` skips steps whose record matches the current settings and inputs, and continues an
interrupted embedding where it stopped.

Accounting (report.json ``accounting``): every input document is exactly one of

- ``selected``       picked by the selection method;
- ``not_selected``   embedded but not picked;
- ``deduplicated``   embedded, removed as a near-duplicate of a kept document before selection
                     (its own bucket, only for the ``dedup*`` methods);
- ``rejected``       never embedded, by reason (:data:`data_select.sources.REASONS`; a corrupt
                     compressed file counts once for its unreadable rest).

and ``selected + not_selected + deduplicated + rejected.total == input_documents``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from data_select import baselines, disf, spectrum
from data_select.embed import embed_corpus, load_features
from data_select.io import atomic_write_json, atomic_write_lines, read_selection_ids, sha256_file
from data_select.errors import DataSelectError, UsageError

SELECTION = "selection.jsonl"
SELECT_META = "select.json"
DEDUPLICATED = "deduplicated.jsonl"
REPORT = "report.json"
SPECTRUM_PNG = "spectrum.png"
DOMAINS_PNG = "domains.png"
RUN_LEDGER = "run.json"
METHODS = ("disf", "random", "dsir", "dedup", "dedup+disf", "dedup+random")
DEFAULT_RATIO = 1 / 64  # DiSF's released setting: 16 of every 1024 files (1.5625 %)


class PipelineError(DataSelectError):
    """A step of the pipeline cannot run; the message names the file, key or step."""




def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path}: not valid JSON ({e})") from None


# --------------------------------------------------------------------------- selection


def selection_size(n: int, *, ratio: float | None, k_per_batch: int | None, batch_size: int, seed: int,
                   disf_variant: str = "exact", disf_processes: int = 1) -> int:
    """Files DiSF would pick from a pool of n (sum over its batches); baselines pick as many."""
    plan = disf.batch_plan(n, batch_size, seed, variant=disf_variant, processes=disf_processes)
    return sum(disf.batch_k(len(b), batch_size=batch_size, k_per_batch=k_per_batch, ratio=ratio) for b in plan)


def _dsir_texts(meta: dict, ids: list[dict], target: str | None) -> tuple[list[str], list[str]]:
    """Pool texts (re-read from the inputs the features were made from) and the target texts:
    the pool's documents of domain ``target``, else the documents of the files ``target`` names."""
    from data_select.sources import input_fingerprint, iter_documents

    if not target:
        raise PipelineError("method dsir needs --target: a domain of the pool or a file/glob of target texts")
    if input_fingerprint(meta["inputs"]) != meta["input_files"]:
        raise PipelineError(f"inputs {meta['inputs']} changed since they were embedded; re-run `data-select embed --overwrite`")
    read_kw = dict(text_field=meta["text_field"], domain_field=meta["domain_field"], id_field=meta["id_field"],
                   domain_from_dir=meta.get("domain_from_dir", False),
                   **({"max_doc_bytes": meta["max_doc_bytes"]} if meta.get("max_doc_bytes") else {}))
    texts, domains = [], []
    for row, doc in zip(ids, iter_documents(meta["inputs"], **read_kw)):
        if doc.id != row["id"]:
            raise PipelineError(f"inputs changed since embedding: row {len(texts)} is {doc.id!r}, features say {row['id']!r}")
        texts.append(doc.text)
        domains.append(doc.domain)
    if len(texts) != len(ids):
        raise PipelineError(f"inputs changed since embedding: read {len(texts)} documents, features hold {len(ids)}")
    if target in set(domains):
        target_texts = [t for t, d in zip(texts, domains) if d == target]
    else:
        try:
            target_texts = [d.text for d in iter_documents([target], text_field=meta["text_field"])]
        except DataSelectError as e:
            raise PipelineError(f"dsir target {target!r} is neither a domain of the pool nor readable text: {e}") from None
    return texts, target_texts


def select_features(features_dir: str | os.PathLike, out_dir: str | os.PathLike, *, method: str = "disf",
                    ratio: float | None = None, k_per_batch: int | None = None, batch_size: int = 1024,
                    seed: int = 0, dedup_threshold: float = 0.95, target: str | None = None,
                    disf_variant: str = "exact", disf_processes: int = 1, workers: int = 1,
                    progress: bool = True) -> dict:
    """Select documents from a features directory; writes ``selection.jsonl`` (id, source, domain,
    row, rank = pick order) and ``select.json`` (method, params, counts); returns the latter.

    Without ``ratio`` and ``k_per_batch`` the ratio is DiSF's 1/64. Random and DSIR pick as many
    files as DiSF would; ``dedup`` keeps every non-duplicate; ``dedup+disf`` runs DiSF on those and
    ``dedup+random`` picks as many files as DiSF would at random among them (the baseline that separates
    dedup from DiSF).
    ``disf_variant`` ``released`` reproduces the published DiSF script (:mod:`data_select.disf`)
    over ``disf_processes`` contiguous ranges (the script's CPU count).
    """
    if method not in METHODS:
        raise UsageError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    if disf_variant not in disf.VARIANTS:
        raise UsageError(f"unknown DiSF variant {disf_variant!r}; choose one of {', '.join(disf.VARIANTS)}")
    if disf_processes < 1:
        raise UsageError(f"disf_processes must be >= 1, got {disf_processes}")
    if ratio is not None and k_per_batch is not None:
        raise UsageError("give either ratio or k_per_batch, not both")
    if ratio is None and k_per_batch is None:
        ratio = DEFAULT_RATIO
    feats, ids, meta = load_features(features_dir)
    n = feats.shape[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SELECT_META).unlink(missing_ok=True)  # rewritten last: present means the selection is complete
    sized = method != "dedup"  # plain dedup keeps every non-duplicate: no size, no batches
    params = {"ratio": ratio if sized else None, "k_per_batch": k_per_batch if sized else None,
              "batch_size": batch_size if sized else None, "seed": seed,
              "dedup_threshold": dedup_threshold if method.startswith("dedup") else None,
              "target": target if method == "dsir" else None,
              "disf_variant": disf_variant if sized else None,
              "disf_processes": disf_processes if sized and disf_variant == "released" else None}
    size_kw = dict(ratio=ratio, k_per_batch=k_per_batch, batch_size=batch_size, seed=seed)
    variant_kw = dict(variant=disf_variant, processes=disf_processes)
    count_kw = dict(disf_variant=disf_variant, disf_processes=disf_processes)
    dup_of = np.full(n, -1, dtype=np.int64)
    try:
        if method.startswith("dedup"):
            keep, dup_of = baselines.dedup(feats, threshold=dedup_threshold, progress=progress)
        if method == "disf":
            picked = disf.select(feats, **size_kw, **variant_kw, workers=workers, progress=progress)
        elif method == "random":
            picked = baselines.random_select(n, selection_size(n, **size_kw, **count_kw), seed)
        elif method == "dsir":
            texts, target_texts = _dsir_texts(meta, ids, target)
            picked = baselines.dsir_select(texts, target_texts, selection_size(n, **size_kw, **count_kw), seed=seed)
        elif method == "dedup":
            picked = keep
        elif method == "dedup+random":
            k = min(len(keep), selection_size(n, **size_kw, **count_kw))
            picked = baselines.compose(keep, baselines.random_select(len(keep), k, seed))
        else:
            sub = disf.select(np.asarray(feats[keep]), **size_kw, **variant_kw, workers=workers, progress=progress)
            picked = baselines.compose(keep, sub)
    except (disf.DisfError, baselines.BaselineError) as e:
        raise PipelineError(f"{method} selection on {features_dir}: {e}") from None
    picked = np.asarray(picked, dtype=np.int64)
    rows = [{"id": ids[i]["id"], "source": ids[i]["source"], "domain": ids[i]["domain"], "row": int(i), "rank": r}
            for r, i in enumerate(picked)]
    dups = np.flatnonzero(dup_of >= 0)
    atomic_write_lines(out / SELECTION, rows)
    atomic_write_lines(out / DEDUPLICATED, [{"id": ids[i]["id"], "row": int(i), "duplicate_of": ids[dup_of[i]]["id"]}
                                      for i in dups])
    record = {
        "format": "budgetlm-selection/1", "method": method, "params": params,
        "features": {"dir": str(Path(features_dir).resolve()), "encoder": meta["encoder"], "ids_sha256": meta["ids_sha256"]},
        "counts": {"input": n, "selected": len(picked), "not_selected": n - len(picked) - len(dups),
                   "deduplicated": len(dups)},
        "selection_sha256": sha256_file(out / SELECTION),
    }
    atomic_write_json(out / SELECT_META, record)
    return record


# --------------------------------------------------------------------------- report


def _read_selection(path: Path, ids: list[dict]) -> np.ndarray:
    """Rows of the features that a selection.jsonl names."""
    where = {r["id"]: i for i, r in enumerate(ids)}
    try:
        return np.asarray([where[i] for i in read_selection_ids(path)], dtype=np.int64)
    except KeyError as e:
        raise PipelineError(f"{path}: id {e.args[0]!r} is not in the features (made from other inputs?)") from None


def report(features_dir: str | os.PathLike, selection: str | os.PathLike, out_dir: str | os.PathLike, *,
           top_k: int = 10, sample: int = 10_000, seed: int = 0) -> dict:
    """``report.json`` + ``spectrum.png`` + ``domains.png``: spectrum diagnostics of the selection against
    the pool and a random selection of the same size, per-domain counts (and their bar chart), and the
    document accounting."""
    feats, ids, meta = load_features(features_dir)
    selection = Path(selection)
    sel = _read_selection(selection, ids)
    record = _read_json(selection.parent / SELECT_META) or {}
    if record and record.get("selection_sha256") != sha256_file(selection):
        raise PipelineError(f"{selection.parent / SELECT_META} does not describe {selection} (checksum differs); re-run select")
    n = len(ids)
    deduplicated = int(record.get("counts", {}).get("deduplicated", 0))
    if sel.size < 2:
        raise PipelineError(f"{selection}: {sel.size} document(s) selected; the spectrum needs at least 2")
    rng = np.random.default_rng(seed)
    sets = {"selected": np.sort(sel), "pool": np.arange(n), "random": np.sort(rng.choice(n, size=sel.size, replace=False))}
    spectra, eigs = {}, {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name, rows in sets.items():
            e = spectrum.correlation_eigenvalues(feats if name == "pool" else np.asarray(feats[rows]), sample=sample, seed=seed)
            eigs[name] = e
            spectra[name] = {"files": int(rows.size), "dominance": spectrum.dominance_score(e, top_k),
                             "effective_rank": spectrum.effective_rank(e)}
        spectrum.plot_spectra(eigs, out / SPECTRUM_PNG)
    except spectrum.SpectrumError as e:
        raise PipelineError(f"spectrum of {features_dir}: {e}") from None

    dup_rows = set()
    dpath = selection.parent / DEDUPLICATED
    if deduplicated and dpath.is_file():
        with open(dpath) as f:
            dup_rows = {json.loads(line)["row"] for line in f if line.strip()}
    chosen = set(sel.tolist())
    domains: dict[str, dict[str, int]] = {}
    for i, r in enumerate(ids):
        d = domains.setdefault(r["domain"] or "unknown", {"pool": 0, "selected": 0, "not_selected": 0, "deduplicated": 0})
        d["pool"] += 1
        d["selected" if i in chosen else "deduplicated" if i in dup_rows else "not_selected"] += 1
    rejected = meta.get("rejected") or {"total": 0, "counts": {}}
    acc = {"input_documents": n + int(rejected["total"]), "selected": int(sel.size),
           "not_selected": n - int(sel.size) - deduplicated, "deduplicated": deduplicated,
           "rejected": {"total": int(rejected["total"]), "by_reason": rejected["counts"]}}
    acc["adds_up"] = (acc["selected"] + acc["not_selected"] + acc["deduplicated"] + acc["rejected"]["total"]
                      == acc["input_documents"]) and acc["not_selected"] >= 0 and len(dup_rows) == deduplicated
    result = {
        "features": {"dir": str(Path(features_dir).resolve()), "encoder": meta["encoder"], "dim": meta["dim"], "n": n},
        "selection": {"path": str(selection.resolve()), "method": record.get("method"), "params": record.get("params")},
        "spectrum": {**spectra, "top_k": top_k, "sample": sample, "seed": seed,
                     "selected_vs_random": {"dominance": spectra["selected"]["dominance"] - spectra["random"]["dominance"],
                                            "effective_rank": spectra["selected"]["effective_rank"] - spectra["random"]["effective_rank"]}},
        "domains": dict(sorted(domains.items())),
        "accounting": acc,
    }
    if not acc["adds_up"]:
        raise PipelineError(f"accounting does not add up for {selection}: {acc} (select.json from other features?)")
    spectrum.plot_domains(domains, out / DOMAINS_PNG,
                          title=f"Files per domain: {record.get('method') or 'selection'} vs pool (counts on the bars)")
    atomic_write_json(out / REPORT, result)
    return result


# --------------------------------------------------------------------------- config


@dataclass
class EmbedConfig:
    encoder: str = "minilm"  # minilm | hashing | path to a local HF encoder directory
    dim: int = 384  # hashing encoder only
    batch_size: int = 64
    max_tokens: int | None = None  # None = the encoder's own limit (MiniLM 256, BERT 512)
    workers: int = 1


@dataclass
class SelectConfig:
    method: str = "disf"  # disf | random | dsir | dedup | dedup+disf | dedup+random
    ratio: float | None = None  # None (and no k_per_batch) = 1/64
    k_per_batch: int | None = None
    batch_size: int = 1024
    seed: int = 0
    dedup_threshold: float = 0.95
    target: str | None = None  # dsir: a domain of the pool or a file/glob of target texts
    disf_variant: str = "exact"  # exact | released (the published DiSF script; see data_select.disf)
    disf_processes: int = 1  # released: contiguous ranges the pool is split into (the script's cpu_count())
    workers: int = 1


@dataclass
class TokenizeConfig:
    enabled: bool = True
    tokenizer: str | None = None  # local HF tokenizer dir; None = train sentencepiece BPE on the selection
    vocab_size: int = 8000
    val_fraction: float = 0.01
    seed: int = 0
    shard_tokens: int = 50_000_000
    workers: int = 2


@dataclass
class ReportConfig:
    enabled: bool = True
    top_k: int = 10
    sample: int = 10_000
    seed: int = 0


@dataclass
class RunConfig:
    inputs: list[str] = field(default_factory=list)
    out_dir: str = "runs/data"
    text_field: str = "text"
    domain_field: str | None = "domain"
    id_field: str | None = None
    domain_from_dir: bool = False
    max_doc_bytes: int = 8_000_000
    progress: bool = True
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def _coerce(value, tp, key: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _coerce(value, next(a for a in typing.get_args(tp) if a is not type(None)), key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UsageError(f"config key {key}: expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise UsageError(f"config key {key}: expected a list, got {value!r}")
        return [_coerce(v, typing.get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-2" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool), str: isinstance(value, str)}[tp]
    if not ok:
        raise UsageError(f"config key {key}: expected {tp.__name__}, got {value!r}")
    return float(value) if tp is float else value


def _without_workers(section) -> dict:
    return {k: v for k, v in dataclasses.asdict(section).items() if k != "workers"}


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in data:
        if k not in names:
            raise UsageError(f"unknown config key {prefix}{k} (valid keys here: {', '.join(names)})")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def load_run_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple = ()) -> RunConfig:
    """YAML file + dotted ``key=value`` overrides (values parsed as YAML) → validated RunConfig."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise UsageError(f"{path}: top level must be a mapping")
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"override {text!r} is not of the form key=value")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"override {text!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    cfg = _build(RunConfig, data)
    if not cfg.inputs:
        raise UsageError("config key inputs: give at least one input file, folder or glob")
    if cfg.select.method not in METHODS:
        raise UsageError(f"config key select.method: {cfg.select.method!r} is not one of {', '.join(METHODS)}")
    if cfg.select.ratio is not None and cfg.select.k_per_batch is not None:
        raise UsageError("config keys select.ratio and select.k_per_batch: give one, not both")
    if cfg.select.disf_variant not in disf.VARIANTS:
        raise UsageError(f"config key select.disf_variant: {cfg.select.disf_variant!r} is not one of "
                         f"{', '.join(disf.VARIANTS)}")
    if cfg.select.disf_processes < 1:
        raise UsageError(f"config key select.disf_processes: must be >= 1, got {cfg.select.disf_processes}")
    return cfg


# --------------------------------------------------------------------------- run


def run(cfg: RunConfig) -> dict:
    """All steps into ``cfg.out_dir``: features/, selection.jsonl, tokens/, report.json, spectrum.png.

    ``run.json`` records each finished step with its settings and input checksums; a step whose
    record still matches is skipped, so a re-run after an interruption redoes only what is missing.
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ledger_path = out / RUN_LEDGER
    ledger = _read_json(ledger_path) or {}
    ledger["config"] = dataclasses.asdict(cfg)

    def done(step: str, key: dict, outputs: list[Path]) -> bool:
        return ledger.get(step, {}).get("key") == key and all(p.exists() for p in outputs)

    def finish(step: str, key: dict, summary: dict) -> None:
        ledger[step] = {"key": key, "summary": summary}
        atomic_write_json(ledger_path, ledger)

    feat_dir = out / "features"
    emb = embed_corpus(cfg.inputs, feat_dir, encoder=cfg.embed.encoder, dim=cfg.embed.dim, batch_size=cfg.embed.batch_size,
                       max_tokens=cfg.embed.max_tokens, text_field=cfg.text_field, domain_field=cfg.domain_field,
                       id_field=cfg.id_field, domain_from_dir=cfg.domain_from_dir, max_doc_bytes=cfg.max_doc_bytes,
                       workers=cfg.embed.workers, progress=cfg.progress)
    finish("embed", {"ids_sha256": emb["ids_sha256"]}, {"n": emb["n"], "rejected": emb["rejected_total"]})

    # worker counts change speed, never output: they stay out of the keys that decide a re-run
    sel_key = {"ids_sha256": emb["ids_sha256"], **_without_workers(cfg.select)}
    sel_path = out / SELECTION
    record = _read_json(out / SELECT_META)
    if not (done("select", sel_key, [sel_path]) and record and record["selection_sha256"] == sha256_file(sel_path)):
        s = cfg.select
        record = select_features(feat_dir, out, method=s.method, ratio=s.ratio, k_per_batch=s.k_per_batch,
                                 batch_size=s.batch_size, seed=s.seed, dedup_threshold=s.dedup_threshold,
                                 target=s.target, disf_variant=s.disf_variant, disf_processes=s.disf_processes,
                                 workers=s.workers, progress=cfg.progress)
        finish("select", sel_key, record["counts"])

    result = {"out_dir": str(out), "features": emb, "select": record}
    if cfg.tokenize.enabled:
        t = cfg.tokenize
        tok_key = {"selection_sha256": record["selection_sha256"], **_without_workers(t)}
        manifest_path = out / "tokens" / "manifest.json"
        manifest = _read_json(manifest_path)
        if not (done("tokenize", tok_key, [manifest_path]) and manifest
                and manifest["fingerprint"] == ledger["tokenize"]["summary"]["fingerprint"]):
            from data_select.tokenize import tokenize_corpus

            manifest = tokenize_corpus(cfg.inputs, out / "tokens", tokenizer=t.tokenizer, vocab_size=t.vocab_size,
                                       val_fraction=t.val_fraction, seed=t.seed, selection=sel_path,
                                       text_field=cfg.text_field, domain_field=cfg.domain_field, id_field=cfg.id_field,
                                       shard_tokens=t.shard_tokens, num_workers=t.workers, progress=cfg.progress,
                                       max_doc_bytes=cfg.max_doc_bytes, domain_from_dir=cfg.domain_from_dir)
            finish("tokenize", tok_key, {"fingerprint": manifest["fingerprint"],
                                         "train_tokens": manifest["splits"]["train"]["tokens"]})
        result["tokens"] = {"manifest": str(manifest_path), "fingerprint": manifest["fingerprint"],
                            "train_tokens": manifest["splits"]["train"]["tokens"]}
    if cfg.report.enabled:
        r = cfg.report
        rep_key = {"selection_sha256": record["selection_sha256"], **dataclasses.asdict(r)}
        if done("report", rep_key, [out / REPORT, out / SPECTRUM_PNG]):
            rep = _read_json(out / REPORT)
        else:
            rep = report(feat_dir, sel_path, out, top_k=r.top_k, sample=r.sample, seed=r.seed)
            finish("report", rep_key, rep["accounting"])
        result["report"] = rep
    return result

