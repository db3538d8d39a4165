"""`data-select select`: pick documents (rows of the document table) from a features directory.

Methods: ``disf`` (data_select.disf), ``random``, ``dsir`` (importance resampling towards a
target), ``dedup`` (keep every non-near-duplicate), ``dedup+disf`` and ``dedup+random`` (as many
files as DiSF picks from the whole pool, at random among the non-duplicates: the baseline that
separates dedup from DiSF). Sizes: a share of each DiSF batch (``ratio``, ``k_per_batch``; the
baselines pick as many files as DiSF would) or a token budget (``tokens``; data_select.budget):
random and DSIR take documents in their order until the budget is covered, ``dedup`` and
``dedup+random`` take non-duplicates in a seeded random order, DiSF gives every batch a quota in
proportion to its tokens (data_select.disf.batch_jobs).

Everything works on row numbers and reads only the columns it needs; features are read a block
of rows at a time, DSIR streams texts at the table's locations. Outputs (docs/FORMATS.md,
"Selection"): ``selection.npy`` (rows in pick order: what later steps load), ``select.json``
(written last), and the human-readable ``selection.jsonl`` / ``deduplicated.jsonl`` (streamed).

DiSF splits into parts by whole batches (``shard``, or torchrun ranks): each part writes the
picks of its batches, the merge concatenates them in batch order, which is the one-process
selection.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from data_select import baselines, budget, disf
from data_select import parts as P
from data_select.embed import Features, load_features
from data_select.errors import DataSelectError, HashingFeaturesWarning, UsageError
from data_select.io import atomic_write_json, read_json, sha256_file

SELECTION = "selection.jsonl"
SELECTION_ROWS = "selection.npy"
SELECT_META = "select.json"
DEDUPLICATED = "deduplicated.jsonl"
DEDUPLICATED_ROWS = "deduplicated.npy"
METHODS = ("disf", "random", "dsir", "dedup", "dedup+disf", "dedup+random")
SHARDED_METHODS = ("disf", "dedup+disf")
DEFAULT_RATIO = 1 / 64  # DiSF's released setting: 16 of every 1024 files (1.5625 %)
DSIR_FIT_BYTES = 256 << 20  # pools with more text fit the raw n-gram distribution on a seeded sample of this size
_OUT_CHUNK = 1 << 16


class PipelineError(DataSelectError):
    """A step of the pipeline cannot run; the message names the file, key or step."""


HASHING_WARNING = ("DiSF on hashing features: in docs/RESULTS.md (c) it did not flatten the spectrum of a neural "
                   "encoder and favoured short documents (fewer tokens for the same number of files); prefer a "
                   "neural encoder (--encoder minilm or a local HF model) and budget by --tokens")


def selection_size(n: int, *, ratio: float | None, k_per_batch: int | None, batch_size: int, seed: int,
                   disf_variant: str = "exact", disf_processes: int = 1) -> int:
    """Files DiSF would pick from a pool of n (sum over its batches); baselines pick as many."""
    return sum(disf.batch_k(b, batch_size=batch_size, k_per_batch=k_per_batch, ratio=ratio)
               for b in disf.batch_lengths(n, batch_size, variant=disf_variant, processes=disf_processes))


class RowSubset:
    """Rows ``rows`` of a feature matrix seen as a matrix of their own (no copy)."""

    def __init__(self, matrix, rows: np.ndarray):
        self.matrix, self.rows = matrix, np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), matrix.shape[1])
        self.ndim = 2

    def __getitem__(self, idx):
        return self.matrix[self.rows[idx]]


def check_size_args(ratio, k_per_batch, tokens, config: bool = False) -> None:
    """At most one of ratio / k_per_batch / tokens (naming both when two are given), tokens > 0."""
    names = ("select.ratio", "select.k_per_batch", "select.tokens") if config else ("--ratio", "--k-per-batch", "--tokens")
    given = [name for name, v in zip(names, (ratio, k_per_batch, tokens)) if v is not None]
    if len(given) > 1:
        raise UsageError(f"{'config keys ' if config else ''}{given[0]} and {given[1]} both size the selection: "
                         "give one, not both")
    if tokens is not None and tokens <= 0:
        raise UsageError(f"{names[2]} must be a positive number of tokens, got {tokens}")


def _dsir_target_counts(feats: Features, target: str, *, num_buckets: int, seed: int) -> np.ndarray:
    """n-gram counts of the target: the pool's documents of domain ``target`` (a seeded sample of
    at most DSIR_FIT_BYTES of them), else the documents of the files ``target`` names."""
    from data_select.sources import iter_documents

    table = feats.table
    if target in table.domains:
        code = table.domains.index(target)
        rows = np.concatenate([lo + np.flatnonzero(c == code) for lo, c in table.chunks("domain")])
        rows = _fit_sample(table, rows, seed)
        return baselines.ngram_totals((t for _, t in table.texts(rows)), num_buckets=num_buckets)
    try:
        docs = iter_documents([target], text_field=table.settings["text_field"])
        return baselines.ngram_totals((d.text for d in docs), num_buckets=num_buckets)
    except DataSelectError as e:
        raise PipelineError(f"dsir target {target!r} is neither a domain of the pool nor readable text: {e}") from None


def _fit_sample(table, rows: np.ndarray | None, seed: int) -> np.ndarray:
    """``rows`` (ascending; None: every row), or a seeded subset of them holding about
    DSIR_FIT_BYTES of text: each row kept with probability DSIR_FIT_BYTES / their bytes, drawn a
    chunk at a time so that only the kept rows are ever held."""
    total = table.total("bytes", rows)
    n = table.n if rows is None else len(rows)
    if total <= DSIR_FIT_BYTES:
        return np.arange(n, dtype=np.int64) if rows is None else rows
    p = DSIR_FIT_BYTES / total
    rng = np.random.default_rng([seed, 11])
    step = 1 << 20
    kept = [lo + np.flatnonzero(rng.random(min(step, n - lo)) < p) for lo in range(0, n, step)]
    at = np.concatenate(kept)
    return at if rows is None else rows[at]


def _dsir_keys(feats: Features, target: str | None, seed: int, progress: bool, num_buckets: int = 10_000) -> np.ndarray:
    """Gumbel keys of DSIR importance weights for every row, one streaming pass over the pool's
    texts (the raw distribution is fitted on a seeded sample when the pool holds more than
    DSIR_FIT_BYTES of text, as DSIR fits its n-gram models on a subset)."""
    if not target:
        raise PipelineError("method dsir needs --target: a domain of the pool or a file/glob of target texts")
    table = feats.table
    table.check_inputs()
    target_counts = _dsir_target_counts(feats, target, num_buckets=num_buckets, seed=seed)
    if table.total("bytes") <= DSIR_FIT_BYTES:  # small pool: one pass keeps its sparse counts (never its texts)
        import scipy.sparse

        vec = baselines.vectorizer(num_buckets, (1, 2))
        counts = scipy.sparse.vstack([vec.transform(c) for c in baselines.chunked(
            (t for _, t in table.texts(range(table.n), progress=progress)), 1024)]).tocsr()
        ratio = baselines.dsir_log_ratio(np.asarray(counts.sum(axis=0)).ravel(), target_counts)
        log_w = counts @ ratio
    else:
        fit = _fit_sample(table, None, seed)
        raw = baselines.ngram_totals((t for _, t in table.texts(fit)), num_buckets=num_buckets)
        ratio = baselines.dsir_log_ratio(raw, target_counts)
        log_w = baselines.dsir_log_weights((t for _, t in table.texts(range(table.n), progress=progress)), table.n, ratio)
    return baselines.gumbel_keys(log_w, seed)


def _dedup_key(feats: Features, threshold: float, nlist: int | None, nprobe: int | None, seed: int) -> dict:
    return {"features": feats.fingerprint, "threshold": threshold, "nlist": nlist, "nprobe": nprobe, "seed": seed}


def _dedup_cache(out: Path, key: dict) -> np.ndarray | None:
    done = P.read_done(out / P.PARTS / "dedup")
    return np.load(out / P.PARTS / "dedup" / "dup_of.npy") if done and done.get("key") == P.run_key(key) else None


def dedup_step(features_dir: str | os.PathLike, out_dir: str | os.PathLike, *, threshold: float = 0.95,
               nlist: int | None = None, nprobe: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """The near-duplicate pass of a dedup selection, computed once into ``out_dir``/parts/dedup
    (``data-select run --step dedup``), so that the tasks of a split selection reuse it instead
    of each computing it."""
    feats = load_features(features_dir)
    out = Path(out_dir)
    key = _dedup_key(feats, threshold, nlist, nprobe, seed)
    if _dedup_cache(out, key) is None:
        dup_of = baselines.dedup(feats.matrix, threshold=threshold, nlist=nlist,
                                 nprobe=nprobe or baselines.DEFAULT_NPROBE, seed=seed, workdir=out, progress=progress)[1]
        cache = out / P.PARTS / "dedup"
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".dup_of-{os.getpid()}.npy"
        np.save(tmp, dup_of)
        os.replace(tmp, cache / "dup_of.npy")
        P.finish_part(cache, key, {})
    return P.read_done(out / P.PARTS / "dedup")


def _dedup(feats: Features, out: Path, params: dict, shard: P.Shard | None, group, progress: bool) -> np.ndarray:
    """``dup_of`` of every row (−1 kept): the cached pass of :func:`dedup_step` when there is one;
    a split selection computes it once (torchrun: rank 0 while the others wait; array tasks: each
    task that finds no cache, so run ``--step dedup`` first) and keeps it for every part."""
    key = _dedup_key(feats, params["dedup_threshold"], params["nlist"], params["nprobe"], params["seed"])
    cached = _dedup_cache(out, key)
    if cached is not None:
        return cached
    if group is not None:
        group.barrier()  # every rank has looked for the cache before rank 0 may write it
    kw = dict(threshold=params["dedup_threshold"], nlist=params["nlist"], seed=params["seed"], progress=progress)
    if shard is None:
        return baselines.dedup(feats.matrix, nprobe=params["nprobe"] or baselines.DEFAULT_NPROBE, workdir=out,
                               **{k: v for k, v in kw.items() if k != "progress"}, progress=progress)[1]
    if group is None or shard.index == 0:
        dedup_step(feats.root, out, nprobe=params["nprobe"], **kw)
    if group is not None:
        group.barrier()
    return _dedup_cache(out, key)


def select_features(features_dir: str | os.PathLike, out_dir: str | os.PathLike, *, method: str = "disf",
                    ratio: float | None = None, k_per_batch: int | None = None, tokens: float | None = None,
                    batch_size: int = 1024, seed: int = 0, dedup_threshold: float = 0.95, nlist: int | None = None,
                    nprobe: int = baselines.DEFAULT_NPROBE, target: str | None = None, disf_variant: str = "exact",
                    disf_processes: int = 1, tokenizer: str | None = None, vocab_size: int = 8000,
                    shard: P.Shard | None = None, workers: int = 1, progress: bool = True) -> dict:
    """Select documents from a features directory; writes ``selection.npy`` (rows in pick order),
    ``selection.jsonl`` (id, source, domain, row, rank = pick order, bytes), ``select.json``
    (method, params, counts, token estimate) and for the dedup methods ``deduplicated.*``;
    returns the select.json record (a part's DONE record for ``shard``).

    Without ``ratio``, ``k_per_batch`` or ``tokens`` the ratio is DiSF's 1/64. ``tokens`` is a
    token budget, estimated from the table's bytes with bytes per token measured by
    :func:`data_select.budget.measure_bytes_per_token` (with ``tokenizer``, else a provisional
    sentencepiece of ``vocab_size``); a budget over the pool's estimate selects everything.
    ``nlist`` / ``nprobe``: the dedup's IVF lists (default: exact up to
    :data:`data_select.baselines.FLAT_MAX` rows, else 2·√n lists). ``shard`` runs one part of a
    DiSF selection (merge with :func:`merge_selection`); under torchrun every rank runs its part
    and rank 0 merges.
    """
    if method not in METHODS:
        raise UsageError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    if disf_variant not in disf.VARIANTS:
        raise UsageError(f"unknown DiSF variant {disf_variant!r}; choose one of {', '.join(disf.VARIANTS)}")
    if disf_processes < 1:
        raise UsageError(f"disf_processes must be >= 1, got {disf_processes}")
    check_size_args(ratio, k_per_batch, tokens)
    if shard is not None and method not in SHARDED_METHODS:
        raise UsageError(f"--shard splits DiSF's batches; method {method!r} runs as one task (drop --shard)")
    if ratio is None and k_per_batch is None and tokens is None:
        ratio = DEFAULT_RATIO
    feats = load_features(features_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sized = method != "dedup"  # plain dedup keeps every non-duplicate: no batches
    dedup = method.startswith("dedup")
    params = {"ratio": ratio if sized else None, "k_per_batch": k_per_batch if sized else None, "tokens": tokens,
              "batch_size": batch_size if sized else None, "seed": seed,
              "dedup_threshold": dedup_threshold if dedup else None, "nlist": nlist if dedup else None,
              "nprobe": nprobe if dedup and (nlist or feats.n > baselines.FLAT_MAX) else None,
              "target": target if method == "dsir" else None,
              "disf_variant": disf_variant if sized else None,
              "disf_processes": disf_processes if sized and disf_variant == "released" else None,
              "tokenizer": tokenizer if tokens is not None else None,
              "vocab_size": vocab_size if tokens is not None and tokenizer is None else None}
    settings = {"method": method, **params, "features": feats.fingerprint}
    warned = []
    if method in SHARDED_METHODS and str(feats.meta.get("encoder", "")).startswith("hashing"):
        warnings.warn(HASHING_WARNING, HashingFeaturesWarning, stacklevel=2)
        warned.append(HASHING_WARNING)
    env = P.env_shard() if shard is None else None
    if env is None:
        return _select(feats, out, method, params, settings, warned, shard, None, workers, progress)
    with P.Group(env) as group:
        sharded = method in SHARDED_METHODS
        if sharded:
            _select(feats, out, method, params, settings, warned, env, group, workers, progress)
        elif env.index == 0:  # not split: rank 0 selects alone while the others wait below
            _select(feats, out, method, params, settings, warned, None, None, workers, progress)
        group.barrier()
        if sharded:
            if env.index == 0:
                merge_selection(out, progress=progress)
            group.barrier()
    return _read_json(out / SELECT_META)


def _select(feats: Features, out: Path, method: str, params: dict, settings: dict, warned: list,
            part: P.Shard | None, group, workers: int, progress: bool) -> dict:
    """The selection (or one DiSF part of it) of a validated request."""
    table = feats.table
    dup_of = np.full(0, -1, dtype=np.int64)
    if method.startswith("dedup"):  # first: under torchrun every rank meets in there, finished part or not
        try:
            dup_of = _dedup(feats, out, params, part, group, progress)
        except baselines.BaselineError as e:
            raise PipelineError(f"{method} selection on {feats.root}: {e}") from None
    part_key = {**settings, "parts": part.count} if part is not None else None
    if part is not None:
        path, done = P.start_part(out, "select", part, part_key)
        if done is not None:
            return done
    else:
        (out / SELECT_META).unlink(missing_ok=True)  # rewritten last: present means the selection is complete
    size_kw = dict(ratio=params["ratio"], k_per_batch=params["k_per_batch"], batch_size=params["batch_size"] or 1024,
                   seed=params["seed"])
    variant_kw = dict(variant=params["disf_variant"] or "exact", processes=params["disf_processes"] or 1)
    count_kw = dict(disf_variant=variant_kw["variant"], disf_processes=variant_kw["processes"], **size_kw)
    tokens = params["tokens"]
    pool = np.flatnonzero(dup_of < 0) if method.startswith("dedup") else None  # rows to pick from (None: all)
    estimate = costs = pool_costs = None
    everything = False
    try:
        pool_n = table.n if pool is None else len(pool)
        if tokens is not None:
            estimate = budget.measure_bytes_per_token(table, tokenizer=params["tokenizer"],
                                                      vocab_size=params["vocab_size"] or 8000, seed=params["seed"])
            costs = budget.estimated_tokens(table, estimate)
            pool_costs = costs if pool is None else costs[pool]
            everything = tokens >= pool_costs.sum()
        if everything:
            picked_pos = np.arange(pool_n) if part is None or part.index == 0 else np.empty(0, np.int64)
        elif method in SHARDED_METHODS:
            matrix = feats.matrix if pool is None else RowSubset(feats.matrix, pool)
            n_batches = len(disf.batch_lengths(pool_n, size_kw["batch_size"], **variant_kw))
            batches = None if part is None else range(*_even(n_batches, part))
            picked_pos = disf.select(matrix, **size_kw, **variant_kw, workers=workers, costs=pool_costs,
                                     budget=tokens, batches=batches, progress=progress)
        elif method == "random":
            if tokens is None:
                picked_pos = baselines.random_select(pool_n, selection_size(pool_n, **count_kw), params["seed"])
            else:
                order = np.random.default_rng(params["seed"]).permutation(pool_n)
                picked_pos = np.sort(budget.prefix_reaching(order, pool_costs, tokens))
        elif method == "dedup+random" and tokens is None:
            k = min(pool_n, selection_size(table.n, **count_kw))
            picked_pos = baselines.random_select(pool_n, k, params["seed"])
        elif method == "dsir":
            keys = _dsir_keys(feats, params["target"], params["seed"], progress)
            if tokens is None:
                picked_pos = baselines.top_k(keys, selection_size(pool_n, **count_kw))
            else:
                picked_pos = np.sort(budget.prefix_reaching(np.argsort(-keys, kind="stable"), pool_costs, tokens))
        elif tokens is None:  # dedup: every non-duplicate (the pool itself)
            picked_pos = None
        else:  # dedup, dedup+random under a budget: non-duplicates in a seeded random order
            order = np.random.default_rng(params["seed"]).permutation(pool_n)
            picked_pos = np.sort(budget.prefix_reaching(order, pool_costs, tokens))
    except (disf.DisfError, baselines.BaselineError) as e:
        raise PipelineError(f"{method} selection on {feats.root}: {e}") from None
    picked = pool if picked_pos is None else np.asarray(picked_pos if pool is None else pool[picked_pos], dtype=np.int64)
    del picked_pos, pool, pool_costs
    if part is not None:
        np.save(path / "picks.npy", picked)
        return P.finish_part(path, part_key, {"features_dir": str(feats.root.resolve()), "picks": int(len(picked)),
                                              "estimate": estimate, "everything": everything, "warnings": warned})
    record = write_selection(out, feats, method, params, picked, dup_of, estimate=estimate, costs=costs,
                             everything=everything, warned=warned, progress=progress)
    P.remove_parts(out, "dedup")
    return record


def _even(n: int, part: P.Shard) -> tuple[int, int]:
    """Part ``part`` of n DiSF batches: contiguous and as equal as possible."""
    return (n * part.index // part.count, n * (part.index + 1) // part.count)


def merge_selection(out_dir: str | os.PathLike, *, progress: bool = True) -> dict:
    """Concatenate the finished DiSF parts of a selection (in batch order) into its outputs;
    refuses missing, unfinished or mixed parts before writing anything."""
    out = Path(out_dir)
    found = P.collect_parts(out, "select")
    first = found[0][1]
    settings = {k: v for k, v in first["settings"].items() if k != "parts"}
    feats = load_features(first["features_dir"])
    if feats.fingerprint != settings["features"]:
        raise P.PartError(f"{out}: the parts were selected from other features ({settings['features'][:12]}, "
                          f"now {feats.fingerprint[:12]} in {feats.root})")
    picked = np.concatenate([np.load(p / "picks.npy") for p, _ in found]).astype(np.int64)
    dup_of = np.load(out / P.PARTS / "dedup" / "dup_of.npy") if settings["method"] == "dedup+disf" \
        else np.full(0, -1, dtype=np.int64)
    params = {k: v for k, v in settings.items() if k not in ("method", "features")}
    estimate = first.get("estimate")
    costs = budget.estimated_tokens(feats.table, estimate) if estimate else None
    record = write_selection(out, feats, settings["method"], params, picked, dup_of, estimate=estimate, costs=costs,
                             everything=bool(first.get("everything")), warned=first.get("warnings", []),
                             progress=progress)
    P.remove_parts(out, "select")
    P.remove_parts(out, "dedup")
    return record


def write_selection(out: Path, feats: Features, method: str, params: dict, picked: np.ndarray, dup_of: np.ndarray,
                    *, estimate: dict | None, costs: np.ndarray | None, everything: bool, warned: list,
                    progress: bool) -> dict:
    """selection.npy, selection.jsonl and deduplicated.* (streamed a chunk of rows at a time),
    then select.json."""
    table = feats.table
    n = table.n
    (out / SELECT_META).unlink(missing_ok=True)
    _save_npy(out / SELECTION_ROWS, picked)
    _write_rows(out / SELECTION, table, picked, lambda rows, ids, src, dom, nbytes, lo: [
        {"id": i, "source": s, "domain": d, "row": r, "rank": lo + j, "bytes": b}
        for j, (i, s, d, r, b) in enumerate(zip(ids, src, dom, rows, nbytes))])
    dups = np.flatnonzero(dup_of >= 0) if dup_of.size else np.empty(0, dtype=np.int64)
    _save_npy(out / DEDUPLICATED_ROWS, np.stack([dups, dup_of[dups]], axis=1) if dups.size else np.empty((0, 2), np.int64))
    if dups.size:
        originals = dup_of[dups]
        _write_rows(out / DEDUPLICATED, table, dups, lambda rows, ids, src, dom, nbytes, lo: [
            {"id": i, "row": r, "duplicate_of": o}
            for i, r, o in zip(ids, rows, table.ids(originals[lo:lo + len(rows)]))])
    else:
        (out / DEDUPLICATED).write_text("")
    selected_bytes = table.total("bytes", picked)
    record = {
        "format": "budgetlm-selection/2", "method": method, "params": params,
        "features": {"dir": str(feats.root.resolve()), "encoder": feats.meta["encoder"], "fingerprint": feats.fingerprint},
        "counts": {"input": n, "selected": int(len(picked)), "not_selected": n - int(len(picked)) - int(dups.size),
                   "deduplicated": int(dups.size)},
        "bytes": {"selected": selected_bytes},
        "selection_sha256": sha256_file(out / SELECTION_ROWS),
        "warnings": list(warned),
    }
    if estimate is not None:
        pool_rows = np.flatnonzero(dup_of < 0) if dup_of.size else None
        record["tokens"] = {
            "budget": params.get("tokens"), "estimate": estimate,
            "estimated_selected": float(costs[picked].sum()),
            "estimated_pool": float(costs.sum() if pool_rows is None else costs[pool_rows].sum()),
            "everything": bool(everything)}
        if everything:
            record["warnings"].append(f"--tokens {params.get('tokens'):,.0f} is more than the pool's estimated "
                                      f"{record['tokens']['estimated_pool']:,.0f} tokens: everything is selected")
    atomic_write_json(out / SELECT_META, record)
    return record


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(arr))
    os.replace(tmp, path)


def _write_rows(path: Path, table, rows: np.ndarray, make, chunk: int = _OUT_CHUNK) -> None:
    """A JSON Lines file over ``rows``, built a chunk at a time from the table's columns."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for lo in range(0, len(rows), chunk):
            part = rows[lo:lo + chunk]
            files = table.column("file", part)
            recs = make(part.tolist(), table.ids(part), [table.files[i] for i in files.tolist()],
                        table.domain_names(table.column("domain", part)), table.column("bytes", part).tolist(), lo)
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    return read_json(path, PipelineError)


def selection_dir(selection: str | os.PathLike) -> Path:
    """The folder of a selection given as the folder or one of its files (selection.jsonl)."""
    p = Path(selection)
    return p if p.is_dir() else p.parent


def read_selection(selection: str | os.PathLike) -> tuple[dict, np.ndarray]:
    """(select.json record, rows in pick order) of a selection made by `data-select select`;
    refuses one whose rows file does not match its record."""
    d = selection_dir(selection)
    record = _read_json(d / SELECT_META)
    if record is None:
        raise UsageError(f"{d}: no {SELECT_META}: not a selection made by `data-select select` (or unfinished)")
    if record.get("format") != "budgetlm-selection/2":
        raise UsageError(f"{d}: a selection in an older format; re-run `data-select select`")
    rows_path = d / SELECTION_ROWS
    if not rows_path.is_file() or sha256_file(rows_path) != record["selection_sha256"]:
        raise PipelineError(f"{d / SELECT_META} does not describe {rows_path} (missing or checksum differs); re-run select")
    return record, np.load(rows_path)
