"""The tracking store, as every part of tracking talks to it: bounded calls, the URI, the run to record in.

Every MLflow HTTP call of a process is bounded (`bound_mlflow_calls`). A run is found by the id that run.json
keeps, so a restarted, resumed or resubmitted run continues the same MLflow run, or created in the configured
experiment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from common.console import warn
from common.errors import UserError
from common.redact import redact, redact_text
from orchestrator.config import MlflowConfig
from orchestrator.run_dir import RunDir
from orchestrator.tracking.names import MODEL_TRAINING_VIEW, UI_HOST, UI_PORT
from orchestrator.tracking.tags import source_tags


@dataclass(frozen=True)
class MlflowRun:
    """The MLflow run a training run records to."""

    tracking_uri: str
    run_id: str = ""
    """"" when the server did not answer when the run started (offline)."""
    experiment_id: str = ""
    resumed: bool = False
    finished: bool = False
    """The run had ended FINISHED before this start (a resume of a finished run never changes that)."""
    last_logged_steps: dict[str, int] = field(default_factory=dict)
    """Per metric, the last step already in MLflow (a resumed run reports some steps again)."""


RUN_ID_KEY = "mlflow_run_id"  # in run.json
EMBEDDED_STORE_FILE = "mlflow.db"
EMBEDDED_ARTIFACTS_DIR = "mlartifacts"
HTTP_TIMEOUT_S = 10  # the longest one call to the tracking server may take


def bound_mlflow_calls(flush_timeout_s: float) -> None:
    """Bound every MLflow HTTP call of this process: no retries of MLflow's own (its default retries hold a
    call for minutes; our callers retry, or record what was not sent), a timeout no longer than the run's
    flush timeout, and no "View run" line with the server's address (we print our own, redacted). Values the
    user has set are kept."""
    timeout = max(1, min(HTTP_TIMEOUT_S, round(flush_timeout_s)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout))
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def is_client_error(error: Exception) -> bool:
    """Whether MLflow refused the data itself (retrying cannot help), rather than failing to answer."""
    from mlflow.exceptions import MlflowException

    if not isinstance(error, MlflowException):
        return False
    status = error.get_http_status_code()
    return 400 <= status < 500 and status != 429


def resolve_tracking_uri(config: MlflowConfig) -> str:
    """The tracking URI to use; a SQLite path is made absolute, since the controller may run elsewhere."""
    uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return f"sqlite:///{Path.cwd() / EMBEDDED_STORE_FILE}"
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).absolute()}"
    return uri


def default_artifact_location(tracking_uri: str) -> str | None:
    """`mlartifacts` beside a SQLite store; None (the server decides) for anything else."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / EMBEDDED_ARTIFACTS_DIR).as_uri()
    return None


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where to see a run: its page in the tracking server's UI, in the model-training view; for a store
    (SQLite, a database), its page in the UI that `bert-pretrain ui` serves, and the command to start it
    (with the store named, unless it is the one `bert-pretrain ui` opens from this folder by default)."""
    uri = redact(tracking_uri)
    page = f"#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    default_store = resolve_tracking_uri(MlflowConfig(tracking_uri=""))
    command = "bert-pretrain ui" + ("" if uri == default_store else f" --backend-store-uri {uri}")
    return f"http://{UI_HOST}:{UI_PORT}/{page}  (start the UI with: {command})"


def find_or_create_run(config: MlflowConfig, run_dir: RunDir, tracking_uri: str):
    """(client, run, resumed): the run recorded in run.json when this store has it, else a new one named as
    the run directory (its id then stored in run.json); either way with the source tags of this start."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run = _resumable_run(client, run_dir.read_run_json().get(RUN_ID_KEY))
    if run is not None:
        for key, value in source_tags().items():  # the code of this start
            client.set_tag(run.info.run_id, key, value)
        return client, run, True
    experiment = experiment_id(client, config, tracking_uri)
    run = client.create_run(experiment, run_name=run_dir.name, tags=source_tags())
    run_dir.update_run_json(**{RUN_ID_KEY: run.info.run_id})
    return client, run, False


def is_outage(error: Exception, tracking_uri: str) -> bool:
    """Whether the tracking server failed to answer (training goes on), rather than refusing the run."""
    from mlflow.exceptions import MlflowException

    is_server = tracking_uri.startswith(("http://", "https://"))
    return is_server and isinstance(error, MlflowException) and not is_client_error(error)


def store_error(error: Exception, tracking_uri: str) -> UserError:
    message = redact_text(str(getattr(error, "message", error)))
    return UserError(
        f"cannot record the run in MLflow at {redact_text(tracking_uri)}: {message} "
        "(start the tracking server, fix mlflow.tracking_uri, or set mlflow.enabled=false)"
    )


def _resumable_run(client, run_id: str | None):
    """The run recorded in run.json, when this tracking store has it."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if error.get_http_status_code() != 404:
            raise
        warn(f"MLflow run {run_id} (run.json) is not in this tracking store; starting a new run.")
        return None


def experiment_id(client, config: MlflowConfig, tracking_uri: str) -> str:
    """The id of the configured experiment, created when missing."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(config.experiment_name)
    if experiment is None:
        location = config.artifact_location or default_artifact_location(tracking_uri)
        try:
            return client.create_experiment(config.experiment_name, artifact_location=location)
        except MlflowException:
            # Another run created it in the meantime.
            experiment = client.get_experiment_by_name(config.experiment_name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise UserError(
            f"MLflow experiment {config.experiment_name!r} is deleted; "
            "restore it or set mlflow.experiment_name"
        )
    return experiment.experiment_id
