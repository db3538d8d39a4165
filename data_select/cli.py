"""`data-select` command line: a thin shell over the data_select Python API."""
from __future__ import annotations

import argparse
import sys


class UsageError(ValueError):
    """Bad input the user must fix; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="data-select", description="Budget-aware data curation: files -> features -> selection -> token shards")
    sub = p.add_subparsers(dest="command", required=True)

    # -- subcommands register below (one add_parser block each, in their own function) --

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (UsageError, FileNotFoundError) as e:
        print(f"data-select: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
