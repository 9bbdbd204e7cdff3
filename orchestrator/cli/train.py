"""`bert-pretrain` subcommands for training: `train` runs a recipe on Ray Train, `config show` prints one."""

from __future__ import annotations

import argparse

from common.console import say
from common.signals import stop_on_sigterm

CONFIG_HELP = "a YAML recipe, or the name of one in the repository's configs/ (debug, mini, base-phase1, ...)"
SET_HELP = "override a setting with a dotted key, e.g. --set optim.lr=2e-4 (repeatable; values are YAML)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    train = subparsers.add_parser(
        "train",
        help="pretrain a BERT encoder from a recipe on Ray Train",
        description="Pretrain a BERT encoder (MLM + NSP) with Ray Train DDP workers. Joins the Ray cluster "
        "in RAY_ADDRESS or starts a local Ray; trains the tokenizer and prepares the data first when "
        "missing; resumes the run from its latest checkpoint when started again with the same run name; "
        "writes the final model in HF format to <storage_path>/<run_name>/final/.",
    )
    add_run_arguments(train)
    train.set_defaults(func=run_train)

    config = subparsers.add_parser("config", help="inspect recipes", description="Inspect run recipes.")
    config_commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    show = config_commands.add_parser(
        "show",
        help="print the resolved config of a recipe",
        description="Load a recipe strictly (unknown keys and wrong types are errors), apply the overrides "
        "and print the resolved config as YAML.",
    )
    show.add_argument("config", help=CONFIG_HELP)
    add_set_argument(show)
    show.set_defaults(func=run_config_show)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that say what a run computes and where: shared by `train` and `submit`."""
    parser.add_argument("--config", required=True, help=CONFIG_HELP)
    parser.add_argument(
        "--num-workers",
        type=parse_worker_count,
        metavar="N|MIN-MAX",
        help="Ray Train workers (one GPU each with --gpu); MIN-MAX for elastic training, where Ray Train "
        "uses as many as fit and regroups as nodes come and go. The global batch stays; each share changes",
    )
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--gpu", dest="use_gpu", action="store_const", const=True, help="one GPU per worker")
    device.add_argument("--cpu", dest="use_gpu", action="store_const", const=False, help="train on CPUs")
    parser.add_argument(
        "--init-from",
        metavar="DIR",
        help="start a new run from the weights of a training checkpoint or an HF BERT folder, which also "
        "decides the model's sizes and tokenizer (phase 2, or continued pretraining with --config continue)",
    )
    add_set_argument(parser)


def parse_worker_count(text: str) -> int | tuple[int, int]:
    """'4' -> 4; '2-8' -> (2, 8). The argparse type of --num-workers."""
    low, dash, high = text.partition("-")
    try:
        count = (int(low), int(high)) if dash else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX (e.g. 4 or 2-8), got {text!r}") from None
    if dash and count[0] > count[1]:
        raise argparse.ArgumentTypeError(f"MIN is more than MAX in {text!r}: give MIN-MAX, e.g. 2-8")
    return count


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
    )


def run_train(args: argparse.Namespace) -> int:
    from orchestrator.config import flag_overrides, load_config
    from orchestrator.train.driver import train

    # `ray job stop` and schedulers send SIGTERM: end like Ctrl-C (during the fit, Ray Train's graceful
    # abort, which flushes the metrics), so the MLflow run is marked KILLED and the checkpoints stay.
    stop_on_sigterm()
    flags = flag_overrides(args.num_workers, args.use_gpu, args.init_from)
    result = train(load_config(args.config, [*args.overrides, *flags]))
    say(f"\nTrained {result.steps} steps. The model (HF format, with its tokenizer) is in {result.final_dir}")
    if result.mlflow_link:
        say(f"See the run in MLflow: {result.mlflow_link}")
    return 0


def run_config_show(args: argparse.Namespace) -> int:
    import yaml

    from common.redact import redact
    from orchestrator.config import load_config

    config = redact(load_config(args.config, args.overrides).to_dict())
    say(yaml.safe_dump(config, sort_keys=False), end="")
    return 0
