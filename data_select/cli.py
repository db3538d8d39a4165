"""`data-select` command line: a thin shell over the data_select Python API."""
from __future__ import annotations

import argparse
import sys

from data_select.errors import DataSelectError, UsageError  # noqa: F401  (UsageError re-exported)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="data-select", description="Budget-aware data curation: files -> features -> selection -> token shards")
    sub = p.add_subparsers(dest="command", required=True)

    _add_corpus_parser(sub)
    _add_tokenize_parser(sub)
    _add_pipeline_parsers(sub)

    return p


def _add_corpus_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("corpus", help="build a labelled multi-domain text corpus from Debian packages")
    c.add_argument("--out", required=True, help="output directory (<domain>.jsonl + corpus.json)")
    c.add_argument("--full", action="store_true", help="every source, no per-domain cap (>= 300 MB; default: small, a few MB)")
    c.add_argument("--cache", default=None, help="download/unpack cache (default: ~/.cache/budgetlm/corpus)")
    c.add_argument("--domains", default=None, help="comma-separated subset of domains (default: all)")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--allow-partial", action="store_true",
                   help="keep a build with missing domains and exit 0 (default: exit 1 after its summary)")
    g.add_argument("--fallback", metavar="DIR", default=None,
                   help="when the Debian corpus cannot be built completely, use the complete corpus in DIR "
                        "(e.g. the committed sample tests/fixtures/corpus) and say so")
    c.set_defaults(func=cmd_corpus)


def cmd_corpus(args: argparse.Namespace) -> int:
    from data_select.corpus import CorpusError, build_corpus, build_or_fallback, status_line, summary_table

    kw = dict(size="full" if args.full else "small", cache_dir=args.cache,
              domains=args.domains.split(",") if args.domains else None)
    try:
        manifest = build_or_fallback(args.out, fallback=args.fallback, **kw) if args.fallback else build_corpus(args.out, **kw)
    except CorpusError as e:
        raise UsageError(str(e)) from None
    if "fallback" in manifest:
        print(f"corpus: {status_line(manifest)} -> {args.out}")
        return 0
    print(summary_table(manifest))
    print(f"corpus: {args.out} ({manifest['size']}, built in {manifest['elapsed_s']} s)")
    if manifest["status"] == "partial" and not args.allow_partial:
        print(f"data-select: error: {args.out} is a partial corpus (reasons above and in {args.out}/corpus.json); "
              "pass --allow-partial to use it anyway, or --fallback DIR to use a complete corpus instead", file=sys.stderr)
        return 1
    return 0


def _warn_if_partial(inputs: list[str]) -> None:
    """A step reading a partial corpus says so before it starts."""
    from data_select.corpus import partial_corpus_notes

    for note in partial_corpus_notes(inputs):
        print(f"data-select: warning: {note}", file=sys.stderr)


def _add_reader_args(p: argparse.ArgumentParser) -> None:
    """How documents are read from JSONL/Parquet records (the same for every step that reads them)."""
    p.add_argument("--text-field", default="text")
    p.add_argument("--domain-field", default="domain", help="record field naming the domain ('' for none)")
    p.add_argument("--domain-from-dir", action="store_true", help="domain = first folder of the file's relative path")
    p.add_argument("--id-field", default=None, help="record field holding the document id (default: <file>:<line>)")


def _add_tokenize_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tokenize", help="tokenize documents into token shards + manifest.json")
    t.add_argument("inputs", nargs="+", metavar="INPUT", help="folders, globs, text/JSONL/Parquet files (.gz/.zst ok)")
    t.add_argument("--out", required=True, help="output directory (shards, tokenizer/, manifest.json)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--tokenizer", default=None, help="local HF tokenizer directory to use instead of training one")
    g.add_argument("--vocab-size", type=int, default=8000, help="vocabulary of the trained sentencepiece BPE (default 8000)")
    t.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out (default 0.01)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--selection", default=None, help="selection.jsonl: tokenize only these document ids")
    _add_reader_args(t)
    t.add_argument("--shard-tokens", type=int, default=50_000_000)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_tokenize)


def cmd_tokenize(args: argparse.Namespace) -> int:
    from data_select.tokenize import tokenize_corpus

    _warn_if_partial(args.inputs)
    m = tokenize_corpus(args.inputs, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                        val_fraction=args.val_fraction, seed=args.seed, selection=args.selection,
                        text_field=args.text_field, domain_field=args.domain_field or None, id_field=args.id_field,
                        shard_tokens=args.shard_tokens, num_workers=args.workers, progress=not args.no_progress,
                        domain_from_dir=args.domain_from_dir)
    src, sp = m["sources"], m["splits"]
    rejected = ", ".join(f"{k}={v}" for k, v in src["rejected"].items()) or "none"
    print(f"documents: {src['documents']} (train {sp['train']['documents']}, val {sp['val']['documents']})")
    print(f"tokens: train {sp['train']['tokens']:,}, val {sp['val']['tokens']:,} ({m['dtype']}, vocab {m['tokenizer']['vocab_size']})")
    print(f"rejected: {rejected}")
    print(f"input: {src['read'] + sum(src['rejected'].values()):,} = {src['documents']:,} tokenized + "
          f"{src['not_selected']:,} not selected + {sum(src['rejected'].values()):,} rejected")
    for name, d in m["domains"].items():
        print(f"  {name}: {d['documents']} documents, {d['tokens']:,} tokens")
    print(f"manifest: {args.out}/manifest.json (fingerprint {m['fingerprint'][:16]})")
    return 0


def _add_pipeline_parsers(sub: argparse._SubParsersAction) -> None:
    from data_select.pipeline import METHODS

    e = sub.add_parser("embed", help="proxy-encoder features of every document (resumable; shards under torchrun)")
    e.add_argument("inputs", nargs="*", metavar="INPUT", help="folders, globs, text/JSONL/Parquet files (.gz/.zst ok)")
    e.add_argument("--out", required=True, help="features directory (features.f32, ids.jsonl, features.json)")
    e.add_argument("--encoder", default="minilm", help="minilm | hashing | path to a local HF encoder (default minilm)")
    e.add_argument("--dim", type=int, default=384, help="output size of the hashing encoder (default 384)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--max-tokens", type=int, default=None, help="tokens per document (default: the encoder's limit)")
    _add_reader_args(e)
    e.add_argument("--workers", type=int, default=1, help="CPU threads for the encoder")
    e.add_argument("--overwrite", action="store_true", help="discard features made with other settings")
    e.add_argument("--merge", action="store_true", help="only merge the rank-NNNNN shards in --out")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_embed)

    s = sub.add_parser("select", help="pick documents from a features directory")
    s.add_argument("--features", required=True, help="features directory from `data-select embed`")
    s.add_argument("--out", required=True, help="directory for selection.jsonl + select.json")
    s.add_argument("--method", default="disf", choices=list(METHODS))
    g = s.add_mutually_exclusive_group()
    g.add_argument("--ratio", type=float, default=None, help="share of each batch to pick (default 1/64 = 0.015625)")
    g.add_argument("--k-per-batch", type=int, default=None, help="files to pick from each full batch")
    s.add_argument("--batch-size", type=int, default=1024, help="DiSF batch size (default 1024)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dedup-threshold", type=float, default=0.95, help="cosine at or above which a file is a duplicate")
    s.add_argument("--target", default=None, help="dsir: a domain of the pool, or a file/glob of target texts")
    s.add_argument("--disf-variant", default="exact", choices=["exact", "released"],
                   help="exact (default): the paper's score, shuffled batches, every file; released: the published "
                        "DiSF script (float32, epsilon, lowest-index ties, contiguous full batches)")
    s.add_argument("--disf-processes", type=int, default=1,
                   help="released: contiguous ranges the pool is split into, as the script's cpu_count() (default 1)")
    s.add_argument("--workers", type=int, default=1, help="processes for DiSF batches")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_select)

    r = sub.add_parser("report", help="spectrum diagnostics, per-domain counts and accounting of a selection")
    r.add_argument("--features", required=True)
    r.add_argument("--selection", required=True, help="selection.jsonl (select.json beside it is read too)")
    r.add_argument("--out", required=True, help="directory for report.json, spectrum.png and domains.png")
    r.add_argument("--top-k", type=int, default=10, help="eigenvalues in the dominance score (default 10)")
    r.add_argument("--sample", type=int, default=10_000, help="rows sampled per spectrum (default 10000)")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=cmd_report)

    u = sub.add_parser("run", help="embed, select, tokenize and report from one YAML config")
    u.add_argument("config", help="YAML config (see configs/data/quickstart.yaml)")
    u.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. select.method=random")
    u.set_defaults(func=cmd_run)


def _print_report(rep: dict) -> None:
    sp, acc = rep["spectrum"], rep["accounting"]
    for name in ("selected", "random", "pool"):
        print(f"  {name:9s} files {sp[name]['files']:>8,}  dominance(top {sp['top_k']}) {sp[name]['dominance']:.4f}"
              f"  effective rank {sp[name]['effective_rank']:.1f}")
    print(f"accounting: {acc['input_documents']:,} input = {acc['selected']:,} selected + {acc['not_selected']:,} not selected"
          f" + {acc['deduplicated']:,} deduplicated + {acc['rejected']['total']:,} rejected {acc['rejected']['by_reason'] or ''}")


def cmd_embed(args: argparse.Namespace) -> int:
    from data_select.embed import embed_corpus, merge_shards

    if args.merge:
        meta = merge_shards(args.out, progress=not args.no_progress)
    else:
        if not args.inputs:
            raise UsageError("embed: give at least one INPUT (or --merge)")
        _warn_if_partial(args.inputs)
        meta = embed_corpus(args.inputs, args.out, encoder=args.encoder, dim=args.dim, batch_size=args.batch_size,
                            max_tokens=args.max_tokens, text_field=args.text_field, domain_field=args.domain_field or None,
                            id_field=args.id_field, domain_from_dir=args.domain_from_dir, workers=args.workers,
                            overwrite=args.overwrite, progress=not args.no_progress)
    if meta.get("rank", 0) and meta.get("world_size", 1) > 1:
        print(f"rank {meta['rank']}: {meta['n']:,} documents embedded into {args.out}/rank-{meta['rank']:05d}")
        return 0
    print(f"embedded {meta['n']:,} documents with {meta['encoder']} ({meta['dim']}-d, {meta['max_tokens']} tokens) "
          f"-> {args.out}; rejected {meta['rejected_total']:,} {(meta['rejected'] or {}).get('counts', '')} "
          f"(input {meta['n'] + meta['rejected_total']:,})")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from data_select.pipeline import select_features

    rec = select_features(args.features, args.out, method=args.method, ratio=args.ratio, k_per_batch=args.k_per_batch,
                          batch_size=args.batch_size, seed=args.seed, dedup_threshold=args.dedup_threshold,
                          target=args.target, disf_variant=args.disf_variant, disf_processes=args.disf_processes,
                          workers=args.workers, progress=not args.no_progress)
    c = rec["counts"]
    print(f"{rec['method']}: selected {c['selected']:,} of {c['input']:,} documents "
          f"({c['deduplicated']:,} deduplicated) -> {args.out}/selection.jsonl")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from data_select.pipeline import report

    rep = report(args.features, args.selection, args.out, top_k=args.top_k, sample=args.sample, seed=args.seed)
    _print_report(rep)
    print(f"report: {args.out}/report.json, {args.out}/spectrum.png, {args.out}/domains.png")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from data_select.pipeline import load_run_config, run

    cfg = load_run_config(args.config, args.overrides)
    _warn_if_partial(cfg.inputs)
    res = run(cfg)
    c = res["select"]["counts"]
    print(f"features: {res['features']['n']:,} documents ({res['features']['encoder']})")
    print(f"selection ({res['select']['method']}): {c['selected']:,} of {c['input']:,}")
    if "tokens" in res:
        print(f"tokens: {res['tokens']['train_tokens']:,} train tokens, manifest {res['tokens']['manifest']}")
    if "report" in res:
        _print_report(res["report"])
    print(f"outputs in {res['out_dir']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (DataSelectError, FileNotFoundError) as e:
        print(f"data-select: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
