"""The `bert-pretrain` command line: one subcommand per job, each defined in the module that owns it."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

from common.errors import Interrupted, UserError
from common.redact import redact_text

# Each command module exposes `register(subparsers)`, adding its subcommands with `set_defaults(func=...)`.
# They import torch and Ray inside their handlers, so that `--help` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "orchestrator.cli.data",
    "orchestrator.cli.train",
    "orchestrator.cli.tracking",
    "orchestrator.cli.inference",
    "orchestrator.cli.finetune",
    "orchestrator.cli.jobs",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="bert-pretrain",
        description="Pretrain BERT encoders (MLM + NSP) on your own corpus: Ray Data, Ray Train, MLflow.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        register: Callable[[argparse._SubParsersAction], None] = module.register
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    # Every message goes through redact_text: no credential of a URI reaches the console.
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as interrupt:
        detail = str(interrupt) if isinstance(interrupt, Interrupted) else "run it again to start over"
        print(f"\nbert-pretrain {args.command}: interrupted; {redact_text(detail)}", file=sys.stderr)
        return 130
    except UserError as error:  # bad input, of any package: one line
        print(f"bert-pretrain {args.command}: error: {redact_text(str(error))}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug: the traceback
        print(redact_text("".join(traceback.format_exception(error))), end="", file=sys.stderr)
        return 1
