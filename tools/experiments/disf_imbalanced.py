"""Experiment (c2): DiSF on an imbalanced pool -> docs/RESULTS.md section "disf-imbalanced".

Experiment (c) drew 750 files from every domain: a balanced pool, where random selection already
matches a uniform held-out mix. A web crawl is dominated by a few sources. Here the pool follows
the full corpus's natural domain shares (share of its documents), and the question is whether
DiSF's decorrelation recovers the rare domains that random selection, following the pool, misses.

Same machinery as (c) (``disf.py``): a fixed sample of the full Debian corpus, MiniLM features,
one shared tokenizer, selection at DiSF's released ratio 1/64 (16 of every batch of 1,024 files),
the same ~3M-parameter Llama trained on every selection for the same number of tokens (one epoch
of the smallest selection, capped), held-out loss per domain on a uniform mix (the same number of
held-out documents from every domain), at least 4 seeds. Methods: DiSF, random, near-duplicate
removal + random, DSIR (towards books + encyclopedia). Every step skips work already done.

    python tools/experiments/disf_imbalanced.py [--quick] [--seeds 0 1 2 3]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import disf as exp_c
from common import (ROOT, ExperimentError, Layout, markdown_table, publish_section, run_driver, setup_threads,
                    write_json)

NAME = "disf-imbalanced"
DOMAINS = exp_c.DOMAINS
# name -> (selection method, features it selects on); every report measures MiniLM space.
METHODS = {"disf": ("disf", "minilm"), "random": ("random", "minilm"), "dedup+random": ("dedup+random", "minilm"),
           "dsir": ("dsir", "minilm")}
BASELINES = ("random", "dedup+random", "dsir")
NOTES = "notes.md"  # hand-written reading of the numbers, kept across re-runs and appended to the section


def natural_counts(corpus: Path) -> dict[str, int]:
    """Documents per domain of the full corpus (its ``corpus.json``): the natural proportions."""
    meta = corpus / "corpus.json"
    try:
        record = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        record = {}
    if record.get("status") != "complete":
        raise ExperimentError(f"{meta}: not a complete corpus (build it with `data-select corpus --out {corpus} --full`)")
    missing = [d for d in DOMAINS if d not in record.get("domains", {})]
    if missing:
        raise ExperimentError(f"{meta}: domains {missing} missing; this experiment needs all of {', '.join(DOMAINS)}")
    return {d: int(record["domains"][d]["documents"]) for d in DOMAINS}


def allocate(total: int, counts: dict[str, int], available: dict[str, int]) -> dict[str, int]:
    """``total`` pool documents split in proportion to ``counts`` (largest remainder, ties by name),
    each domain at most ``available[d]`` and at least one (a domain with no file cannot be selected)."""
    names = sorted(counts)
    share = np.array([counts[d] for d in names], dtype=np.float64)
    if total < len(names) or share.sum() <= 0:
        raise ExperimentError(f"a pool of {total} documents cannot hold {len(names)} domains")
    exact = total * share / share.sum()
    alloc = np.maximum(np.floor(exact).astype(np.int64), 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while alloc.sum() < total:
        alloc[order[i % len(names)]] += 1
        i += 1
    while alloc.sum() > total:  # the floor of one lifted a rare domain: take it back from the largest
        alloc[int(np.argmax(alloc))] -= 1
    out = {d: int(a) for d, a in zip(names, alloc)}
    short = {d: (out[d], available[d]) for d in names if out[d] > available[d]}
    if short:
        raise ExperimentError(f"pool of {total} needs more documents than these domains have left after held-out and "
                              f"target draws (wanted, available): {short}; use fewer --pool-batches")
    return out


def rare_domains(pool_counts: dict[str, int]) -> list[str]:
    """The rarer half of the domains by pool share (no threshold to choose)."""
    return sorted(pool_counts, key=lambda d: (pool_counts[d], d))[: len(pool_counts) // 2]


def add_rare_fields(rows: list[dict], rare: list[str]) -> list[dict]:
    """Per run: mean held-out loss over the rare domains and the share of selected files from them."""
    for r in rows:
        r["rare_loss"] = float(np.mean([r[f"loss_{d}"] for d in rare]))
        r["rare_share"] = sum(r[f"files_{d}"] for d in rare) / max(1, sum(r[f"files_{d}"] for d in DOMAINS))
    return rows


def _pm(a: dict, key: str, fmt: str = "{:.3f}") -> str:
    return fmt.format(a[key]) + (f" ± {fmt.format(a[key + '_std'])}" if len(a["seeds"]) > 1 else "")


def main_table(aggs: list[dict]) -> str:
    headers = ["method", "seeds", "files", "train tokens (one epoch)", "dominance top-10 sel / random",
               "eff. rank sel / random", "held-out loss (token-wtd)", "macro", "rare half", "rare files"]
    rows = [[a["method"], len(a["seeds"]), f"{a['files']:.0f}", f"{a['train_tokens']:,.0f}",
             f"{a['dominance']:.3f} / {a['dominance_random']:.3f}",
             f"{a['effective_rank']:.1f} / {a['effective_rank_random']:.1f}",
             _pm(a, "loss"), _pm(a, "macro_loss"), _pm(a, "rare_loss"), f"{100 * a['rare_share']:.1f}%"] for a in aggs]
    return markdown_table(headers, rows)


def domain_loss_table(aggs: list[dict]) -> str:
    return markdown_table(["method"] + list(DOMAINS), [[a["method"]] + [_pm(a, f"loss_{d}") for d in DOMAINS]
                                                       for a in aggs])


def domain_count_table(aggs: list[dict], pool: dict[str, int], natural: dict[str, int]) -> str:
    """Selected files per domain (mean over seeds) under the pool's counts and the corpus's shares."""
    total = sum(natural.values())
    rows = [["full corpus (share)"] + [f"{natural[d]:,} ({100 * natural[d] / total:.1f}%)" for d in DOMAINS],
            ["pool"] + [f"{pool[d]:,}" for d in DOMAINS]]
    rows += [[a["method"]] + [f"{a[f'files_{d}']:.1f}" for d in DOMAINS] for a in aggs]
    return markdown_table(["files"] + list(DOMAINS), rows)


def plot_selection_shares(aggs: list[dict], pool: dict[str, int], out_png: Path) -> Path:
    """Share of selected files per domain for each method (mean over seeds) beside the pool's share."""
    from matplotlib.figure import Figure

    from pretrain.schedule_plot import save_figure

    order = sorted(DOMAINS, key=lambda d: -pool[d])
    series = [("pool", [pool[d] for d in order])] + [(a["method"], [a[f"files_{d}"] for d in order]) for a in aggs]
    fig = Figure(figsize=(11, 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(order))
    width = 0.8 / len(series)
    for i, (name, counts) in enumerate(series):
        share = 100 * np.asarray(counts, dtype=np.float64) / max(1e-12, float(np.sum(counts)))
        ax.bar(x + (i - (len(series) - 1) / 2) * width, share, width, label=name,
               color="0.6" if name == "pool" else f"C{i - 1}")
    ax.axhline(100 / len(order), color="k", lw=0.8, ls="--", label="uniform (the held-out mix)")
    ax.set_xticks(x, order)
    ax.set_ylabel("share of files (%)")
    ax.set_title("Selected files per domain vs the imbalanced pool (mean over seeds)")
    ax.legend(fontsize=8, ncol=3)
    return save_figure(fig, out_png)


def reading(aggs: list[dict], rows: list[dict], rare: list[str]) -> list[str]:
    """What did and did not reproduce, each statement computed from the numbers."""
    by = {a["method"]: a for a in aggs}
    if "disf" not in by:
        raise ExperimentError("no finished DiSF run to judge")
    d = by["disf"]
    out = []
    disf_rows = [r for r in rows if r["method"] == "disf"]
    flatter = sum(r["dominance"] < r["dominance_random"] for r in disf_rows)
    word = "Reproduced" if flatter == len(disf_rows) else "Not reproduced" if flatter == 0 else "Partly reproduced"
    out.append(f"**{word}: DiSF flattens the feature spectrum.** Top-10 dominance below a same-size random subset's in "
               f"{flatter} of {len(disf_rows)} seeds (mean {d['dominance']:.3f} vs {d['dominance_random']:.3f}).")
    if "random" in by:
        r = by["random"]
        more = d["rare_share"] > r["rare_share"]
        out.append(f"DiSF took {100 * d['rare_share']:.1f}% of its files from the rarer half of the domains "
                   f"({', '.join(rare)}) against {100 * r['rare_share']:.1f}% for random: diversity in feature space "
                   f"{'did' if more else 'did not'} shift the selection towards the rare domains.")
    for key, what in (("loss", "the uniform held-out mix"), ("rare_loss", "the rare domains")):
        for b in BASELINES:
            if b not in by:
                continue
            gap = by[b][key] - d[key]
            noise = max(d.get(f"{key}_std", 0.0), by[b].get(f"{key}_std", 0.0))
            real = min(len(d["seeds"]), len(by[b]["seeds"])) >= 2 and abs(gap) > 2 * noise
            if gap > 0 and real:
                claim = "Reproduced"
            elif gap < 0 and real:
                claim = "Not reproduced (reversed)"
            else:
                claim = "Not shown"
            out.append(f"**{claim}: DiSF beats {b} on {what}** — {exp_c.verdict(aggs, 'disf', b, key)}; "
                       f"Welch p = {exp_c.welch_p(rows, 'disf', b, key):.2f}.")
    return out


def section_text(layout: Layout, aggs: list[dict], rows: list[dict], info: dict, plots: dict[str, Path]) -> str:
    rare = info["rare"]
    notes_file = layout.results / NOTES
    notes = "\n" + notes_file.read_text().strip() + "\n" if notes_file.is_file() else ""
    released = ", DiSF's released setting" if (info["batch_size"], round(info["ratio"] * info["batch_size"])) == (1024, 16) else ""
    return f"""## (c2) DiSF on an imbalanced pool: the corpus's natural domain shares

Driver: `python tools/experiments/disf_imbalanced.py` (resumable; `--quick` for a smoke run under `work/`;
{info['wall']}). Raw results: `{os.path.relpath(layout.results, ROOT)}/` (`summary.json`, `rows.json`, per run
`runs/<method>-s<seed>/` with metrics, selection report and held-out losses).

- **Pool**: {info['pool_docs']:,} documents ({info['pool_batches']} DiSF batches of {info['batch_size']}) drawn from the
  full Debian corpus in its natural proportions (each domain's share of the corpus's
  {info['corpus_docs']:,} documents, largest remainder), each cut to its first {info['cap_bytes']:,} bytes, seed 0.
  **Held-out mix**: {info['heldout']} other documents from *every* domain (uniform), never in the pool;
  **DSIR target**: {info['target_docs']} further `books` + `encyclopedia` documents.
- **Selection**: ratio 1/{round(1 / info['ratio'])} of every batch ({round(info['ratio'] * info['batch_size'])} of
  {info['batch_size']}{released}) on MiniLM features (first {info['max_tokens']} tokens); random,
  dedup+random (near-duplicates at cos ≥ 0.95 removed, then random) and DSIR pick as many files.
  Seeds {info['seeds']} drive the selection and the training (init, data order).
- **Training**: `configs/train/exp-disf.yaml` ({info['n_params']:,} parameters), one sentencepiece BPE
  (vocab {info['vocab']}) trained on the whole pool, {info['steps']} steps x {info['tokens_per_step']:,} tokens =
  **{info['steps'] * info['tokens_per_step']:,} tokens for every run** (one epoch of the smallest selection at most).
- **Held-out loss**: token-weighted mean over the uniform mix, macro = plain mean over the 8 domains,
  rare half = mean over the 4 domains rarest in the pool ({', '.join(rare)}).

{main_table(aggs)}

Held-out loss per domain (mean ± sample std over seeds):

{domain_loss_table(aggs)}

Selected files per domain (mean over seeds):

{domain_count_table(aggs, info['pool_counts'], info['natural_counts'])}

![selection shares]({layout.rel(plots['shares'])})
![held-out loss per domain]({layout.rel(plots['losses'])})
![eigenvalue spectra]({layout.rel(plots['spectra'])})

**Verdict (computed from the tables)**:
{chr(10).join('- ' + v for v in reading(aggs, rows, rare))}
{notes}"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small smoke run under work/ (2 seeds, small pool)")
    p.add_argument("--corpus", default="work/corpus-full", help="full corpus (data-select corpus --out DIR --full)")
    p.add_argument("--pool-batches", type=int, help="pool size in DiSF batches (default 24; --quick 2)")
    p.add_argument("--batch-size", type=int, help="DiSF batch (default 1024; --quick 512)")
    p.add_argument("--ratio", type=float, help="selected share of each batch (default 1/64; --quick 1/16)")
    p.add_argument("--heldout", type=int, help="held-out documents per domain (default 30; --quick 4)")
    p.add_argument("--target-docs", type=int, help="DSIR target documents per target domain (default 300; --quick 20)")
    p.add_argument("--cap-bytes", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--max-tokens", type=int, help="MiniLM tokens per document (default 128; --quick 32)")
    p.add_argument("--max-steps", type=int, help="cap on the common budget (default 200; --quick 20)")
    p.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 3 (--quick 0 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny models run best on 1 here)")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = dict(pool_batches=(2, 24), batch_size=(512, 1024), ratio=(1 / 16, 1 / 64), heldout=(4, 30),
                    target_docs=(20, 300), max_tokens=(32, 128), max_steps=(20, 200), seeds=([0, 1], [0, 1, 2, 3]))
    for key, (q, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, q if quick else full)
    os.chdir(ROOT)  # features and manifests record relative paths: keep them repo-relative
    setup_threads(args.threads)
    from data_select.errors import DataSelectError
    from pretrain.config import ConfigError
    from pretrain.data import DataError

    layout = Layout(NAME, quick)
    work = Path(os.path.relpath(layout.runs, ROOT))
    t0 = time.time()
    try:
        corpus = Path(args.corpus)
        natural = natural_counts(corpus)
        reserved = {d: args.heldout + (args.target_docs if d in exp_c.TARGET_DOMAINS else 0) for d in DOMAINS}
        pool = allocate(args.pool_batches * args.batch_size, natural,
                        {d: natural[d] - reserved[d] for d in DOMAINS})
        sample = exp_c.sample_corpus(corpus, work, per_domain=pool, heldout=args.heldout, target=args.target_docs,
                                     cap_bytes=args.cap_bytes, seed=0)
        exp_c.embed_pool(work, "minilm", max_tokens=args.max_tokens, threads=args.threads)
        tok = exp_c.shared_tokenizer(work, args.vocab)
        steps, manifests = exp_c.run_grid(work, list(METHODS), args.seeds, tokenizer=tok, ratio=args.ratio,
                                          batch_size=args.batch_size, max_steps=args.max_steps, methods=METHODS,
                                          val_fraction=0.1 if quick else 0.01)
        names, seeds = exp_c.finished(work, METHODS)
        rare = rare_domains(pool)
        rows = add_rare_fields(exp_c.run_rows(work, names, seeds), rare)
        aggs = exp_c.aggregate(rows)
        cfg = exp_c._train_config(work / "runs" / "probe", next(iter(manifests.values())), steps, 0)
        out = layout.results
        exp_c.copy_raw(work, out, names, seeds)
        plots = {"shares": plot_selection_shares(aggs, pool, out / "selection_shares.png"),
                 "losses": out / "domain_loss.png", "spectra": out / "spectra.png"}
        exp_c.plot_domain_losses(aggs, plots["losses"])
        exp_c.plot_spectrum_compare(work, names, seeds[0], plots["spectra"])
        info = {"pool_docs": sum(v["pool"] for v in sample["domains"].values()), "pool_batches": args.pool_batches,
                "batch_size": args.batch_size, "ratio": args.ratio, "corpus_docs": sum(natural.values()),
                "natural_counts": natural, "pool_counts": pool, "cap_bytes": args.cap_bytes, "heldout": args.heldout,
                "target_docs": 2 * args.target_docs, "max_tokens": args.max_tokens, "seeds": seeds, "rare": rare,
                "n_params": exp_c._read_json(work / "runs" / f"{names[0]}-s{seeds[0]}" / "summary.json")["n_params"],
                "vocab": args.vocab, "steps": steps, "tokens_per_step": cfg.budget.global_batch_size * cfg.data.seq_len,
                "wall": exp_c.wall_times(work, names, seeds)}
        write_json(out / "rows.json", rows)
        write_json(out / "summary.json", {"info": info, "methods": aggs})
        publish_section(layout.results_md, NAME, section_text(layout, aggs, rows, info, plots), t0)
    except (DataSelectError, DataError, ConfigError) as e:
        raise ExperimentError(str(e)) from None
    print(main_table(aggs))
    return 0


if __name__ == "__main__":
    run_driver(main, "disf_imbalanced")
