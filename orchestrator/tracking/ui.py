"""The MLflow UI over a tracking store: `mlflow server` on the given address, until interrupted (Ctrl-C or
SIGTERM), which stops the server and every process it started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from common.console import say
from common.errors import UserError
from common.redact import redact
from common.signals import stop_on_sigterm
from orchestrator.config import MlflowConfig
from orchestrator.tracking.client import EMBEDDED_ARTIFACTS_DIR, resolve_tracking_uri
from orchestrator.tracking.names import MODEL_TRAINING_VIEW


def ui_address(host: str, port: int) -> str:
    """The UI's list of experiments, in its model-training view."""
    return f"http://{host}:{port}/#/experiments?{MODEL_TRAINING_VIEW}"


def serve_ui(backend_store_uri: str, host: str, port: int) -> int:
    """Serve the MLflow UI over `backend_store_uri` ("" -> the embedded store) until interrupted."""
    store_uri = resolve_tracking_uri(MlflowConfig(tracking_uri=backend_store_uri))
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
            probe.bind((host, port))
        except OSError as error:
            message = f"cannot listen on {host}:{port} ({error.strerror}); pass another --port"
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
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # The server's job runner serves GenAI features this project does not use; it would start seven processes.
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    say(f"MLflow UI: {ui_address(host, port)}  (store: {redact(store_uri)}; Ctrl-C to stop)")
    # Its own process group, so that stopping the UI (Ctrl-C or SIGTERM) stops every process of the server.
    server = subprocess.Popen(command, env=env, start_new_session=True)
    stop_on_sigterm()
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_process_group(server)


def stop_process_group(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM to the process group of `process` (started with start_new_session=True): the process and
    everything it started, even when the process itself is gone; SIGKILL to what is left after `timeout_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
