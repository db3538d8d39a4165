"""`pretrain` command line: a thin shell over the Python API (one function per subcommand).

Exit status: 0 done; 2 an expected failure, reported in one line ``pretrain: error: …`` (bad
config, data or checkpoint, a refused resume, a non-finite loss); 75 stopped by SIGTERM/SIGUSR1
after saving a checkpoint (run again with ``checkpoint.resume=auto``); 1 a bug (traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pretrain.checkpoint import CheckpointError
from pretrain.config import ConfigError
from pretrain.data import DataError
from pretrain.guard import PREEMPTED_EXIT, NonFiniteError, Preempted

EXPECTED_FAILURE_EXIT = 2


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
    run_plan(cfg, mode=args.mode)
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
        pred = predict_run(args.metrics, target.lrs, actual=args.actual, lam=args.lam,
                           fit_from=args.fit_from, final_window=args.final_window)
    except ValueError as e:  # MetricsError, or too few points to fit
        print(f"pretrain predict: {e}", file=sys.stderr)
        return 2
    p = pred.params
    skipped = {k: v for k, v in pred.fit_report.items() if v}
    print(f"fitted on {args.metrics}: {len(pred.fit_steps)} logged steps" + (f" (report: {skipped})" if skipped else ""))
    print(f"  L0={p.L0:.4f} A={p.A:.4f} alpha={p.alpha:.4f} C={p.C:.6f} lam={p.lam} "
          f"(eta = lr / {p.lr_ref:g})  rmse(log L)={p.rmse_log:.4f}")
    print(f"predicted final loss for {args.schedule} ({target.schedule}, {len(target.lrs)} steps): {pred.predicted_final:.4f}")
    if pred.actual_final is not None:
        print(f"actual final loss (mean of last {args.final_window} logged, {args.actual}): {pred.actual_final:.4f}  "
              f"predicted there: {pred.predicted_at_actual:.4f}  error: {100 * pred.relative_error:+.2f}%")
    if args.plot:
        path = plot_prediction(args.plot, fit_steps=pred.fit_steps, fit_losses=pred.fit_losses, fitted=pred.fitted,
                               predicted=pred.predicted, actual_steps=pred.actual_steps,
                               actual_losses=pred.actual_losses, labels=(str(args.metrics), args.schedule))
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
    pl.set_defaults(func=_cmd_plan)

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

    pr = sub.add_parser("predict", help="fit the LR-annealing loss law on a run and predict another schedule")
    pr.add_argument("--metrics", required=True, help="metrics.jsonl of the finished run to fit")
    pr.add_argument("--schedule", required=True, metavar="YAML", help="training config whose schedule/budget to predict")
    pr.add_argument("--actual", metavar="JSONL", help="metrics.jsonl of that run, to report the prediction error")
    pr.add_argument("--plot", metavar="PNG", help="write fitted, predicted (and actual) curves here")
    pr.add_argument("--lam", type=float, default=0.999, help="annealing-momentum decay lambda (default 0.999)")
    pr.add_argument("--fit-from", type=int, help="first step used in the fit (default: end of warm-up)")
    pr.add_argument("--final-window", type=int, default=10, help="logged losses averaged for the final loss")
    pr.set_defaults(func=_cmd_predict)

    return p


def report(line: str) -> None:
    """One line for the user: rank 0 prints it (every rank fails alike, or after agreeing). Under torchrun
    every rank also leaves it in the error file torchrun names, so torchrun's summary shows it as the
    root cause instead of a pointer to its docs; elsewhere other ranks print it with their rank."""
    line = " ".join(part.strip() for part in line.splitlines())
    rank, error_file = int(os.environ.get("RANK", "0")), os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:  # the layout of torch.distributed.elastic's own error files, the line as the "traceback"
        with open(error_file, "w") as f:
            json.dump({"message": {"message": line, "extraInfo": {"py_callstack": line,
                                                                   "timestamp": str(int(time.time()))}}}, f)
    if rank == 0:
        print(line, file=sys.stderr, flush=True)
    elif not error_file:
        print(f"[rank {rank}] {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Preempted as e:
        report(f"pretrain: {e}")
        return PREEMPTED_EXIT
    except (ConfigError, DataError, CheckpointError, NonFiniteError, FileNotFoundError) as e:
        report(f"pretrain: error: {e}")
        return EXPECTED_FAILURE_EXIT
    finally:
        if "pretrain.engines.base" in sys.modules:  # only a command that trained can hold process groups
            from pretrain.engines.base import shutdown_distributed

            shutdown_distributed()


if __name__ == "__main__":
    raise SystemExit(main())
