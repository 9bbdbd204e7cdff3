"""`bert-pretrain` subcommands for tracking: `ui` opens the MLflow UI over the runs recorded here, `tracking
sync` sends what a run could not send while its tracking server was away."""

from __future__ import annotations

import argparse

from common.console import say
from orchestrator.tracking.names import UI_HOST, UI_PORT


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    ui = subparsers.add_parser(
        "ui",
        help="open the MLflow UI over the recorded runs",
        description="Start the MLflow UI over the embedded tracking store (./mlflow.db and ./mlartifacts, "
        "where `bert-pretrain train` records runs by default) and print its address. Ctrl-C stops it.",
    )
    ui.add_argument("--port", type=int, default=UI_PORT, help=f"port to listen on (default: {UI_PORT})")
    ui.add_argument("--host", default=UI_HOST, help=f"address to listen on (default: {UI_HOST})")
    ui.add_argument(
        "--backend-store-uri",
        default="",
        help="tracking store to show, e.g. sqlite:///path/mlflow.db (default: $MLFLOW_TRACKING_URI, "
        "else ./mlflow.db)",
    )
    ui.set_defaults(func=run_ui)

    tracking = subparsers.add_parser(
        "tracking", help="MLflow records of training runs", description="MLflow records of training runs."
    )
    actions = tracking.add_subparsers(dest="tracking_command", metavar="ACTION", required=True)
    sync = actions.add_parser(
        "sync",
        help="send a run's metrics that the tracking server did not get",
        description="Send what a run kept in RUN_DIR/mlflow_unsent/ while its tracking server did not answer "
        "(metrics, tags, the final model, how the run ended), and the metrics its newest checkpoint holds "
        "(those of an interrupted run that Ray Train had not passed on), to its MLflow run, creating the run "
        "when no start reached the server. Every metric arrives once, however often this is run. `train` "
        "does the same when the run is next started.",
    )
    sync.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder: STORAGE_PATH/RUN_NAME")
    sync.add_argument(
        "--tracking-uri",
        default="",
        help="the tracking server, when it is not the run's mlflow.tracking_uri (run.json keeps that without "
        "its password)",
    )
    sync.set_defaults(func=run_sync)


def run_ui(args: argparse.Namespace) -> int:
    """Serve the MLflow UI until interrupted."""
    from orchestrator.tracking.ui import serve_ui

    return serve_ui(args.backend_store_uri, args.host, args.port)


def run_sync(args: argparse.Namespace) -> int:
    """Send what the run directory keeps unsent."""
    from orchestrator.run_dir import RunDir
    from orchestrator.tracking.sync import sync_run
    from orchestrator.train.checkpoints import find_resume_checkpoint

    run_dir = RunDir.at(args.run_dir)
    reports = find_resume_checkpoint(run_dir).train_state.get("reports", [])
    synced = sync_run(run_dir, args.tracking_uri, reports)
    if not (synced.metrics or synced.others):
        where = f" (its MLflow run: {synced.link})" if synced.link else ""
        say(f"Nothing to send: the MLflow run has everything {args.run_dir} keeps{where}.")
        return 0
    what = [f"{synced.metrics:,} metrics", *synced.others]
    listed = ", ".join(what[:-1]) + f" and {what[-1]}" if len(what) > 1 else what[0]
    say(f"Sent {listed} that {args.run_dir} kept. MLflow run: {synced.link}")
    return 0
