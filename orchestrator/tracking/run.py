"""One MLflow run per training run: created or resumed by the driver, which logs the config, tags, final model
and end status; metrics come from the Ray Train controller through `RunTracker.callback()`.

The run id is kept in the run directory's `run.json`, so a restarted, resumed or resubmitted run continues
the same MLflow run. With tracking disabled, every method does nothing, so the driver code stays the same.

A tracking server that does not answer never stops training: the tracker goes offline with one warning, and
what it could not send is recorded in the run directory (`orchestrator.tracking.unsent`), to be sent when the
run is next started, or by `sync_run` (`bert-pretrain tracking sync RUN_DIR`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data import storage
from data.manifest import MANIFEST_FILE
from data.redact import REDACTED, redact, redact_text
from orchestrator.config import MlflowConfig, config_from_dict
from orchestrator.errors import UserError
from orchestrator.run_dir import read_run_json, update_run_json
from orchestrator.tracking.names import MODEL_TRAINING_VIEW, carry_over_renamed_metrics, mark_model_training
from orchestrator.tracking.params import config_to_params
from orchestrator.tracking.unsent import (
    Unsent,
    forget_unsent,
    load_unsent,
    save_unsent,
    send_unsent,
    unsent_dir,
)

logger = logging.getLogger(__name__)

RUN_ID_KEY = "mlflow_run_id"  # in run.json
EMBEDDED_STORE_FILE = "mlflow.db"
EMBEDDED_ARTIFACTS_DIR = "mlartifacts"
END_STATUSES = ("FINISHED", "FAILED", "KILLED")
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


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where to see a run: a browser link for a tracking server, else the store and how to open it."""
    uri = redact(tracking_uri)
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"
    return f"run {run_id} in {uri} (open it with `bert-pretrain ui --backend-store-uri {uri}`)"


class RunTracker:
    """The driver's handle on the MLflow run of one training run. Use `RunTracker.open`."""

    def __init__(
        self,
        config: MlflowConfig,
        run_dir: str,
        tracking_uri: str = "",
        run_id: str = "",
        experiment_id: str = "",
        resumed: bool = False,
        last_logged_steps: dict[str, int] | None = None,
    ):
        self.config = config
        self.run_dir = str(run_dir)
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.resumed = resumed
        self._last_logged_steps = last_logged_steps or {}
        self._ended = not config.enabled
        self._system_metrics = None
        if run_id:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri)

    @classmethod
    def open(
        cls, config: MlflowConfig, run_dir: str | Path, run_name: str, reports: Sequence[dict] = ()
    ) -> RunTracker:
        """Create the MLflow run, or resume the one whose id is in `run_dir/run.json` (storing its id there),
        and send what an earlier start of this run could not: its unsent records, and the metrics of
        `reports` (rank 0's reports kept in the checkpoint the run resumes from) that the run lacks. A server
        that does not answer gives an offline tracker (one warning); a store that refuses the run is a
        UserError."""
        run_dir = str(run_dir)
        if not config.enabled:
            return cls(config, run_dir)
        bound_mlflow_calls(config.flush_timeout_s)
        # A new SQLite store announces its tables at INFO; the console names the run and its store instead.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        _save_reports(run_dir, reports)
        tracking_uri = resolve_tracking_uri(config)
        try:
            client, run, resumed = _find_or_create_run(config, run_dir, run_name, tracking_uri)
            if resumed:
                client.update_run(run.info.run_id, status="RUNNING")
            mark_model_training(client, run.info.experiment_id)
            unsent, files = load_unsent(run_dir)
            if sent := send_unsent(client, run.info.run_id, unsent):
                print(f"MLflow: sent {sent:,} metrics kept from an earlier start of this run", flush=True)
            forget_unsent(files)
            run = client.get_run(run.info.run_id)  # with what was just sent, for the steps already logged
            last_logged_steps = carry_over_renamed_metrics(client, run)
        except UserError:
            raise
        except Exception as error:
            if not _is_outage(error, tracking_uri):
                raise _store_error(error, tracking_uri) from None
            tracker = cls(config, run_dir, tracking_uri)
            tracker._go_offline(error)
            return tracker
        tracker = cls(
            config, run_dir, tracking_uri, run.info.run_id, run.info.experiment_id, resumed, last_logged_steps
        )
        if config.log_system_metrics:
            tracker._start_system_metrics()
        return tracker

    @property
    def offline(self) -> bool:
        """Tracking is on but the server did not answer: what is logged is recorded in the run directory."""
        return self.config.enabled and not self.run_id

    @property
    def link(self) -> str:
        """Where to see the run ("" when there is none)."""
        return run_link(self.tracking_uri, self.experiment_id, self.run_id) if self.run_id else ""

    def log_config(self, resolved: Mapping[str, Any]) -> None:
        """Log the resolved config: as parameters (flattened, redacted) and as `resolved_config.json`.

        MLflow parameters cannot change, so on a resumed run a value that differs (e.g. another worker
        count) is recorded as a tag `resumed.<key>` instead. Offline, nothing: a sync logs the config that
        run.json keeps.
        """
        if not self.run_id:
            return
        try:
            self._log_config(resolved)
        except Exception as error:
            self._go_offline(error)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags. Suggested keys: ray_job_id, model_preset, num_workers, cluster_resources,
        tokenizer_hash, data_manifest_hash, checkpoint_uri. Values are redacted and cut to MLflow's limit."""
        from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

        if not self.config.enabled:
            return
        values = {key: redact_text(str(value))[:MAX_TAG_VAL_LENGTH] for key, value in tags.items()}
        if self.run_id:
            try:
                self._log_tags(values)
                return
            except Exception as error:
                self._go_offline(error)
        save_unsent(self.run_dir, Unsent(tags=values))

    def callback(self):
        """The Ray Train callback (for `RunConfig(callbacks=[...])`) that logs the workers' metrics (offline:
        records them in the run directory). With tracking disabled, a callback that does nothing."""
        if not self.config.enabled:
            from ray.train import UserCallback

            return UserCallback()
        from orchestrator.tracking.metrics import MetricsCallback

        return MetricsCallback(
            self.tracking_uri,
            self.run_id,
            self.run_dir,
            self._last_logged_steps,
            self.config.max_buffered_metrics,
            self.config.flush_timeout_s,
        )

    def log_final(self, final_dir: str | Path, artifacts: Mapping[str, str | Path]) -> None:
        """Log the final model folder (HF format, with its tokenizer) as `model/`, and each of `artifacts`
        (name -> file or folder, e.g. {"data_manifest": ".../manifest.json"}) under its name; register the
        model when `registered_model_name` is set. A failure is a warning, not an error: the model is on
        disk, and an offline tracker records it for a later sync."""
        if not self.config.enabled:
            return
        if self.run_id:
            try:
                self._log_final(final_dir, artifacts)
                return
            except Exception as error:
                if is_client_error(error):
                    logger.warning(
                        "MLflow: could not log the final model (it is in %s): %s", final_dir, error
                    )
                    return
                self._go_offline(error)
        save_unsent(self.run_dir, Unsent(final_model=True))

    def end(self, status: str, error: str | None = None) -> None:
        """End the run as FINISHED, FAILED (with `error` as a tag) or KILLED. Only the first call counts.

        A failure to reach MLflow is recorded for a later sync, not raised, so that it never hides how
        training ended; then what this run keeps unsent is named on the console."""
        if status not in END_STATUSES:
            raise ValueError(f"unknown run status {status!r}; choose from {', '.join(END_STATUSES)}")
        if self._ended:
            return
        self._ended = True
        if self._system_metrics is not None:
            self._system_metrics.finish()
        tags = {"error": redact_text(error)} if error else {}
        if self.run_id:
            try:
                self._log_tags(tags)
                self._client.set_terminated(self.run_id, status)
                tags, status = {}, None
            except Exception as failure:
                self._go_offline(failure)
        save_unsent(self.run_dir, Unsent(tags=tags, end_status=status))
        _print_unsent(self.run_dir, self.tracking_uri)

    def _go_offline(self, error: Exception) -> None:
        """Stop calling the server for the rest of this start, with one warning naming it (redacted)."""
        self.run_id = ""
        logger.warning(
            "MLflow: the tracking server %s does not answer (%s); training goes on without it. What it "
            "does not get is kept in %s and sent when this run is next started, or by `bert-pretrain "
            "tracking sync %s`.",
            redact_text(self.tracking_uri),
            redact_text(str(getattr(error, "message", error))),
            unsent_dir(self.run_dir),
            self.run_dir,
        )

    def _log_config(self, resolved: Mapping[str, Any]) -> None:
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
            self._log_tags(changed)
        self._client.log_dict(self.run_id, redact(dict(resolved)), "resolved_config.json")

    def _log_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        run_tags = [RunTag(key, value) for key, value in tags.items()]
        for start in range(0, len(run_tags), MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=run_tags[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def _log_final(self, final_dir: str | Path, artifacts: Mapping[str, str | Path]) -> None:
        self._client.log_artifacts(self.run_id, str(final_dir), "model")
        for name, path in artifacts.items():
            if Path(path).is_dir():
                self._client.log_artifacts(self.run_id, str(path), name)
            else:
                self._client.log_artifact(self.run_id, str(path), name)
        if self.config.registered_model_name:
            self._register_model(self.config.registered_model_name)

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
        self._log_tags({"registered_model": f"{name}/{version.version}"})

    def _start_system_metrics(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system_metrics = SystemMetricsMonitor(
            self.run_id, resume_logging=self.resumed, tracking_uri=self.tracking_uri
        )
        self._system_metrics.start()


def sync_run(run_dir: str, tracking_uri: str = "", reports: Sequence[dict] = ()) -> tuple[int, str]:
    """Send what `run_dir` keeps unsent (metrics, tags, the final model, the end status), and the metrics of
    `reports` (those of the run's newest checkpoint) that the MLflow run lacks, creating the run when no
    start reached the server; return the number of metrics sent and the run's link ("" when there was
    nothing to send). The tracking store is the one in run.json's config unless `tracking_uri` is given."""
    saved = read_run_json(run_dir)
    if "config" not in saved:
        raise UserError(f"{run_dir} is not a run directory (no run.json with a config): give STORAGE/RUN")
    job = config_from_dict(saved["config"])
    config = dataclasses.replace(job.mlflow, tracking_uri=tracking_uri or job.mlflow.tracking_uri)
    _save_reports(run_dir, reports)
    unsent, files = load_unsent(run_dir)
    if not files:
        return 0, ""
    resolved_uri = resolve_tracking_uri(config)
    if REDACTED in resolved_uri:
        raise UserError(
            f"run.json keeps the tracking URI without its credentials ({resolved_uri}): pass it with "
            "--tracking-uri, or set MLFLOW_TRACKING_URI (or MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD)"
        )
    bound_mlflow_calls(config.flush_timeout_s)
    try:
        client, run, _ = _find_or_create_run(config, run_dir, job.checkpoint.run_name, resolved_uri)
        tracker = RunTracker(config, run_dir, resolved_uri, run.info.run_id, run.info.experiment_id, True)
        tracker._log_config(saved["config"])
        sent = send_unsent(client, tracker.run_id, unsent)
        if unsent.final_model:
            manifest = storage.join(job.data.prepared_dir, MANIFEST_FILE)
            with storage.local_input(storage.join(run_dir, "final")) as final_dir:
                tracker._log_final(
                    final_dir, {"data_manifest": manifest} if storage.is_file(manifest) else {}
                )
        if unsent.end_status:
            client.set_terminated(tracker.run_id, unsent.end_status)
    except UserError:
        raise
    except Exception as error:
        raise _store_error(error, resolved_uri) from None
    forget_unsent(files)
    return sent, tracker.link


def _save_reports(run_dir: str, reports: Sequence[dict]) -> None:
    """Record the metrics of rank 0's reports (kept in a checkpoint) as unsent: sent where the run lacks
    them, as Ray Train may not have taken them in before an interrupt."""
    from orchestrator.tracking.metrics import report_metrics

    metrics = [m for report in reports for m in report_metrics(report["metrics"], report["timestamp_ms"])]
    save_unsent(run_dir, Unsent(metrics))


def _find_or_create_run(config: MlflowConfig, run_dir: str, run_name: str, tracking_uri: str):
    """(client, run, resumed): the run recorded in run.json when this store has it, else a new one (its id
    then stored in run.json)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run = _resumable_run(client, read_run_json(run_dir).get(RUN_ID_KEY))
    if run is not None:
        return client, run, True
    experiment_id = _experiment_id(client, config, tracking_uri)
    tags = {"git_commit": commit} if (commit := git_commit()) else {}
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    update_run_json(run_dir, **{RUN_ID_KEY: run.info.run_id})
    return client, run, False


def _is_outage(error: Exception, tracking_uri: str) -> bool:
    """Whether the tracking server failed to answer (training goes on), rather than refusing the run."""
    from mlflow.exceptions import MlflowException

    is_server = tracking_uri.startswith(("http://", "https://"))
    return is_server and isinstance(error, MlflowException) and not is_client_error(error)


def _store_error(error: Exception, tracking_uri: str) -> UserError:
    message = redact_text(str(getattr(error, "message", error)))
    return UserError(
        f"cannot record the run in MLflow at {redact_text(tracking_uri)}: {message} "
        "(start the tracking server, fix mlflow.tracking_uri, or set mlflow.enabled=false)"
    )


def _print_unsent(run_dir: str, tracking_uri: str) -> None:
    """Name what the run directory keeps unsent, where, and how to send it (nothing when all was sent)."""
    unsent, files = load_unsent(run_dir)
    if not files:
        return
    parts = [f"{len(unsent.metrics):,} metrics"]
    if unsent.tags:
        parts.append("tags")
    if unsent.final_model:
        parts.append("the final model")
    if unsent.end_status:
        parts.append("the end status")
    what = ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]
    print(
        f"MLflow: {what} could not be sent to {redact_text(tracking_uri)}; they are kept in "
        f"{unsent_dir(run_dir)} and sent when this run is next started, or now with: "
        f"bert-pretrain tracking sync {run_dir}",
        flush=True,
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
