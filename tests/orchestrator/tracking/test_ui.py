"""`bert-pretrain ui`: stopped with SIGTERM (as a service manager or `kill` stops it), it stops its `mlflow
server` and every process that started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from mlflow import MlflowClient

from tests.orchestrator.tracking_helpers import START_TIMEOUT_S, free_port, process_tree, wait_until_healthy


def test_sigterm_stops_the_ui_and_its_server_processes(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(store).create_experiment("shown")
    port = free_port()
    command = [sys.executable, "-m", "orchestrator.cli", "ui", "--backend-store-uri", store]
    ui = subprocess.Popen([*command, "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", START_TIMEOUT_S, ui)
        server = process_tree(ui.pid) - {ui.pid}
        assert server, "the UI runs `mlflow server` in processes of its own"
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) == 0
    finally:
        if ui.poll() is None:
            ui.kill()
    assert [pid for pid in server if os.path.exists(f"/proc/{pid}")] == []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # the port is free again
    assert ui.stdout.read().startswith(f"MLflow UI: http://127.0.0.1:{port}")
