"""`bert-pretrain` subcommands for tracking: `ui` opens the MLflow UI over the runs recorded here."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    ui = subparsers.add_parser(
        "ui",
        help="open the MLflow UI over the recorded runs",
        description="Start the MLflow UI over the embedded tracking store (./mlflow.db and ./mlartifacts, "
        "where `bert-pretrain train` records runs by default) and print its address. Ctrl-C stops it.",
    )
    ui.add_argument("--port", type=int, default=5000, help="port to listen on (default: 5000)")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    ui.add_argument(
        "--backend-store-uri",
        default="",
        help="tracking store to show, e.g. sqlite:///path/mlflow.db (default: $MLFLOW_TRACKING_URI, "
        "else ./mlflow.db)",
    )
    ui.set_defaults(func=run_ui)


def run_ui(args: argparse.Namespace) -> int:
    """Serve the MLflow UI until interrupted."""
    from orchestrator.tracking.ui import serve_ui

    return serve_ui(args.backend_store_uri, args.host, args.port)
