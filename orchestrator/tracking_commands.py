"""`bert-pretrain` subcommands for tracking: `ui` opens the MLflow UI over the runs recorded here."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

from orchestrator.cli import UserError


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
    from orchestrator.tracking import EMBEDDED_ARTIFACTS_DIR, MlflowConfig, resolve_tracking_uri
    from orchestrator.tracking_params import redact

    store_uri = resolve_tracking_uri(MlflowConfig(tracking_uri=args.backend_store_uri))
    if store_uri.startswith(("http://", "https://")):
        raise UserError(f"{redact(store_uri)} is a tracking server with its own UI: open it in a browser")
    if store_uri.startswith("sqlite:///"):
        database = Path(store_uri.removeprefix("sqlite:///"))
        if not database.exists():
            raise UserError(
                f"no tracking store at {database}: run `bert-pretrain train` here first, or pass "
                "--backend-store-uri"
            )
        artifacts = database.parent / EMBEDDED_ARTIFACTS_DIR
    else:
        artifacts = Path.cwd() / EMBEDDED_ARTIFACTS_DIR
    with socket.socket() as probe:
        try:
            probe.bind((args.host, args.port))
        except OSError as error:
            message = f"cannot listen on {args.host}:{args.port} ({error.strerror}); pass another --port"
            raise UserError(message) from error
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        store_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    # The server's job runner serves GenAI features this project does not use; it would start seven processes.
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(f"MLflow UI: http://{args.host}:{args.port}  (store: {store_uri}; Ctrl-C to stop)", flush=True)
    try:
        return subprocess.run(command, env=env).returncode
    except KeyboardInterrupt:
        return 0
