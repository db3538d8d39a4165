"""`data-select` command line: a thin shell over the data_select Python API."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from data_select.errors import DataSelectError, HashingFeaturesWarning, UsageError  # noqa: F401  (UsageError re-exported)


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


def _require_inputs(inputs: list[str], step: str) -> None:
    """A step that reads inputs (not its --merge) needs some, and says so before starting on a partial corpus."""
    if not inputs:
        raise UsageError(f"{step}: give at least one INPUT (or --merge)")
    _warn_if_partial(inputs)


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


def _tokens(text: str) -> float:
    """A token count: 5000000, 5e6, 5M, 2.5B (k, M, B/G, T suffixes)."""
    t = text.strip()
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}.get(t[-1:].lower(), 1.0)
    try:
        value = float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token count (e.g. 5000000, 5e6, 5M, 2.5B)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a token budget must be positive, got {text}")
    return value


def _add_parts_args(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shard", default=None, metavar="I/N",
                   help=f"run part I of N ({what}); e.g. a Slurm array task: --shard $SLURM_ARRAY_TASK_ID/N")
    g.add_argument("--merge", action="store_true", help="merge the finished --shard parts in --out")


def _add_tokenize_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tokenize", help="tokenize documents into token shards + manifest.json")
    t.add_argument("inputs", nargs="*", metavar="INPUT", help="folders, globs, text/JSONL/Parquet files (.gz/.zst ok)")
    t.add_argument("--out", required=True, help="output directory (shards, tokenizer/, manifest.json)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--tokenizer", default=None, help="local HF tokenizer directory to use instead of training one")
    g.add_argument("--vocab-size", type=int, default=8000, help="vocabulary of the trained sentencepiece BPE (default 8000)")
    t.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out (default 0.01)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--selection", default=None,
                   help="a selection from `data-select select` (its folder or selection.jsonl): read only its documents")
    _add_reader_args(t)
    t.add_argument("--shard-tokens", type=int, default=50_000_000)
    t.add_argument("--workers", type=int, default=2)
    _add_parts_args(t, "the input files of part I, balanced by bytes to tokenize")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_tokenize)


def cmd_tokenize(args: argparse.Namespace) -> int:
    from data_select.tokenize import merge_tokens, tokenize_corpus

    if args.merge:
        m = merge_tokens(args.out, progress=not args.no_progress)
    else:
        _require_inputs(args.inputs, "tokenize")
        m = tokenize_corpus(args.inputs, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                            val_fraction=args.val_fraction, seed=args.seed, selection=args.selection,
                            text_field=args.text_field, domain_field=args.domain_field or None, id_field=args.id_field,
                            shard_tokens=args.shard_tokens, num_workers=args.workers, progress=not args.no_progress,
                            domain_from_dir=args.domain_from_dir, shard=args.shard)
    if args.shard is not None:
        print(f"part {args.shard}: {m['documents']:,} documents tokenized into {args.out}/parts; merge with --merge")
        return 0
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

    i = sub.add_parser("index", help="the document table of the inputs (the first pass; embed reuses it)")
    i.add_argument("inputs", nargs="*", metavar="INPUT", help="folders, globs, text/JSONL/Parquet files (.gz/.zst ok)")
    i.add_argument("--out", required=True, help="features directory; the table goes to OUT/table")
    _add_reader_args(i)
    _add_parts_args(i, "the input files of part I, balanced by size")
    i.add_argument("--no-progress", action="store_true")
    i.set_defaults(func=cmd_index)

    e = sub.add_parser("embed", help="proxy-encoder features of every document (resumable; parts under torchrun or --shard)")
    e.add_argument("inputs", nargs="*", metavar="INPUT", help="folders, globs, text/JSONL/Parquet files (.gz/.zst ok)")
    e.add_argument("--out", required=True, help="features directory (features.f32, table/, features.json, DONE.json)")
    e.add_argument("--encoder", default="minilm", help="minilm | hashing | path to a local HF encoder (default minilm)")
    e.add_argument("--dim", type=int, default=384, help="output size of the hashing encoder (default 384)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--max-tokens", type=int, default=None, help="tokens per document (default: the encoder's limit)")
    _add_reader_args(e)
    e.add_argument("--workers", type=int, default=1, help="CPU threads for the encoder")
    e.add_argument("--overwrite", action="store_true", help="discard features made from other inputs or settings")
    _add_parts_args(e, "the table rows of the input files of part I; needs the table: `data-select index` first")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_embed)

    s = sub.add_parser("select", help="pick documents from a features directory")
    s.add_argument("--features", required=False, help="features directory from `data-select embed`")
    s.add_argument("--out", required=True, help="directory for selection.npy, selection.jsonl, select.json")
    s.add_argument("--method", default="disf", choices=list(METHODS))
    g = s.add_mutually_exclusive_group()
    g.add_argument("--ratio", type=float, default=None, help="share of each batch to pick (default 1/64 = 0.015625)")
    g.add_argument("--k-per-batch", type=int, default=None, help="files to pick from each full batch")
    g.add_argument("--tokens", type=_tokens, default=None,
                   help="a token budget instead (e.g. 5M, 2.5B): documents are picked until their estimated tokens "
                        "cover it; DiSF gives each batch a quota in proportion to its tokens")
    s.add_argument("--tokenizer", default=None, help="--tokens: the run's HF tokenizer directory, to measure bytes per "
                                                     "token (default: a sentencepiece BPE of --vocab-size trained on a sample)")
    s.add_argument("--vocab-size", type=int, default=8000, help="--tokens without --tokenizer: the run's vocabulary")
    s.add_argument("--batch-size", type=int, default=1024, help="DiSF batch size (default 1024)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dedup-threshold", type=float, default=0.95, help="cosine at or above which a file is a duplicate")
    s.add_argument("--nlist", type=int, default=None,
                   help="dedup IVF lists (default: exact up to 100,000 documents, else 2*sqrt(n))")
    s.add_argument("--nprobe", type=int, default=4, help="dedup IVF lists probed per document (default 4)")
    s.add_argument("--target", default=None, help="dsir: a domain of the pool, or a file/glob of target texts")
    s.add_argument("--disf-variant", default="exact", choices=["exact", "released"],
                   help="exact (default): the paper's score, shuffled batches, every file; released: the published "
                        "DiSF script (float32, epsilon, lowest-index ties, contiguous full batches)")
    s.add_argument("--disf-processes", type=int, default=1,
                   help="released: contiguous ranges the pool is split into, as the script's cpu_count() (default 1)")
    s.add_argument("--workers", type=int, default=1, help="processes for DiSF batches")
    _add_parts_args(s, "whole DiSF batches")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_select)

    r = sub.add_parser("report", help="spectrum diagnostics, per-domain counts, tokens and accounting of a selection")
    r.add_argument("--features", required=True)
    r.add_argument("--selection", required=True, help="the selection folder (or its selection.jsonl)")
    r.add_argument("--out", required=True, help="directory for report.json, spectrum.png and domains.png")
    r.add_argument("--manifest", default=None, help="the selection's tokens/manifest.json: report the actual tokens")
    r.add_argument("--top-k", type=int, default=10, help="eigenvalues in the dominance score (default 10)")
    r.add_argument("--sample", type=int, default=10_000, help="rows sampled per spectrum (default 10000)")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=cmd_report)

    u = sub.add_parser("run", help="embed, select, tokenize and report from one YAML config (parts under torchrun)")
    u.add_argument("config", help="YAML config (see configs/data/quickstart.yaml)")
    u.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. select.method=random")
    u.add_argument("--step", default=None, choices=["index", "embed", "dedup", "select", "tokenize", "report"],
                   help="run one step only (with --shard / --merge: a Slurm array stage, see launch/curate-slurm.sh)")
    _add_parts_args(u, "of --step")
    u.set_defaults(func=cmd_run)


def _print_report(rep: dict) -> None:
    sp, acc, sel = rep["spectrum"], rep["accounting"], rep.get("selected", {})
    for name in ("selected", "random", "pool"):
        print(f"  {name:9s} files {sp[name]['files']:>8,}  dominance(top {sp['top_k']}) {sp[name]['dominance']:.4f}"
              f"  effective rank {sp[name]['effective_rank']:.1f}")
    if sel:
        extra = "".join(f", {label} {sel[k]:,}" for k, label in (("estimated_tokens", "estimated tokens"),
                                                                  ("tokens", "tokens")) if k in sel)
        print(f"selected: {sel['files']:,} files, {sel['bytes']:,} bytes{extra}")
    print(f"accounting: {acc['input_documents']:,} input = {acc['selected']:,} selected + {acc['not_selected']:,} not selected"
          f" + {acc['deduplicated']:,} deduplicated + {acc['rejected']['total']:,} rejected {acc['rejected']['by_reason'] or ''}")


def _print_features(done: dict, out: str) -> None:
    from data_select.embed import load_features

    f = load_features(out)
    rej = f.table.rejected
    print(f"embedded {f.n:,} documents with {f.meta['encoder']} ({f.dim}-d, {f.meta['max_tokens']} tokens) "
          f"-> {out}; rejected {rej.total:,} {dict(sorted(rej.counts.items())) or ''} (input {f.n + rej.total:,})")


def cmd_index(args: argparse.Namespace) -> int:
    from data_select.table import Table, index_corpus, merge_index, table_dir

    if args.merge:
        merge_index(args.out, progress=not args.no_progress)
    else:
        _require_inputs(args.inputs, "index")
        done = index_corpus(args.inputs, args.out, text_field=args.text_field, domain_field=args.domain_field or None,
                            id_field=args.id_field, domain_from_dir=args.domain_from_dir, shard=args.shard,
                            progress=not args.no_progress)
        if args.shard is not None:
            print(f"part {args.shard}: {done['rows']:,} documents indexed into {args.out}/parts; merge with --merge")
            return 0
    t = Table(table_dir(args.out))
    rej = t.rejected
    print(f"indexed {t.n:,} documents -> {table_dir(args.out)}; rejected {rej.total:,} "
          f"{dict(sorted(rej.counts.items())) or ''} (input {t.n + rej.total:,})")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from data_select.embed import embed_corpus, merge_features

    if args.merge:
        done = merge_features(args.out, progress=not args.no_progress)
    else:
        _require_inputs(args.inputs, "embed")
        done = embed_corpus(args.inputs, args.out, encoder=args.encoder, dim=args.dim, batch_size=args.batch_size,
                            max_tokens=args.max_tokens, text_field=args.text_field, domain_field=args.domain_field or None,
                            id_field=args.id_field, domain_from_dir=args.domain_from_dir, workers=args.workers,
                            shard=args.shard, overwrite=args.overwrite, progress=not args.no_progress)
    if args.shard is not None:
        lo, hi = done["rows"]
        print(f"part {args.shard}: rows {lo:,}..{hi:,} embedded into {args.out}/parts; merge with --merge")
        return 0
    _print_features(done, args.out)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from data_select.select import merge_selection, select_features

    if args.merge:
        rec = merge_selection(args.out, progress=not args.no_progress)
    else:
        if not args.features:
            raise UsageError("select: give --features (or --merge)")
        rec = select_features(args.features, args.out, method=args.method, ratio=args.ratio,
                              k_per_batch=args.k_per_batch, tokens=args.tokens, batch_size=args.batch_size,
                              seed=args.seed, dedup_threshold=args.dedup_threshold, nlist=args.nlist,
                              nprobe=args.nprobe, target=args.target, disf_variant=args.disf_variant,
                              disf_processes=args.disf_processes, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                              shard=args.shard, workers=args.workers, progress=not args.no_progress)
    if args.shard is not None:
        print(f"part {args.shard}: {rec['picks']:,} documents picked into {args.out}/parts; merge with --merge")
        return 0
    c = rec["counts"]
    print(f"{rec['method']}: selected {c['selected']:,} of {c['input']:,} documents "
          f"({c['deduplicated']:,} deduplicated), {rec['bytes']['selected']:,} bytes -> {args.out}/selection.jsonl")
    if "tokens" in rec:
        t = rec["tokens"]
        print(f"tokens: budget {t['budget']:,.0f}, estimated {t['estimated_selected']:,.0f} selected of "
              f"{t['estimated_pool']:,.0f} in the pool ({t['estimate']['bytes_per_token']:.2f} bytes/token; "
              f"{t['estimate']['how']})")
    for w in rec.get("warnings", []):
        print(f"note: {w}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from data_select.pipeline import report

    rep = report(args.features, args.selection, args.out, top_k=args.top_k, sample=args.sample, seed=args.seed,
                 manifest=args.manifest)
    _print_report(rep)
    print(f"report: {args.out}/report.json, {args.out}/spectrum.png, {args.out}/domains.png")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from data_select.pipeline import load_run_config, run

    cfg = load_run_config(args.config, args.overrides)
    if not args.merge:
        _warn_if_partial(cfg.inputs)
    res = run(cfg, step=args.step, shard=args.shard, merge=args.merge)
    if args.step is not None and (args.shard is not None or args.merge or args.step in ("index", "dedup")):
        print(f"{args.step}{f' part {args.shard}' if args.shard else ' merged' if args.merge else ''}: done")
        return 0
    if "features" in res:
        print(f"features: {res['features']['n']:,} documents ({res['features'].get('encoder', '')})")
    if "select" in res:
        c = res["select"]["counts"]
        print(f"selection ({res['select']['method']}): {c['selected']:,} of {c['input']:,}")
        for w in res["select"].get("warnings", []):
            print(f"note: {w}")
    if "tokens" in res:
        print(f"tokens: {res['tokens']['train_tokens']:,} train tokens, manifest {res['tokens']['manifest']}")
    if "report" in res:
        _print_report(res["report"])
    print(f"outputs in {res['out_dir']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and int(os.environ.get("RANK", "0") or 0) > 0:
        sys.stdout = open(os.devnull, "w")  # under torchrun, rank 0 prints the summary
    try:
        if getattr(args, "shard", None) is not None:
            from data_select.parts import Shard

            args.shard = Shard.parse(args.shard)  # checked before any work
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HashingFeaturesWarning)  # printed as a `note:` with the step's summary
            return args.func(args) or 0
    except (DataSelectError, FileNotFoundError) as e:
        print(f"data-select: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
