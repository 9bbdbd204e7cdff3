"""The `bert-pretrain` command line: one subcommand per job, each defined in the module that owns it."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

from data.redact import redact_text
from orchestrator.errors import Interrupted, UserError

# Each command module exposes `register(subparsers)`, adding its subcommands with `set_defaults(func=...)`.
# They import torch and Ray inside their handlers, so that `--help` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "orchestrator.cli.data",
    "orchestrator.cli.train",
    "orchestrator.cli.tracking",
    "orchestrator.cli.inference",
    "orchestrator.cli.jobs",
)


def _is_user_error(error: BaseException) -> bool:
    """Errors that describe bad input (ours, the data pipeline's, a bad checkpoint) rather than a bug."""
    import importlib

    if isinstance(error, UserError):
        return True
    for module_name, class_name in (("data", "DataError"), ("model", "CheckpointError")):
        module = importlib.import_module(module_name)
        if isinstance(error, getattr(module, class_name)):
            return True
    return False


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
    except Exception as error:
        if not _is_user_error(error):
            print(redact_text("".join(traceback.format_exception(error))), end="", file=sys.stderr)
            return 1
        print(f"bert-pretrain {args.command}: error: {redact_text(str(error))}", file=sys.stderr)
        return 2
