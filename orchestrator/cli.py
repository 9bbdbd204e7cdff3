"""The `bert-pretrain` command line: one subcommand per job, each defined in the module that owns it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

# Each command module exposes `register(subparsers)`, adding its subcommands with `set_defaults(func=...)`.
# They import torch and Ray inside their handlers, so that `--help` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "orchestrator.data_commands",
    "orchestrator.train_commands",
    "orchestrator.tracking_commands",
    "orchestrator.inference_commands",
    "orchestrator.jobs_commands",
)


class UserError(Exception):
    """A problem with the user's input: printed as one clear message, exit status 2, no traceback."""


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
    try:
        return int(args.func(args) or 0)
    except Exception as error:
        if not _is_user_error(error):
            raise
        print(f"bert-pretrain {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Through the imported module, so that `UserError` is the class the command modules raise.
    from orchestrator.cli import main as cli_main

    sys.exit(cli_main())
