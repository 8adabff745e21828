"""``groundthink`` command line: one module per subcommand, each with ``register(subparsers)``.

A subcommand module adds its parser and sets ``func(args) -> int``. User errors (``UserError`` and
``ValueError`` / ``KeyError`` raised while validating input) are printed as one line, exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from groundthink.errors import UserError

# Subcommand name -> module that registers it.
COMMANDS = {
    "models": "groundthink.cli.models",
    "generate": "groundthink.cli.generate",
    "export": "groundthink.cli.export",
    "train": "groundthink.cli.train",
    "eval": "groundthink.cli.eval",
    "diagnose": "groundthink.cli.diagnose",
    "bench": "groundthink.cli.bench",
    "sweep": "groundthink.cli.sweep",
    "plot": "groundthink.cli.plot",
    "recall-probe": "groundthink.cli.recall",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="groundthink",
        description="Train, compare and diagnose small RWKV-6 + Mamba-2 hybrid language models.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
