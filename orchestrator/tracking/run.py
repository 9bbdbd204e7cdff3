"""One MLflow run per training run: created or resumed by the driver, which logs the config, tags, final model
and end status; metrics come from the Ray Train controller through `RunTracker.callback()`.

The run id is kept in the run directory's `run.json`, so a restarted, resumed or resubmitted run continues
the same MLflow run. With tracking disabled, every method does nothing, so the driver code stays the same.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.config import MlflowConfig
from orchestrator.errors import UserError
from orchestrator.run_dir import read_run_json, update_run_json
from orchestrator.tracking.names import carry_over_renamed_metrics, mark_model_training
from orchestrator.tracking.params import config_to_params, redact

logger = logging.getLogger(__name__)

RUN_ID_KEY = "mlflow_run_id"  # in run.json
EMBEDDED_STORE_FILE = "mlflow.db"
EMBEDDED_ARTIFACTS_DIR = "mlartifacts"
END_STATUSES = ("FINISHED", "FAILED", "KILLED")


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


def git_commit() -> str | None:
    """The commit of the checkout this code runs from, when it is one."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def ray_job_tags() -> dict[str, str]:
    """The Ray job's id once Ray is initialised, and the submission id under `ray job submit`."""
    import ray

    tags = {}
    if ray.is_initialized():
        tags["ray_job_id"] = ray.get_runtime_context().get_job_id()
    # `ray job submit` hands the job's metadata to the entrypoint in this variable.
    job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    if submission_id := job_config.get("metadata", {}).get("job_submission_id"):
        tags["ray_submission_id"] = submission_id
    return tags


class RunTracker:
    """The driver's handle on the MLflow run of one training run. Use `RunTracker.open`."""

    def __init__(
        self,
        config: MlflowConfig,
        tracking_uri: str = "",
        run_id: str = "",
        resumed: bool = False,
        last_logged_steps: dict[str, int] | None = None,
    ):
        self.config = config
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.resumed = resumed
        self._last_logged_steps = last_logged_steps or {}
        self._ended = not run_id
        self._system_metrics = None
        if run_id:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri)

    @classmethod
    def open(cls, config: MlflowConfig, run_dir: str | Path, run_name: str) -> RunTracker:
        """Create the MLflow run, or resume the one whose id is in `run_dir/run.json`; store its id there."""
        if not config.enabled:
            return cls(config)
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        tracking_uri = resolve_tracking_uri(config)
        client = MlflowClient(tracking_uri)
        try:
            run = _resumable_run(client, read_run_json(run_dir).get(RUN_ID_KEY))
            if run is None:
                experiment_id = _experiment_id(client, config, tracking_uri)
                tags = {"git_commit": commit} if (commit := git_commit()) else {}
                run = client.create_run(experiment_id, run_name=run_name, tags=tags)
                resumed = False
            else:
                client.update_run(run.info.run_id, status="RUNNING")
                resumed = True
            mark_model_training(client, run.info.experiment_id)
            last_logged_steps = carry_over_renamed_metrics(client, run)
        except MlflowException as error:
            raise UserError(
                f"cannot record the run in MLflow at {redact(tracking_uri)}: {error.message} "
                "(start the tracking server, fix mlflow.tracking_uri, or set mlflow.enabled=false)"
            ) from error
        update_run_json(run_dir, **{RUN_ID_KEY: run.info.run_id})
        tracker = cls(config, tracking_uri, run.info.run_id, resumed, last_logged_steps)
        logger.info(
            "MLflow run %s (%s) at %s", run.info.run_id, "resumed" if resumed else "new", redact(tracking_uri)
        )
        if config.log_system_metrics:
            tracker._start_system_metrics()
        return tracker

    def log_config(self, resolved: Mapping[str, Any]) -> None:
        """Log the resolved config: as parameters (flattened, redacted) and as `resolved_config.json`.

        MLflow parameters cannot change, so on a resumed run a value that differs (e.g. another worker
        count) is recorded as a tag `resumed.<key>` instead.
        """
        if not self.run_id:
            return
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        params = config_to_params(resolved)
        logged = self._client.get_run(self.run_id).data.params
        new = [Param(key, value) for key, value in params.items() if key not in logged]
        for start in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, params=new[start : start + MAX_PARAMS_TAGS_PER_BATCH])
        changed = {
            f"resumed.{key}": value for key, value in params.items() if logged.get(key, value) != value
        }
        if changed:
            logger.warning("MLflow: this resume changes %s; recorded as tags.", ", ".join(sorted(changed)))
            self.set_tags(changed)
        self._client.log_dict(self.run_id, redact(dict(resolved)), "resolved_config.json")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags. Suggested keys: ray_job_id, model_preset, num_workers, cluster_resources,
        tokenizer_hash, data_manifest_hash, checkpoint_uri. Values are redacted and cut to MLflow's limit."""
        if not self.run_id:
            return
        from mlflow.entities import RunTag
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

        run_tags = [RunTag(key, str(redact(str(value)))[:MAX_TAG_VAL_LENGTH]) for key, value in tags.items()]
        for start in range(0, len(run_tags), MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=run_tags[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def callback(self):
        """The Ray Train callback (for `RunConfig(callbacks=[...])`) that logs the workers' metrics.

        With tracking disabled, a callback that does nothing.
        """
        if not self.run_id:
            from ray.train import UserCallback

            return UserCallback()
        from orchestrator.tracking.metrics import MetricsCallback

        return MetricsCallback(
            self.tracking_uri,
            self.run_id,
            self._last_logged_steps,
            self.config.max_buffered_metrics,
            self.config.flush_timeout_s,
        )

    def log_final(self, final_dir: str | Path, artifacts: Mapping[str, str | Path]) -> None:
        """Log the final model folder (HF format, with its tokenizer) as `model/`, and each of `artifacts`
        (name -> file or folder, e.g. {"data_manifest": ".../manifest.json"}) under its name; register the
        model when `registered_model_name` is set. A failure is logged, not raised: the model is on disk."""
        if not self.run_id:
            return
        try:
            self._client.log_artifacts(self.run_id, str(final_dir), "model")
            for name, path in artifacts.items():
                if Path(path).is_dir():
                    self._client.log_artifacts(self.run_id, str(path), name)
                else:
                    self._client.log_artifact(self.run_id, str(path), name)
            if self.config.registered_model_name:
                self._register_model(self.config.registered_model_name)
        except Exception as error:
            logger.warning("MLflow: could not log the final model (it is in %s): %s", final_dir, error)

    def end(self, status: str, error: str | None = None) -> None:
        """End the run as FINISHED, FAILED (with `error` as a tag) or KILLED. Only the first call counts.

        A failure to reach MLflow is logged, not raised, so that it never hides how training ended."""
        if status not in END_STATUSES:
            raise ValueError(f"unknown run status {status!r}; choose from {', '.join(END_STATUSES)}")
        if self._ended:
            return
        self._ended = True
        if self._system_metrics is not None:
            self._system_metrics.finish()
        try:
            if error:
                self.set_tags({"error": error})
            self._client.set_terminated(self.run_id, status)
        except Exception as failure:
            logger.warning("MLflow: could not mark run %s %s: %s", self.run_id, status, failure)

    def _register_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

        try:
            self._client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        artifact_uri = self._client.get_run(self.run_id).info.artifact_uri
        version = self._client.create_model_version(name, f"{artifact_uri}/model", run_id=self.run_id)
        self.set_tags({"registered_model": f"{name}/{version.version}"})

    def _start_system_metrics(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system_metrics = SystemMetricsMonitor(
            self.run_id, resume_logging=self.resumed, tracking_uri=self.tracking_uri
        )
        self._system_metrics.start()


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
        logger.warning("MLflow run %s (run.json) is not in this tracking store; starting a new run.", run_id)
        return None


def _experiment_id(client, config: MlflowConfig, tracking_uri: str) -> str:
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
