"""`pretrain` command line: a thin shell over the Python API (one function per subcommand)."""
from __future__ import annotations

import argparse
import sys

from pretrain.checkpoint import CheckpointError
from pretrain.config import CONFIGS_DIR, ConfigError
from pretrain.data import DataError


def _print_budget(cfg) -> None:
    """The budget as stated, in steps and tokens, once (rank 0) before any work."""
    import os

    from pretrain.budget import describe

    if os.environ.get("RANK", "0") == "0":
        print("\n".join(describe(cfg)), flush=True)


def _cmd_train(args: argparse.Namespace) -> int:
    from pretrain.config import load_config
    from pretrain.trainer import train

    cfg = load_config(args.config, args.overrides)
    _print_budget(cfg)
    train(cfg)
    return 0


def _cmd_branch(args: argparse.Namespace) -> int:
    from pretrain.branching import branch

    result = branch(args.source, decay_steps=args.decay_steps, out=args.out, shape=args.shape,
                    min_lr_ratio=args.min_lr_ratio, export_hf=not args.no_export, overrides=args.overrides)
    print(f"branch finished at step {result.step}: val loss {result.final_val_loss:.4f}; run {result.run_dir}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from pretrain.branching import run_plan
    from pretrain.config import load_config

    cfg = load_config(args.config, args.overrides)
    _print_budget(cfg)
    run_plan(cfg, mode=args.mode, predict=args.predict)
    return 0


def _cmd_budget(args: argparse.Namespace) -> int:
    import json

    import yaml

    from pretrain import planner
    from pretrain.config import ModelConfig, load_yaml
    from pretrain.model import resolve_vocab_size

    try:
        if (args.flops is None) == (args.gpu_hours is None):
            raise planner.PlannerError("give the compute budget as exactly one of --flops or --gpu-hours")
        if args.flops is not None:
            compute, source = planner.positive_number("--flops", args.flops), ""
        else:
            if not args.gpu:
                raise planner.PlannerError("--gpu-hours needs --gpu TYPE (and --mfu, default 0.4)")
            compute, source = planner.compute_from_gpu_hours(args.gpu_hours, args.gpu, args.mfu)
        if args.unique_tokens is not None and args.manifest:
            raise planner.PlannerError("give the data as --unique-tokens or --manifest, not both")
        unique, vocab = None, args.vocab_size
        if args.unique_tokens is not None:
            unique = planner.positive_number("--unique-tokens", args.unique_tokens)
        if args.manifest:
            unique, tokenizer_vocab = planner.manifest_tokens(args.manifest)
            vocab = vocab or resolve_vocab_size(ModelConfig(vocab_size=0), tokenizer_vocab)
        plan = planner.make_plan(compute, unique_tokens=unique, law=args.law, family=args.family,
                                 vocab_size=vocab or planner.DEFAULT_VOCAB, seq_len=args.seq_len, compute_source=source)
        cfg = None
        if args.write_config:
            cfg = planner.train_config(plan, template=load_yaml(args.template), manifest=args.manifest,
                                       branches=args.branches, decay_fraction=args.decay_fraction,
                                       batch_tokens=args.batch_tokens, micro_batch=args.micro_batch)
    except planner.PlannerError as e:
        print(f"pretrain budget: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**plan.to_dict(), **({"config": cfg, "config_path": args.write_config} if cfg else {})},
                         indent=1))
    else:
        print(planner.format_plan(plan))
    if cfg is not None:
        from pathlib import Path

        from pretrain.checkpoint import atomic_write_text

        header = "".join(f"# {line}\n" for line in planner.format_plan(plan).splitlines())
        atomic_write_text(Path(args.write_config), "# written by `pretrain budget`\n" + header +
                          yaml.safe_dump(cfg, sort_keys=False))
        if not args.json:
            b = cfg["budget"]
            print(f"wrote {args.write_config}: {b['tokens']:,} tokens in {b['tokens'] // (b['global_batch_size'] * args.seq_len):,} "
                  f"steps of {b['global_batch_size']} x {args.seq_len} tokens; WSD, 1-sqrt decay over the last "
                  f"{args.decay_fraction:.0%} of each budget; budget.budgets {b['budgets']} "
                  f"(train all with `pretrain plan {args.write_config}"
                  + ("" if args.manifest else " data.manifest=PATH") + "`)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from pretrain.evaluate import evaluate

    for manifest in args.manifests:
        result = evaluate(args.source, manifest, split=args.split, seq_len=args.seq_len,
                          micro_batch_size=args.batch_size, max_batches=args.batches)
        print(json.dumps(result))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pretrain.export import export

    out = export(args.source, args.out)
    print(f"exported {args.source} -> {out} (load with AutoModelForCausalLM.from_pretrained)")
    return 0


def _cmd_schedule(args: argparse.Namespace) -> int:
    from pretrain.config import load_config
    from pretrain.schedule_plot import lr_curve, plot_curves, summary_table

    curves = [lr_curve(load_config(path), label=path, total_steps=args.steps) for path in [args.config, *args.compare]]
    print(summary_table(curves))
    if args.plot:
        print(f"wrote {plot_curves(curves, args.plot)}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pretrain.config import load_config
    from pretrain.predict import plot_prediction, predict_run
    from pretrain.schedule_plot import lr_curve

    target = lr_curve(load_config(args.schedule), label=args.schedule)
    try:
        pred = predict_run(args.metrics, target.lrs, law=args.law, actual=args.actual, lam=args.lam,
                           fit_from=args.fit_from, final_window=args.final_window)
    except ValueError as e:  # MetricsError, FitError (too short, annealing not identifiable)
        print(f"pretrain predict: {e}", file=sys.stderr)
        return 2
    skipped = {k: v for k, v in pred.fit_report.items() if v}
    print(f"fitted on {', '.join(args.metrics)}: {sum(len(f[1]) for f in pred.fits)} logged steps"
          + (f" (report: {skipped})" if skipped else ""))
    print(f"  {pred.params.describe()}")
    print(f"predicted final loss for {args.schedule} ({target.schedule}, {len(target.lrs)} steps): {pred.predicted_final:.4f}")
    if pred.actual_final is not None:
        print(f"actual final loss (mean of last {args.final_window} logged, {args.actual}): {pred.actual_final:.4f}  "
              f"predicted there: {pred.predicted_at_actual:.4f}  error: {100 * pred.relative_error:+.2f}%")
    if args.plot:
        path = plot_prediction(args.plot, fits=pred.fits, predicted=pred.predicted, actual_steps=pred.actual_steps,
                               actual_losses=pred.actual_losses, label=args.schedule, law=args.law)
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrain", description="Budget-aware LLM pretraining")
    # launchers that pass the local rank as a flag (deepspeed without --no_local_rank); LOCAL_RANK is read from env
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a YAML config (dotted key=value overrides)")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="e.g. optim.lr=3e-4 run_dir=runs/x")
    t.set_defaults(func=_cmd_train)


    b = sub.add_parser("branch", help="decay a stable-phase checkpoint into a finished model (a new run)")
    b.add_argument("--from", dest="source", required=True, help="RUN/checkpoints/step-N (or a run: its latest)")
    b.add_argument("--decay-steps", type=int, required=True)
    b.add_argument("--shape", help="decay shape (default: the main run's): linear, cosine, 1-sqrt, inv, exp")
    b.add_argument("--min-lr-ratio", type=float, help="LR floor as a fraction of the peak (default: the main run's)")
    b.add_argument("--out", required=True, help="run directory of the branch")
    b.add_argument("--no-export", action="store_true", help="skip writing OUT/hf")
    b.add_argument("overrides", nargs="*", help="key=value overrides of the branch config (e.g. eval.batches=0)")
    b.set_defaults(func=_cmd_branch)

    pl = sub.add_parser("plan", help="train a WSD main run once and branch a finished model for every budget")
    pl.add_argument("config", help="training YAML with budget.budgets: [B1, B2, ...] and a wsd schedule")
    pl.add_argument("overrides", nargs="*")
    pl.add_argument("--mode", choices=["wsd", "wsds"], default="wsd",
                    help="wsd: branch off one main run; wsds: continue the main run from each decayed model (WSD-S)")
    pl.add_argument("--predict", nargs="?", const="tissue", choices=["tissue", "mpl"],
                    help="print each budget's predicted final loss before its decay trains, and the actual after "
                         "(law: tissue, the default: it did best on a plan's main run + first branch in "
                         "docs/RESULTS.md (d); or mpl)")
    pl.set_defaults(func=_cmd_plan)

    bu = sub.add_parser("budget", help="plan a compute budget: model size, tokens (one epoch at most), shape, config")
    g = bu.add_argument_group("compute (exactly one)")
    g.add_argument("--flops", help="training compute in FLOPs, e.g. 1e21")
    g.add_argument("--gpu-hours", help="GPU-hours, with --gpu and --mfu")
    g.add_argument("--gpu", help="GPU type for --gpu-hours (H100, A100, ...; the MFU table of pretrain.metrics)")
    g.add_argument("--mfu", default="0.4", help="assumed model FLOPs utilisation in (0, 1] (default 0.4)")
    d = bu.add_argument_group("data (the one-epoch cap)")
    d.add_argument("--unique-tokens", help="unique training tokens available")
    d.add_argument("--manifest", help="a data_select manifest.json: its train tokens and tokenizer vocabulary")
    bu.add_argument("--law", default="besiroglu", choices=["besiroglu", "hoffmann"],
                    help="compute-optimal law (default: Besiroglu et al. 2024's refit of Chinchilla)")
    bu.add_argument("--family", default="llama", choices=["llama", "olmo2"])
    bu.add_argument("--vocab-size", type=int, help="vocabulary (default: the manifest's, else 32000)")
    bu.add_argument("--seq-len", type=int, default=2048)
    bu.add_argument("--json", action="store_true", help="print the plan as JSON")
    w = bu.add_argument_group("--write-config")
    w.add_argument("--write-config", metavar="PATH", help="write a ready train config for the plan here")
    w.add_argument("--branches", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                   help="budget.budgets as fractions of the budget (default 0.25 0.5 1)")
    w.add_argument("--decay-fraction", type=float, default=0.2, help="WSD decay share of each budget (default 0.2)")
    w.add_argument("--batch-tokens", type=int, default=1024 * 2048, help="global batch in tokens (default 2,097,152)")
    w.add_argument("--micro-batch", type=int, default=8, help="sequences per forward pass (default 8)")
    w.add_argument("--template", default=str(CONFIGS_DIR / "train" / "tinyllama-1.1b.yaml"),
                   help="recipe the optimizer/checkpoint/eval/logging sections come from")
    bu.set_defaults(func=_cmd_budget)

    ev = sub.add_parser("eval", help="held-out loss of a checkpoint on token manifests (one JSON line each)")
    ev.add_argument("source", help="run directory or checkpoints/step-NNNNNNNN")
    ev.add_argument("manifests", nargs="+", help="manifest.json (or its directory) tokenized with the model's tokenizer")
    ev.add_argument("--split", default="val", help="val (default) or train")
    ev.add_argument("--seq-len", type=int, help="default: the run's data.seq_len")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--batches", type=int, default=0, help="micro-batches to evaluate (0 = the whole split)")
    ev.set_defaults(func=_cmd_eval)

    e = sub.add_parser("export", help="write a checkpoint as an HF model directory (config, safetensors, tokenizer)")
    e.add_argument("source", help="run directory or checkpoints/step-NNNNNNNN")
    e.add_argument("--out", required=True)
    e.set_defaults(func=_cmd_export)

    s = sub.add_parser("schedule", help="print and plot the LR schedule of one or more training configs")
    s.add_argument("config", help="training YAML (schedule, optim.lr and budget are read)")
    s.add_argument("--compare", nargs="+", default=[], metavar="YAML", help="more configs drawn on the same plot")
    s.add_argument("--plot", metavar="PNG", help="write the LR curves here")
    s.add_argument("--steps", type=int, help="override the budget: total optimizer steps for every config")
    s.set_defaults(func=_cmd_schedule)

    pr = sub.add_parser("predict", help="fit a loss law on one or two runs and predict another schedule")
    pr.add_argument("--metrics", required=True, nargs="+",
                    help="metrics.jsonl of the run(s) to fit (LRs from the config.yaml beside each, if there)")
    pr.add_argument("--law", default="tissue", choices=["tissue", "mpl"],
                    help="tissue: LR-annealing law (Tissue et al. 2024); mpl: multi-power law (Luo et al. 2025)")
    pr.add_argument("--schedule", required=True, metavar="YAML", help="training config whose schedule/budget to predict")
    pr.add_argument("--actual", metavar="JSONL", help="metrics.jsonl of that run, to report the prediction error")
    pr.add_argument("--plot", metavar="PNG", help="write fitted, predicted (and actual) curves here")
    pr.add_argument("--lam", type=float, default=0.999, help="tissue: annealing-momentum decay lambda (default 0.999)")
    pr.add_argument("--fit-from", type=int, help="first step used in the fit (default: end of warm-up)")
    pr.add_argument("--final-window", type=int, default=10, help="logged losses averaged for the final loss")
    pr.set_defaults(func=_cmd_predict)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"pretrain: config error: {e}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, FileNotFoundError) as e:
        print(f"pretrain: error: {e}", file=sys.stderr)
        return 2
    finally:
        if "pretrain.engines.base" in sys.modules:  # only a command that trained can hold process groups
            from pretrain.engines.base import shutdown_distributed

            shutdown_distributed()


if __name__ == "__main__":
    raise SystemExit(main())
