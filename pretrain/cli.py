"""`pretrain` command line: a thin shell over the Python API (one function per subcommand)."""
from __future__ import annotations

import argparse
import sys

from pretrain.config import ConfigError


def _cmd_train(args: argparse.Namespace) -> int:
    from pretrain.config import load_config
    from pretrain.trainer import train

    cfg = load_config(args.config, args.overrides)
    train(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrain", description="Budget-aware LLM pretraining")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a YAML config (dotted key=value overrides)")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="e.g. optim.lr=3e-4 run_dir=runs/x")
    t.set_defaults(func=_cmd_train)

    # -- further subcommands register below (one add_parser block each) --

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"pretrain: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
