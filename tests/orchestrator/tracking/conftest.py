"""The tracking tests' stores: a real `mlflow server` on 127.0.0.1 and a SQLite store, one of each per
module (starting one costs seconds); each test records in its own experiment."""

from __future__ import annotations

import pytest

from orchestrator.config import MlflowConfig
from tests.orchestrator.tracking_helpers import MlflowServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'mlflow.db'}"


@pytest.fixture
def sqlite_config(sqlite_uri, request) -> MlflowConfig:
    return MlflowConfig(tracking_uri=sqlite_uri, experiment_name=request.node.name)
