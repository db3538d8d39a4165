"""The `data-select` pipeline: features → selection → token shards → report, from one YAML.

Every step writes its outputs first and a small JSON record last (atomically), so a re-run of
:func:`run` skips steps whose record matches the current settings and inputs, and continues an
interrupted embedding where it stopped. Under torchrun every step is split over the ranks
(data_select.parts); one step at a time, as parts and merges, is what a Slurm job array runs.

Accounting (report.json ``accounting``): every input document is exactly one of

- ``selected``       picked by the selection method;
- ``not_selected``   embedded but not picked;
- ``deduplicated``   embedded, removed as a near-duplicate of a kept document before selection
                     (its own bucket, only for the ``dedup*`` methods);
- ``rejected``       never embedded, by reason (:data:`data_select.sources.REASONS`; a corrupt
                     compressed file counts once for its unreadable rest; a repeated id or text,
                     ``duplicate_id`` / ``duplicate_content``, is dropped before embedding).

and ``selected + not_selected + deduplicated + rejected.total == input_documents``.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from data_select import budget, disf, spectrum
from data_select.baselines import FLAT_MAX
from data_select import parts as P
from data_select.embed import embed_corpus, load_features
from data_select.errors import UsageError
from data_select.io import atomic_write_json, read_json
from data_select.select import (DEDUPLICATED, DEDUPLICATED_ROWS, METHODS, SELECT_META, SELECTION,  # noqa: F401
                                SELECTION_ROWS, SHARDED_METHODS, PipelineError, RowSubset, check_size_args,
                                read_selection, select_features, selection_dir, selection_size)

REPORT = "report.json"
SPECTRUM_PNG = "spectrum.png"
DOMAINS_PNG = "domains.png"
RUN_LEDGER = "run.json"


def _read_json(path: Path) -> dict | None:
    return read_json(path, PipelineError)


# --------------------------------------------------------------------------- report


def report(features_dir: str | os.PathLike, selection: str | os.PathLike, out_dir: str | os.PathLike, *,
           top_k: int = 10, sample: int = 10_000, seed: int = 0, manifest: str | os.PathLike | None = None) -> dict:
    """``report.json`` + ``spectrum.png`` + ``domains.png``: spectrum diagnostics of the selection against
    the pool and a random selection of the same size, per-domain counts (and their bar chart), the selected files, bytes, estimated
    tokens (token-budget selections) and, given the tokenize step's ``manifest``, the tokens
    actually written, and the document accounting. Reads the domain and bytes columns and the
    selection's rows; features a sample of rows at a time."""
    feats = load_features(features_dir)
    table = feats.table
    record, sel = read_selection(selection)
    if record["features"]["fingerprint"] != feats.fingerprint:
        raise PipelineError(f"{selection}: made from other features ({record['features']['dir']}) than "
                            f"{features_dir}; re-run select")
    n = feats.n
    if sel.size < 2:
        raise PipelineError(f"{selection}: {sel.size} document(s) selected; the spectrum needs at least 2")
    status = np.zeros(n, dtype=np.int8)  # 0 not selected, 1 selected, 2 deduplicated
    status[sel] = 1
    dpath = selection_dir(selection) / DEDUPLICATED_ROWS
    dup_rows = np.load(dpath)[:, 0] if dpath.is_file() else np.empty(0, dtype=np.int64)
    status[dup_rows] = 2
    deduplicated = int(record.get("counts", {}).get("deduplicated", 0))
    rng = np.random.default_rng(seed)
    sets = {"selected": RowSubset(feats.matrix, np.sort(sel)), "pool": feats.matrix,
            "random": RowSubset(feats.matrix, np.sort(rng.choice(n, size=sel.size, replace=False)))}
    spectra, eigs = {}, {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name, rows in sets.items():
            e = spectrum.correlation_eigenvalues(rows, sample=sample, seed=seed)
            eigs[name] = e
            spectra[name] = {"files": int(rows.shape[0]), "dominance": spectrum.dominance_score(e, top_k),
                             "effective_rank": spectrum.effective_rank(e)}
        spectrum.plot_spectra(eigs, out / SPECTRUM_PNG)
    except spectrum.SpectrumError as e:
        raise PipelineError(f"spectrum of {features_dir}: {e}") from None

    codes = table.column("domain")
    slot = np.where(codes < 0, len(table.domains), codes)  # the last slot: no domain
    names = table.domains + ["unknown"]
    counts = {k: np.bincount(slot[status == v], minlength=len(names)) for k, v in
              (("selected", 1), ("not_selected", 0), ("deduplicated", 2))}
    sel_bytes = table.column("bytes", sel).astype(np.float64)
    per_bytes = np.bincount(slot[sel], weights=sel_bytes, minlength=len(names))
    estimate = record.get("tokens", {}).get("estimate")
    per_est = np.bincount(slot[sel], weights=budget.estimated_tokens(table, estimate, sel), minlength=len(names)) \
        if estimate else None
    actual = _read_json(Path(manifest)) if manifest else None
    domains: dict[str, dict] = {}
    for i, name in enumerate(names):
        pool = int(counts["selected"][i] + counts["not_selected"][i] + counts["deduplicated"][i])
        if not pool:
            continue
        d = domains.setdefault(name, {"pool": 0, "selected": 0, "not_selected": 0, "deduplicated": 0})
        d["pool"] += pool
        for k in ("selected", "not_selected", "deduplicated"):
            d[k] += int(counts[k][i])
        d["selected_bytes"] = d.get("selected_bytes", 0) + int(per_bytes[i])
        if per_est is not None:
            d["estimated_tokens"] = d.get("estimated_tokens", 0) + int(round(per_est[i]))
        if actual is not None:
            d["tokens"] = int(actual.get("domains", {}).get(name, {}).get("tokens", 0))
    selected = {"files": int(sel.size), "bytes": int(sel_bytes.sum())}
    if estimate:
        selected["estimated_tokens"] = int(round(record["tokens"]["estimated_selected"]))
        selected["bytes_per_token"] = estimate["bytes_per_token"]
        selected["token_budget"] = record["tokens"]["budget"]
    if actual is not None:
        selected["tokens"] = int(actual["splits"]["train"]["tokens"] + actual["splits"]["val"]["tokens"])
    rejected = table.rejected
    acc = {"input_documents": n + int(rejected.total), "selected": int(sel.size),
           "not_selected": n - int(sel.size) - deduplicated, "deduplicated": deduplicated,
           "rejected": {"total": int(rejected.total), "by_reason": dict(sorted(rejected.counts.items()))}}
    acc["adds_up"] = (acc["selected"] + acc["not_selected"] + acc["deduplicated"] + acc["rejected"]["total"]
                      == acc["input_documents"]) and acc["not_selected"] >= 0 and len(dup_rows) == deduplicated
    result = {
        "features": {"dir": str(feats.root.resolve()), "encoder": feats.meta["encoder"], "dim": feats.dim, "n": n},
        "selection": {"path": str(selection_dir(selection).resolve()), "method": record.get("method"),
                      "params": record.get("params")},
        "selected": selected,
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
    ratio: float | None = None  # None (and no k_per_batch, no tokens) = 1/64
    k_per_batch: int | None = None
    tokens: float | None = None  # a token budget instead of a file share (data_select.budget)
    batch_size: int = 1024
    seed: int = 0
    dedup_threshold: float = 0.95
    nlist: int | None = None  # dedup IVF lists; None = exact up to 100,000 rows, else 2·sqrt(n)
    nprobe: int = 4  # dedup IVF lists probed per row
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
    check_size_args(cfg.select.ratio, cfg.select.k_per_batch, cfg.select.tokens, config=True)
    if cfg.select.disf_variant not in disf.VARIANTS:
        raise UsageError(f"config key select.disf_variant: {cfg.select.disf_variant!r} is not one of "
                         f"{', '.join(disf.VARIANTS)}")
    if cfg.select.disf_processes < 1:
        raise UsageError(f"config key select.disf_processes: must be >= 1, got {cfg.select.disf_processes}")
    return cfg


# --------------------------------------------------------------------------- run

STEPS = ("index", "embed", "dedup", "select", "tokenize", "report")


def run(cfg: RunConfig, *, step: str | None = None, shard: P.Shard | None = None, merge: bool = False) -> dict:
    """All steps into ``cfg.out_dir``: features/, selection, tokens/, report.json, spectrum.png.

    ``run.json`` records each finished step with its settings and input fingerprints; a step whose
    record still matches is skipped, so a re-run after an interruption redoes only what is missing.
    Under torchrun every step is split over the ranks (rank 0 merges and writes run.json; the
    output folder must be shared by the nodes). ``step`` runs one step only; with ``shard`` one
    part of it (index, embed, select, tokenize: a Slurm array task), with ``merge`` the merge of
    its parts (launch/curate-slurm.sh chains them).
    """
    if step is not None and step not in STEPS:
        raise UsageError(f"unknown step {step!r}; choose one of {', '.join(STEPS)}")
    if (shard is not None or merge) and step in (None, "dedup", "report"):
        raise UsageError("--shard and --merge apply to one step: add --step index|embed|select|tokenize")
    env = P.env_shard()
    if env is None:
        return _run(cfg, step, shard, merge, None)
    with P.Group(env) as group:
        return _run(cfg, step, shard, merge, group)


def _run(cfg: RunConfig, step: str | None, shard: P.Shard | None, merge: bool, group) -> dict:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lead = group is None or group.shard.index == 0
    ledger_path = out / RUN_LEDGER
    ledger = _read_json(ledger_path) or {}
    if group is not None:
        group.barrier()  # every rank has read the ledger before rank 0 writes it
    ledger["config"] = dataclasses.asdict(cfg)
    feat_dir = out / "features"
    reader = dict(text_field=cfg.text_field, domain_field=cfg.domain_field, id_field=cfg.id_field,
                  domain_from_dir=cfg.domain_from_dir, max_doc_bytes=cfg.max_doc_bytes)

    def wanted(name: str) -> bool:
        return step is None or step == name

    def done(name: str, key: dict, outputs: list[Path]) -> bool:
        return ledger.get(name, {}).get("key") == key and all(p.exists() for p in outputs)

    def finish(name: str, key: dict, summary: dict) -> None:
        ledger[name] = {"key": key, "summary": summary}
        if lead:
            atomic_write_json(ledger_path, ledger)

    result: dict = {"out_dir": str(out)}
    if step == "index":
        from data_select.table import index_corpus, merge_index

        if merge:
            return {"index": merge_index(feat_dir, progress=cfg.progress)}
        return {"index": index_corpus(cfg.inputs, feat_dir, shard=shard, progress=cfg.progress, **reader)}
    if wanted("embed"):
        e = cfg.embed
        if merge:
            from data_select.embed import merge_features

            return {"features": merge_features(feat_dir, progress=cfg.progress)}
        emb = embed_corpus(cfg.inputs, feat_dir, encoder=e.encoder, dim=e.dim, batch_size=e.batch_size,
                           max_tokens=e.max_tokens, workers=e.workers, shard=shard, progress=cfg.progress, **reader)
        if shard is not None:
            return {"features": emb}
        finish("embed", {"features": emb["fingerprint"]}, {"n": emb["n"]})
        result["features"] = {**emb, "encoder": load_features(feat_dir).meta["encoder"]}
    if not wanted("embed") or step is None:
        fingerprint = load_features(feat_dir).fingerprint
    record = _read_json(out / SELECT_META)
    if step == "dedup":  # one task, between the embed merge and a split selection (launch/curate-slurm.sh)
        s = cfg.select
        if not s.method.startswith("dedup"):
            return {"dedup": None}
        from data_select.select import dedup_step

        return {"dedup": dedup_step(feat_dir, out, threshold=s.dedup_threshold, nlist=s.nlist, seed=s.seed,
                                    nprobe=s.nprobe if (s.nlist or load_features(feat_dir).n > FLAT_MAX) else None,
                                    progress=cfg.progress)}
    if wanted("select"):
        s, t = cfg.select, cfg.tokenize
        sel_key = {"features": fingerprint, **_without_workers(s),
                   **({"tokenizer": t.tokenizer, "vocab_size": t.vocab_size} if s.tokens is not None else {})}
        if s.method not in SHARDED_METHODS and (merge or shard is not None):
            if merge or shard.index > 0:  # not split into parts: task 0 selects, the others and the merge have nothing to do
                return {"select": record}
            shard = None
        if merge:
            from data_select.select import merge_selection

            return {"select": merge_selection(out, progress=cfg.progress)}
        if shard is not None or not (done("select", sel_key, [out / SELECTION_ROWS]) and record):
            record = select_features(feat_dir, out, method=s.method, ratio=s.ratio, k_per_batch=s.k_per_batch,
                                     tokens=s.tokens, batch_size=s.batch_size, seed=s.seed,
                                     dedup_threshold=s.dedup_threshold, nlist=s.nlist, nprobe=s.nprobe,
                                     target=s.target, disf_variant=s.disf_variant, disf_processes=s.disf_processes,
                                     tokenizer=t.tokenizer, vocab_size=t.vocab_size, shard=shard, workers=s.workers,
                                     progress=cfg.progress)
            if shard is not None:
                return {"select": record}
            finish("select", sel_key, record["counts"])
        result["select"] = record
    manifest_path = out / "tokens" / "manifest.json"
    if cfg.tokenize.enabled and wanted("tokenize"):
        from data_select.tokenize import merge_tokens, tokenize_corpus

        t = cfg.tokenize
        if merge:
            return {"tokens": merge_tokens(out / "tokens", progress=cfg.progress)}
        tok_key = {"selection_sha256": record["selection_sha256"], **_without_workers(t)}
        manifest = _read_json(manifest_path)
        if shard is not None or not (done("tokenize", tok_key, [manifest_path]) and manifest
                                     and manifest["fingerprint"] == ledger["tokenize"]["summary"]["fingerprint"]):
            manifest = tokenize_corpus(cfg.inputs, out / "tokens", tokenizer=t.tokenizer, vocab_size=t.vocab_size,
                                       val_fraction=t.val_fraction, seed=t.seed, selection=out,
                                       shard_tokens=t.shard_tokens, num_workers=t.workers, progress=cfg.progress,
                                       shard=shard, **reader)
            if shard is not None:
                return {"tokens": manifest}
            finish("tokenize", tok_key, {"fingerprint": manifest["fingerprint"],
                                         "train_tokens": manifest["splits"]["train"]["tokens"]})
        result["tokens"] = {"manifest": str(manifest_path), "fingerprint": manifest["fingerprint"],
                            "train_tokens": manifest["splits"]["train"]["tokens"]}
    if cfg.report.enabled and wanted("report"):
        r = cfg.report
        tokenized = cfg.tokenize.enabled and manifest_path.is_file()
        rep_key = {"selection_sha256": record["selection_sha256"], **dataclasses.asdict(r),
                   "tokens": _read_json(manifest_path)["fingerprint"] if tokenized else None}
        if done("report", rep_key, [out / REPORT, out / SPECTRUM_PNG]):
            rep = _read_json(out / REPORT)
        elif lead:
            rep = report(feat_dir, out, out, top_k=r.top_k, sample=r.sample, seed=r.seed,
                         manifest=manifest_path if tokenized else None)
            finish("report", rep_key, rep["accounting"])
        if group is not None:
            group.barrier()
            rep = _read_json(out / REPORT)
        result["report"] = rep
    return result
