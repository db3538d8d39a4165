"""Issue-6 experiment (c): does DiSF deliver? DiSF vs random vs DSIR on the real Debian corpus.

One command, fixed seeds, resumable (every step skips work whose completion record exists):

1. sample   a deterministic pool (``--per-domain`` documents per domain, first ``--cap-bytes`` of
            each), a disjoint held-out uniform mix (``--heldout`` per domain) and a disjoint DSIR
            target (books + encyclopedia documents in neither);
2. embed    the pool with MiniLM (128 tokens) and with the hashing encoder;
3. tokenizer one sentencepiece BPE trained on the whole pool, shared by every selection and eval;
4. select   the same ratio with each method, and ``data-select report`` of every selection in
            MiniLM feature space (so dominance / effective rank are comparable across methods);
5. train    the same tiny Llama on each selection for the same token budget (< one epoch of the
            smallest selection), per seed;
6. eval     held-out loss per domain (one manifest per domain, same tokenizer); overall = the
            token-weighted mean over domains, macro = their plain mean;
7. publish  table, plots and raw JSON into ``docs/results/disf`` and the ``disf`` section of
            docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, ExperimentError, markdown_table, write_json, write_section  # noqa: E402
from data_select.errors import DataSelectError  # noqa: E402

DOMAINS = ("code", "manuals", "books", "encyclopedia", "standards", "web", "qa", "legal")
TARGET_DOMAINS = ("books", "encyclopedia")
NOTES = "notes.md"  # hand-written reading of the numbers, kept across re-runs and appended to the section
TRAIN_CONFIG = ROOT / "configs" / "train" / "exp-disf.yaml"
# name -> (selection method, features used for selecting); reports always use MiniLM features.
METHODS = {
    "disf-minilm": ("disf", "minilm"),
    "disf-hashing": ("disf", "hashing"),
    "random": ("random", "minilm"),
    "dsir": ("dsir", "minilm"),
    "dedup+disf-minilm": ("dedup+disf", "minilm"),
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExperimentError(f"{path}: unreadable ({e})") from None


def truncate_utf8(text: str, cap_bytes: int) -> str:
    """First ``cap_bytes`` bytes of ``text``, cut on a character boundary (a cap keeps one long RFC
    from dominating a selection's tokens, so equal file counts give comparable token counts)."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= cap_bytes:
        return text
    return raw[:cap_bytes].decode("utf-8", "ignore")


# --------------------------------------------------------------------------- 1. sample


def sample_corpus(corpus: Path, out: Path, *, per_domain: int | dict[str, int], heldout: int, target: int,
                  cap_bytes: int, seed: int) -> dict:
    """Write pool/<domain>.jsonl, heldout/<domain>.jsonl and target/target.jsonl (disjoint draws).

    ``per_domain``: pool documents of every domain, or a {domain: count} map (experiment (c2) gives
    the corpus's natural shares this way)."""
    record = out / "sample.json"
    settings = {"corpus": str(corpus.resolve()), "per_domain": per_domain, "heldout": heldout, "target": target,
                "cap_bytes": cap_bytes, "seed": seed}
    if record.is_file() and _read_json(record).get("settings") == settings:
        return _read_json(record)
    meta = corpus / "corpus.json"
    if not meta.is_file() or _read_json(meta).get("status") != "complete":
        raise ExperimentError(f"{meta}: not a complete corpus (build it with `data-select corpus --out {corpus} --full`)")
    for sub in ("pool", "heldout", "target"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    counts, target_rows = {}, []
    for d in DOMAINS:
        path = corpus / f"{d}.jsonl"
        if not path.is_file():
            raise ExperimentError(f"{path}: domain file missing from the corpus")
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in f)
        want_target = target if d in TARGET_DOMAINS else 0
        want_pool = per_domain[d] if isinstance(per_domain, dict) else per_domain
        need = want_pool + heldout + want_target
        if n < need:
            raise ExperimentError(f"{path}: {n} documents, need {need} (pool {want_pool} + held-out {heldout} + target {want_target})")
        order = np.random.default_rng([seed, DOMAINS.index(d)]).permutation(n)
        role = {int(i): "pool" for i in order[:want_pool]}
        role.update({int(i): "heldout" for i in order[want_pool:want_pool + heldout]})
        role.update({int(i): "target" for i in order[want_pool + heldout:need]})
        rows = {"pool": [], "heldout": [], "target": []}
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                r = role.get(i)
                if r is None:
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    raise ExperimentError(f"{path}:{i + 1}: not a JSON line") from None
                rows[r].append({"id": doc["id"], "domain": d, "text": truncate_utf8(doc["text"], cap_bytes)})
        _write_jsonl(out / "pool" / f"{d}.jsonl", rows["pool"])
        _write_jsonl(out / "heldout" / f"{d}.jsonl", rows["heldout"])
        target_rows += rows["target"]
        counts[d] = {"corpus": n, "pool": len(rows["pool"]), "heldout": len(rows["heldout"]), "target": len(rows["target"]),
                     "pool_bytes": sum(len(r["text"].encode()) for r in rows["pool"])}
    _write_jsonl(out / "target" / "target.jsonl", target_rows)
    result = {"settings": settings, "domains": counts}
    write_json(record, result)
    return result


# --------------------------------------------------------------------------- 2-4. features, tokenizer, selections


def pool_inputs(work: Path) -> list[str]:
    return [str(work / "pool" / "*.jsonl")]


def embed_pool(work: Path, encoder: str, *, max_tokens: int, threads: int) -> Path:
    """Features of the pool (resumes an interrupted embedding; returns at once when complete)."""
    from data_select.embed import embed_corpus, load_features, read_meta

    out = work / f"features-{encoder}"
    before = read_meta(out)
    complete = (out / "DONE.json").is_file()
    t0 = time.time()
    done = embed_corpus(pool_inputs(work), out, encoder=encoder, max_tokens=max_tokens, batch_size=64, workers=threads)
    if not complete:
        write_json(work / f"timing-embed-{encoder}.json", {"embed_s": round(time.time() - t0, 1), "documents": done["n"],
                                                           "resumed": before is not None})
    _log(f"features {encoder}: {done['n']:,} documents, {done['dim']}-d, "
         f"rejected {load_features(out).table.rejected.total}")
    return out


def _tokenize(inputs: list[str], out: Path, **kw) -> dict:
    """Token shards + manifest unless a manifest is already there (written last, so it marks completion)."""
    from data_select.tokenize import tokenize_corpus

    manifest = out / "manifest.json"
    if manifest.is_file():
        return _read_json(manifest)
    return tokenize_corpus(inputs, out, seed=0, num_workers=1, progress=False, **kw)


def shared_tokenizer(work: Path, vocab_size: int) -> Path:
    """One sentencepiece BPE trained on the whole pool: losses are comparable only under one tokenizer."""
    m = _tokenize(pool_inputs(work), work / "tokens" / "pool", vocab_size=vocab_size, val_fraction=0.0)
    _log(f"pool tokens: {m['splits']['train']['tokens']:,} (vocab {m['tokenizer']['vocab_size']})")
    return work / "tokens" / "pool" / "tokenizer"


def heldout_manifests(work: Path, tokenizer: Path) -> dict[str, Path]:
    """One manifest per domain of the held-out mix; every document in its train split (val_fraction 0)."""
    out = {}
    for d in DOMAINS:
        dest = work / "tokens" / f"heldout-{d}"
        _tokenize([str(work / "heldout" / f"{d}.jsonl")], dest, tokenizer=str(tokenizer), val_fraction=0.0)
        out[d] = dest / "manifest.json"
    return out


def select_one(work: Path, name: str, seed: int, *, ratio: float, batch_size: int, methods: dict = METHODS) -> Path:
    """Selection + report (MiniLM feature space for every method) into sel/<name>-s<seed>/."""
    from data_select.pipeline import report, select_features

    method, feats = methods[name]
    out = work / "sel" / f"{name}-s{seed}"
    if not (out / "report.json").is_file():
        t0 = time.time()
        target = str(work / "target" / "target.jsonl") if method == "dsir" else None
        select_features(work / f"features-{feats}", out, method=method, ratio=ratio, batch_size=batch_size, seed=seed,
                        target=target, progress=False)
        rep = report(work / "features-minilm", out / "selection.jsonl", out, top_k=10, sample=10_000, seed=0)
        write_json(out / "timing.json", {"select_and_report_s": round(time.time() - t0, 1)})
        sp = rep["spectrum"]
        _log(f"select {name} seed {seed}: {sp['selected']['files']} files, dominance {sp['selected']['dominance']:.3f} "
             f"(random {sp['random']['dominance']:.3f}, pool {sp['pool']['dominance']:.3f})")
    return out


def tokenize_selection(work: Path, sel_dir: Path, tokenizer: Path, val_fraction: float = 0.01) -> Path:
    dest = work / "tokens" / sel_dir.name
    _tokenize(pool_inputs(work), dest, tokenizer=str(tokenizer), selection=str(sel_dir / "selection.jsonl"),
              val_fraction=val_fraction)
    return dest / "manifest.json"


# --------------------------------------------------------------------------- 5-6. train, eval


def _train_config(run_dir: Path, manifest: Path, steps: int, seed: int):
    from pretrain.config import load_config

    return load_config(TRAIN_CONFIG, [f"run_dir={run_dir}", f"data.manifest={manifest}", f"seed={seed}",
                                      f"data.seed={seed}", f"budget.steps={steps}"])


def common_steps(manifests: list[Path], max_steps: int) -> int:
    """Optimizer steps every selection can feed within one epoch (the same budget for all), capped."""
    from pretrain.data import TokenData

    cfg = _train_config(Path("unused"), manifests[0], max_steps, 0)
    per_step = cfg.budget.global_batch_size
    epochs = {str(m): TokenData(m).num_sequences("train", cfg.data.seq_len) // per_step for m in manifests}
    steps = min(min(epochs.values()), max_steps)
    if steps < 20:
        raise ExperimentError(f"smallest selection holds only {steps} steps of data ({epochs}); raise --per-domain or --ratio")
    return steps


def train_one(work: Path, label: str, manifest: Path, steps: int, seed: int) -> Path:
    from pretrain.trainer import train

    run_dir = work / "runs" / label
    if (run_dir / "summary.json").is_file():
        return run_dir
    _log(f"train {label}: {steps} steps")
    t0 = time.time()
    train(_train_config(run_dir, manifest, steps, seed))
    write_json(run_dir / "timing.json", {"train_s": round(time.time() - t0, 1)})
    return run_dir


def eval_one(work: Path, run_dir: Path, heldout: dict[str, Path]) -> dict:
    """Held-out loss of the final checkpoint on each domain's manifest (whole split)."""
    from pretrain.evaluate import evaluate

    dest = work / "evals" / f"{run_dir.name}.json"
    if dest.is_file():
        return _read_json(dest)
    res = {}
    for d, m in heldout.items():
        r = evaluate(run_dir, m, split="train", micro_batch_size=16)
        res[d] = {"loss": r["loss"], "tokens": r["predicted_tokens"]}
    write_json(dest, res)
    return res


def run_grid(work: Path, names: list[str], seeds: list[int], *, tokenizer: Path, ratio: float, batch_size: int,
             max_steps: int, methods: dict = METHODS, val_fraction: float = 0.01) -> tuple[int, dict]:
    """Steps 4-6 for every (method, seed): select, tokenize, train for one common budget, evaluate.

    Returns (steps per run, {(name, seed): manifest}). The first invocation fixes the budget in
    ``budget.json``; later ones (more seeds) must be able to feed it."""
    heldout = heldout_manifests(work, tokenizer)
    manifests = {}
    for seed in seeds:
        for name in names:
            sel = select_one(work, name, seed, ratio=ratio, batch_size=batch_size, methods=methods)
            manifests[(name, seed)] = tokenize_selection(work, sel, tokenizer, val_fraction)
    steps = common_steps(list(manifests.values()), max_steps)
    budget = work / "budget.json"
    if budget.is_file():
        fixed = int(_read_json(budget)["steps"])
        if steps < fixed:
            raise ExperimentError(f"{budget}: runs so far used {fixed} steps, but a selection now holds only {steps}")
        steps = fixed
    else:
        write_json(budget, {"steps": steps, "max_steps": max_steps})
    _log(f"budget: {steps} steps for every run")
    for seed in seeds:
        for name in names:
            run_dir = train_one(work, f"{name}-s{seed}", manifests[(name, seed)], steps, seed)
            ev = eval_one(work, run_dir, heldout)
            _log(f"{name} seed {seed}: held-out loss {overall_losses(ev)[0]:.4f}")
    return steps, manifests


# --------------------------------------------------------------------------- 7. tables and plots (pure helpers)


def overall_losses(per_domain: dict[str, dict]) -> tuple[float, float]:
    """(token-weighted mean, macro mean) of per-domain held-out losses {domain: {loss, tokens}}."""
    if not per_domain:
        raise ExperimentError("no per-domain losses to combine")
    tokens = np.array([v["tokens"] for v in per_domain.values()], dtype=np.float64)
    losses = np.array([v["loss"] for v in per_domain.values()], dtype=np.float64)
    return float((losses * tokens).sum() / tokens.sum()), float(losses.mean())


def aggregate(rows: list[dict]) -> list[dict]:
    """Per method over seeds: mean, seed spread (sample std; 0 with one seed) of each numeric field,
    and the seeds seen. ``rows`` are per-(method, seed) dicts with flat numeric fields."""
    out: dict[str, dict] = {}
    for r in rows:
        out.setdefault(r["method"], {"method": r["method"], "seeds": [], "_vals": {}})
        agg = out[r["method"]]
        agg["seeds"].append(r["seed"])
        for k, v in r.items():
            if k not in ("method", "seed") and isinstance(v, (int, float)) and not isinstance(v, bool):
                agg["_vals"].setdefault(k, []).append(float(v))
    result = []
    for agg in out.values():
        vals = agg.pop("_vals")
        for k, v in vals.items():
            agg[k] = float(np.mean(v))
            agg[f"{k}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        result.append(agg)
    return result


def results_table(aggs: list[dict], domains: tuple[str, ...] = DOMAINS) -> str:
    """Markdown table: one row per method, means over seeds (± sample std where 2+ seeds)."""
    def pm(a: dict, k: str, fmt: str = "{:.3f}") -> str:
        s = fmt.format(a[k])
        return s + (f" ± {fmt.format(a[k + '_std'])}" if len(a["seeds"]) > 1 else "")

    headers = ["method", "seeds", "files", "train tokens", "dominance top-10 sel / random / pool", "eff. rank sel / random",
               "held-out loss (token-wtd)", "macro"] + list(domains)
    rows = []
    for a in aggs:
        rows.append([a["method"], len(a["seeds"]), f"{a['files']:.0f}", f"{a['train_tokens']:,.0f}",
                     f"{a['dominance']:.3f} / {a['dominance_random']:.3f} / {a['dominance_pool']:.3f}",
                     f"{a['effective_rank']:.1f} / {a['effective_rank_random']:.1f}",
                     pm(a, "loss"), pm(a, "macro_loss")] + [pm(a, f"loss_{d}") for d in domains])
    return markdown_table(headers, rows)


def domain_table(rows: list[dict], domains: tuple[str, ...] = DOMAINS) -> str:
    """Markdown table of selected files per domain (seed-0 selections)."""
    headers = ["method"] + list(domains)
    return markdown_table(headers, [[r["method"]] + [int(r[f"files_{d}"]) for d in domains] for r in rows])


def plot_domain_losses(aggs: list[dict], out_png: Path, domains: tuple[str, ...] = DOMAINS) -> None:
    """Grouped bars: held-out loss per domain for each method (mean over seeds, std as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(domains) + 1)
    width = 0.8 / max(1, len(aggs))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for i, a in enumerate(aggs):
        keys = [f"loss_{d}" for d in domains] + ["loss"]
        ax.bar(x + (i - (len(aggs) - 1) / 2) * width, [a[k] for k in keys], width,
               yerr=[a.get(k + "_std", 0.0) for k in keys], label=a["method"], capsize=2)
    ax.set_xticks(x, list(domains) + ["overall"])
    ax.set_ylabel("held-out loss (nats/token)")
    lo = min(min(a[f"loss_{d}"] for d in domains) for a in aggs)
    ax.set_ylim(bottom=max(0.0, lo - 0.5))
    ax.legend(fontsize=8, ncol=min(5, len(aggs)))
    ax.set_title("Held-out loss per domain, same model and token budget per selection")
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)


def verdict(aggs: list[dict], a: str, b: str, key: str = "loss") -> str:
    """One sentence: does method ``a`` have lower ``key`` than ``b``, and is the gap beyond seed noise?

    Noise = the larger of the two methods' seed std; a gap counts as real only with 2+ seeds
    each and |gap| > 2 x noise.
    """
    by = {x["method"]: x for x in aggs}
    if a not in by or b not in by:
        raise ExperimentError(f"verdict: methods {a!r} and {b!r} must both be in the results")
    gap = by[b][key] - by[a][key]
    noise = max(by[a].get(f"{key}_std", 0.0), by[b].get(f"{key}_std", 0.0))
    seeds = min(len(by[a]["seeds"]), len(by[b]["seeds"]))
    word = "lower (better)" if gap > 0 else "higher (worse)"
    if seeds < 2:
        judged = "one seed only, so noise is unknown"
    elif abs(gap) > 2 * noise:
        judged = f"beyond seed noise (|gap| > 2 x seed std {noise:.3f})"
    else:
        judged = f"within seed noise (seed std {noise:.3f})"
    return f"{a} {key} is {abs(gap):.3f} {word} than {b}: {judged}"


def finished(work: Path, methods: dict = METHODS) -> tuple[list[str], list[int]]:
    """Methods (in ``methods`` order) and seeds with a finished held-out evaluation, from any invocation."""
    done = set()
    for f in (work / "evals").glob("*.json"):
        name, _, seed = f.stem.rpartition("-s")
        if name in methods and seed.isdigit():
            done.add((name, int(seed)))
    return [n for n in methods if any(d[0] == n for d in done)], sorted({d[1] for d in done})


def wall_times(work: Path, names: list[str], seeds: list[int]) -> str:
    """Measured wall times of the steps (from the timing files the steps leave), as one phrase."""
    def t(path: Path, key: str) -> float:
        return float(_read_json(path)[key]) if path.is_file() else float("nan")

    labels = [f"{n}-s{s}" for s in seeds for n in names if (work / "evals" / f"{n}-s{s}.json").is_file()]
    train = [t(work / "runs" / lab / "timing.json", "train_s") for lab in labels]
    sel = [t(work / "sel" / lab / "timing.json", "select_and_report_s") for lab in labels]
    emb = t(work / "timing-embed-minilm.json", "embed_s")
    return (f"wall time on the shared 2-core machine: MiniLM embedding {emb / 60:.1f} min, selection + report "
            f"{np.nansum(sel) / 60:.1f} min, training {np.nansum(train) / 60:.1f} min over {len(train)} runs")


def welch_p(rows: list[dict], a: str, b: str, key: str = "loss") -> float:
    """Two-sided Welch t-test p-value of ``key`` between methods a and b over their seeds (nan below 2 each)."""
    from scipy.stats import ttest_ind

    xa = [r[key] for r in rows if r["method"] == a]
    xb = [r[key] for r in rows if r["method"] == b]
    if len(xa) < 2 or len(xb) < 2:
        return float("nan")
    return float(ttest_ind(xa, xb, equal_var=False).pvalue)


def run_rows(work: Path, names: list[str], seeds: list[int]) -> list[dict]:
    """Flat per-(method, seed) rows from the finished reports, manifests and evals."""
    rows = []
    for seed in seeds:
        for name in names:
            label = f"{name}-s{seed}"
            ev = work / "evals" / f"{label}.json"
            if not ev.is_file():
                continue
            rep = _read_json(work / "sel" / label / "report.json")
            man = _read_json(work / "tokens" / label / "manifest.json")
            losses = _read_json(ev)
            overall, macro = overall_losses(losses)
            sp = rep["spectrum"]
            row = {"method": name, "seed": seed, "files": sp["selected"]["files"],
                   "train_tokens": man["splits"]["train"]["tokens"],
                   "dominance": sp["selected"]["dominance"], "dominance_random": sp["random"]["dominance"],
                   "dominance_pool": sp["pool"]["dominance"], "effective_rank": sp["selected"]["effective_rank"],
                   "effective_rank_random": sp["random"]["effective_rank"], "loss": overall, "macro_loss": macro}
            row.update({f"loss_{d}": losses[d]["loss"] for d in DOMAINS})
            row.update({f"files_{d}": rep["domains"].get(d, {}).get("selected", 0) for d in DOMAINS})
            rows.append(row)
    return rows


def plot_spectrum_compare(work: Path, names: list[str], seed: int, out_png: Path) -> None:
    """Every method's selection spectrum (MiniLM features) and the pool's, on one figure."""
    from data_select.embed import load_features
    from data_select.select import read_selection
    from data_select.spectrum import correlation_eigenvalues

    feats = load_features(work / "features-minilm").matrix
    eigs = {"pool": correlation_eigenvalues(feats, sample=10_000, seed=0)}
    for name in names:
        sel = work / "sel" / f"{name}-s{seed}"
        if (sel / "select.json").is_file():
            eigs[name] = correlation_eigenvalues(feats[np.sort(read_selection(sel)[1])], sample=10_000, seed=0)
    plot_top_spectra(eigs, out_png)


def plot_top_spectra(named_eigs: dict[str, np.ndarray], out_png: Path, kmax: int = 50, top_k: int = 10) -> None:
    """The head of each spectrum, where DiSF acts: λ_i/Σλ for i ≤ kmax (left) and the cumulative share
    of the top k (right; its value at ``top_k`` is the dominance score). The full-length plot is
    dominated by the zero tail of a 375-file sample in 384 dimensions, so it hides the difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, e in named_eigs.items():
        e = np.sort(np.clip(np.asarray(e, dtype=np.float64), 0.0, None))[::-1]
        share = e / e.sum()
        k = np.arange(1, min(kmax, len(e)) + 1)
        style = {"color": "black", "linestyle": "--"} if name == "pool" else {}
        ax1.plot(k, share[: len(k)], label=name, **style)
        ax2.plot(k, np.cumsum(share)[: len(k)], label=f"{name} ({np.cumsum(share)[top_k - 1]:.3f} at {top_k})", **style)
    ax1.set_yscale("log")
    ax1.set(xlabel="eigenvalue rank", ylabel="λ / Σλ", title="Head of the correlation spectrum (MiniLM features)")
    ax2.axvline(top_k, color="grey", linewidth=0.8)
    ax2.set(xlabel="k", ylabel="share of the top k eigenvalues", title="Dominance curve (lower = flatter)")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)


def copy_raw(work: Path, out: Path, names: list[str], seeds: list[int]) -> None:
    """Per finished run: metrics, summary, selection report and record, held-out losses -> out/runs/<label>/."""
    for seed in seeds:
        for name in names:
            label = f"{name}-s{seed}"
            if (work / "evals" / f"{label}.json").is_file():
                dest = out / "runs" / label
                dest.mkdir(parents=True, exist_ok=True)
                for src in (work / "runs" / label / "metrics.jsonl", work / "runs" / label / "summary.json",
                            work / "sel" / label / "report.json", work / "sel" / label / "select.json",
                            work / "evals" / f"{label}.json"):
                    shutil.copyfile(src, dest / src.name.replace(f"{label}.json", "heldout.json"))


def publish(work: Path, out: Path, results_md: Path, names: list[str], seeds: list[int], info: dict) -> list[dict]:
    """Raw results, plots and the ``disf`` section of RESULTS.md from what has finished so far."""
    out.mkdir(parents=True, exist_ok=True)
    rows = run_rows(work, names, seeds)
    if not rows:
        raise ExperimentError(f"no finished evaluation under {work / 'evals'}; nothing to publish")
    done = {r["method"] for r in rows}
    names = [n for n in names if n in done]
    aggs = aggregate(rows)
    copy_raw(work, out, names, seeds)
    write_json(out / "rows.json", rows)
    write_json(out / "summary.json", {"info": info, "methods": aggs})
    plot_domain_losses(aggs, out / "domain_loss.png")
    plot_spectrum_compare(work, names, seeds[0], out / "spectra.png")
    write_section(results_md, "disf", section_text(aggs, rows, info, results_md, out))
    return aggs


def section_text(aggs: list[dict], rows: list[dict], info: dict, results_md: Path, out: Path) -> str:
    rel = os.path.relpath(out, results_md.parent)
    names = {a["method"] for a in aggs}
    pairs = [(b, k) for k in ("loss", "macro_loss") for b in ("random", "dsir", "disf-hashing", "dedup+disf-minilm")
             if {"disf-minilm", b} <= names]
    lines = [f"{verdict(aggs, 'disf-minilm', b, k)}; Welch p = {welch_p(rows, 'disf-minilm', b, k):.2f}" for b, k in pairs]
    seed0 = [r for r in rows if r["seed"] == min(r["seed"] for r in rows)]
    notes_file = out / NOTES
    notes = "\n" + notes_file.read_text().strip() + "\n" if notes_file.is_file() else ""
    return f"""## (c) Does DiSF deliver? DiSF vs random vs DSIR at the same ratio and token budget

Driver: `python tools/experiments/disf.py` (resumable; {info['wall']}). Raw results: `{os.path.relpath(out, ROOT)}/`
(`summary.json`, `rows.json`, per run `runs/<method>-s<seed>/` with metrics, report and held-out losses).

- **Pool**: {info['pool_docs']:,} documents of the full Debian corpus ({info['per_domain']} per domain drawn
  uniformly with seed 0, each cut to its first {info['cap_bytes']:,} bytes); **held-out mix**: {info['heldout']} other
  documents per domain (never in any pool); **DSIR target**: {info['target_docs']} further `books` + `encyclopedia`
  documents (the "high-quality" reference, in neither pool nor held-out set).
- **Features**: MiniLM (all-MiniLM-L6-v2, first {info['max_tokens']} tokens) and the hashing encoder; every
  selection's spectrum is measured in MiniLM space (10 top eigenvalues; random = same-size random subset of the pool).
- **Selection**: ratio {info['ratio']:.4f} (1/{round(1 / info['ratio'])}) of batches of {info['batch_size']}; seeds {info['seeds']}
  (the seed drives the selection *and* the training init/data order). DSIR = hashed-n-gram importance
  resampling towards the target; `dedup+disf` = near-duplicate removal (cos ≥ 0.95) then DiSF.
- **Training**: `configs/train/exp-disf.yaml` ({info['n_params']:,} parameters), one shared sentencepiece BPE
  (vocab {info['vocab']}) trained on the whole pool, {info['steps']} steps x {info['tokens_per_step']:,} tokens =
  **{info['steps'] * info['tokens_per_step']:,} tokens for every run** (under one epoch of the smallest selection), cosine LR 3e-3.
- **Held-out loss**: whole held-out set of each domain; overall = token-weighted mean over domains,
  macro = plain mean over the 8 domains.

{results_table(aggs)}

Selected files per domain (seed {seed0[0]['seed']}; the pool has {info['per_domain']} per domain):

{domain_table(seed0)}

![held-out loss per domain]({rel}/domain_loss.png)
![eigenvalue spectra]({rel}/spectra.png)

**Verdict (computed from the table)**:
{chr(10).join('- ' + v for v in lines)}
{notes}"""


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " (relative paths: from the repository root)")
    p.add_argument("--corpus", default="work/corpus-full", help="full corpus (data-select corpus --full)")
    p.add_argument("--work", default="work/exp-disf")
    p.add_argument("--out", default="docs/results/disf")
    p.add_argument("--results-md", default="docs/RESULTS.md")
    p.add_argument("--per-domain", type=int, default=750)
    p.add_argument("--heldout", type=int, default=30)
    p.add_argument("--target-docs", type=int, default=300, help="DSIR target documents per target domain")
    p.add_argument("--cap-bytes", type=int, default=4096)
    p.add_argument("--ratio", type=float, default=1 / 16)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--max-tokens", type=int, default=128, help="MiniLM tokens per document")
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny models run best on 1 here)")
    args = p.parse_args(argv)
    os.chdir(ROOT)  # relative paths are recorded in features/manifests; keep them repo-relative
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    try:
        s = sample_corpus(Path(args.corpus), work, per_domain=args.per_domain, heldout=args.heldout,
                          target=args.target_docs, cap_bytes=args.cap_bytes, seed=0)
        for enc in ("minilm", "hashing"):
            embed_pool(work, enc, max_tokens=args.max_tokens, threads=args.threads)
        tok = shared_tokenizer(work, args.vocab)
        steps, manifests = run_grid(work, args.methods, args.seeds, tokenizer=tok, ratio=args.ratio,
                                    batch_size=args.batch_size, max_steps=args.max_steps)
        cfg = _train_config(work / "runs" / "probe", next(iter(manifests.values())), steps, 0)
        n_params = _read_json(work / "runs" / f"{args.methods[0]}-s{args.seeds[0]}" / "summary.json")["n_params"]
        info = {"pool_docs": sum(v["pool"] for v in s["domains"].values()), "per_domain": args.per_domain,
                "cap_bytes": args.cap_bytes, "heldout": args.heldout, "target_docs": 2 * args.target_docs,
                "max_tokens": args.max_tokens, "ratio": args.ratio, "batch_size": args.batch_size,
                "n_params": n_params, "vocab": args.vocab, "steps": steps,
                "tokens_per_step": cfg.budget.global_batch_size * cfg.data.seq_len}
        names, seeds = finished(work)
        info["seeds"] = seeds
        info["wall"] = wall_times(work, names, seeds)
        aggs = publish(work, out, Path(args.results_md), names, seeds, info)
    except (ExperimentError, DataSelectError) as e:
        print(f"disf experiment: error: {e}", file=sys.stderr)
        return 2
    print(results_table(aggs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
