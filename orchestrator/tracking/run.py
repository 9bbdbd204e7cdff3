"""One MLflow run per training run: created or resumed by the driver, which logs the config, tags, final model
and end status; metrics come from the Ray Train controller through `RunTracker.callback()`.

The run id is kept in the run directory's `run.json`, so a restarted, resumed or resubmitted run continues
the same MLflow run. With tracking disabled, every method does nothing, so the driver code stays the same.

A tracking server that does not answer never stops training: the tracker goes offline with one warning, and
what it could not send is recorded in the run directory (`orchestrator.tracking.unsent`), to be sent when the
run is next started, or by `orchestrator.tracking.sync` (`bert-pretrain tracking sync RUN_DIR`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.console import say, warn
from common.errors import UserError
from common.redact import redact, redact_text
from orchestrator.config import MlflowConfig
from orchestrator.run_dir import RunDir
from orchestrator.tracking.client import (
    MlflowRun,
    bound_mlflow_calls,
    find_or_create_run,
    is_client_error,
    is_outage,
    resolve_tracking_uri,
    run_link,
    store_error,
)
from orchestrator.tracking.dataset import log_dataset, prepared_dataset
from orchestrator.tracking.metrics import MetricsCallback
from orchestrator.tracking.model import log_fill_mask_model
from orchestrator.tracking.names import carry_over_renamed_metrics, mark_model_training
from orchestrator.tracking.params import config_to_params
from orchestrator.tracking.system_metrics import SystemMetricsTarget
from orchestrator.tracking.unsent import (
    Unsent,
    forget_unsent,
    load_unsent,
    save_reports,
    save_unsent,
    send_unsent,
)

END_STATUSES = ("FINISHED", "FAILED", "KILLED")
MODEL_URI_TAG = "model_uri"  # models:/<model id> of the final model
REGISTERED_TAG = "registered_model"  # name/version of its registered version


class RunTracker:
    """The driver's handle on the MLflow run of one training run. Use `RunTracker.open`."""

    def __init__(self, config: MlflowConfig, run_dir: RunDir, mlflow_run: MlflowRun | None = None):
        """`mlflow_run`: the MLflow run recorded to (None: tracking disabled; no run id: offline)."""
        self.config = config
        self.run_dir = run_dir
        self.mlflow_run = mlflow_run or MlflowRun("")
        self.tracking_uri = self.mlflow_run.tracking_uri
        self.run_id = self.mlflow_run.run_id
        self._ended = not config.enabled
        if self.run_id:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking_uri)

    @classmethod
    def open(cls, config: MlflowConfig, run_dir: RunDir, reports: Sequence[dict] = ()) -> RunTracker:
        """Create the MLflow run (named as the run directory), or resume the one whose id is in run.json
        (storing its id there),
        and send what an earlier start of this run could not: its unsent records, and the metrics of
        `reports` (rank 0's reports kept in the checkpoint the run resumes from) that the run lacks. A server
        that does not answer gives an offline tracker (one warning); a store that refuses the run is a
        UserError."""
        if not config.enabled:
            return cls(config, run_dir)
        bound_mlflow_calls(config.flush_timeout_s)
        # A new SQLite store announces its tables at INFO; the console names the run and its store instead.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        save_reports(run_dir, reports)
        tracking_uri = resolve_tracking_uri(config)
        try:
            client, run, resumed = find_or_create_run(config, run_dir, tracking_uri)
            finished = resumed and run.info.status == "FINISHED"
            if resumed:
                client.update_run(run.info.run_id, status="RUNNING")
            mark_model_training(client, run.info.experiment_id)
            unsent, files = load_unsent(run_dir)
            if sent := send_unsent(client, run.info.run_id, unsent):
                say(f"MLflow: sent {sent:,} metrics kept from an earlier start of this run")
            forget_unsent(files)
            run = client.get_run(run.info.run_id)  # with what was just sent, for the steps already logged
            last_logged_steps = carry_over_renamed_metrics(client, run)
        except UserError:
            raise
        except Exception as error:
            if not is_outage(error, tracking_uri):
                raise store_error(error, tracking_uri) from None
            tracker = cls(config, run_dir, MlflowRun(tracking_uri))
            tracker._go_offline(error)
            return tracker
        mlflow_run = MlflowRun(
            tracking_uri, run.info.run_id, run.info.experiment_id, resumed, finished, last_logged_steps
        )
        return cls(config, run_dir, mlflow_run)

    @property
    def offline(self) -> bool:
        """Tracking is on but the server did not answer: what is logged is recorded in the run directory."""
        return self.config.enabled and not self.run_id

    @property
    def link(self) -> str:
        """Where to see the run ("" when there is none)."""
        return run_link(self.tracking_uri, self.mlflow_run.experiment_id, self.run_id) if self.run_id else ""

    def log_config(self, resolved: Mapping[str, Any]) -> None:
        """Log the resolved config: as parameters (flattened, redacted) and as `resolved_config.json`.

        MLflow parameters cannot change, so on a resumed run a value that differs (e.g. another worker
        count) is recorded as a tag `resumed.<key>` instead. Offline, nothing: a sync logs the config that
        run.json keeps.
        """
        if not self.run_id:
            return
        try:
            self.send_config(resolved)
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

    def log_dataset(self, prepared_dir: str, manifest) -> None:
        """Log the prepared data as the run's dataset input (`orchestrator.tracking.dataset`). Offline,
        nothing: a sync logs it."""
        if not self.run_id:
            return
        try:
            log_dataset(self._client, self.run_id, prepared_dataset(prepared_dir, manifest))
        except Exception as error:
            self._go_offline(error)

    def system_metrics_target(self) -> SystemMetricsTarget | None:
        """Where each node's system metrics go (`orchestrator.tracking.system_metrics`); None when they are
        off or the tracker is offline."""
        if not (self.run_id and self.config.log_system_metrics):
            return None
        return SystemMetricsTarget(
            self.tracking_uri, self.run_id, self.config.system_metrics_interval_s, self.config.flush_timeout_s
        )

    def callback(self):
        """The Ray Train callback (for `RunConfig(callbacks=[...])`) that logs the workers' metrics (offline:
        records them in the run directory). With tracking disabled, a callback that does nothing."""
        if not self.config.enabled:
            from ray.train import UserCallback

            return UserCallback()
        return MetricsCallback(
            dataclasses.replace(self.mlflow_run, run_id=self.run_id), self.run_dir, self.config
        )

    def log_final(self, final_dir: str | Path, artifacts: Mapping[str, str | Path], step: int = 0) -> None:
        """Log the final model folder (HF format, with its tokenizer) as the run's MLflow Model, a fill-mask
        pipeline of the transformers flavor (`orchestrator.tracking.model`), linked to the metrics of `step`,
        and each of `artifacts` (name -> file or folder, e.g. {"data_manifest": ".../manifest.json"}) under
        its name; register the model when `registered_model_name` is set. A failure is a warning, not an
        error: the model is on disk, and an offline tracker records it for a later sync."""
        from mlflow.exceptions import MlflowException

        if not self.config.enabled:
            return
        if self.run_id:
            try:
                self.send_final(final_dir, artifacts, step)
                return
            except Exception as error:
                # Refused by the store, or not MLflow's error at all (building the pipeline): not an outage.
                if is_client_error(error) or not isinstance(error, MlflowException):
                    message = redact_text(str(error))
                    warn(f"MLflow: could not log the final model (it is in {final_dir}): {message}")
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
        tags = {"error": redact_text(error)} if error else {}
        if self.mlflow_run.finished and status != "FINISHED":  # a failed resume of a finished run
            tags = {"last_resume": status + (f": {redact_text(error)}" if error else "")}
            status = "FINISHED"
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
        warn(
            f"MLflow: the tracking server {redact_text(self.tracking_uri)} does not answer "
            f"({redact_text(str(getattr(error, 'message', error)))}); training goes on without it. What it "
            f"does not get is kept in {self.run_dir.unsent} and sent when this run is next started, or by "
            f"`bert-pretrain tracking sync {self.run_dir}`."
        )

    def send_config(self, resolved: Mapping[str, Any]) -> None:
        """`log_config`, raising what the store answers (for `tracking sync`)."""
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
            warn(f"MLflow: this resume changes {', '.join(sorted(changed))}; recorded as tags.")
            self._log_tags(changed)
        self._client.log_dict(self.run_id, redact(dict(resolved)), "resolved_config.json")

    def _log_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        run_tags = [RunTag(key, value) for key, value in tags.items()]
        for start in range(0, len(run_tags), MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=run_tags[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def send_final(self, final_dir: str | Path, artifacts: Mapping[str, str | Path], step: int = 0) -> None:
        """`log_final`, raising what the store answers (for `tracking sync`)."""
        for name, path in artifacts.items():
            if Path(path).is_dir():
                self._client.log_artifacts(self.run_id, str(path), name)
            else:
                self._client.log_artifact(self.run_id, str(path), name)
        model_uri, registered = log_fill_mask_model(
            self._client,
            self.tracking_uri,
            self._client.get_run(self.run_id),
            final_dir,
            step,
            self.config.registered_model_name,
        )
        self._log_tags({MODEL_URI_TAG: model_uri, **({REGISTERED_TAG: registered} if registered else {})})


def _print_unsent(run_dir: RunDir, tracking_uri: str) -> None:
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
    say(
        f"MLflow: {what} could not be sent to {redact_text(tracking_uri)}; they are kept in "
        f"{run_dir.unsent} and sent when this run is next started, or now with: "
        f"bert-pretrain tracking sync {run_dir}"
    )
