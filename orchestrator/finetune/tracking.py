"""The MLflow record of a fine-tuning call: one parent run, and a nested child run per seed.

The parent goes in the experiment of the model's pretraining run when the model is a run's final/ or one of
its checkpoints (the run directory's run.json names its MLflow run) and no experiment is named, else in the
named one (default bert-pretrain's); it is tagged with the pretraining run's id and link whenever this store
has that run. It holds the settings, the best model's scores (`eval/...`), the medians
over the seeds (`median/...`) and the model. Each seed's child run (tag `mlflow.parentRunId`) gets its curves
live from the Ray Train controller, through train/'s `MetricsCallback`. With tracking off, every method does
nothing. The store is the one `train` uses (`resolve_tracking_uri`: the embedded SQLite `mlflow.db` in the
working directory by default), every call bounded (`bound_mlflow_calls`).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping
from typing import Any

from common import storage
from common.console import warn
from common.errors import UserError
from common.redact import redact_text
from orchestrator.config import MlflowConfig
from orchestrator.run_dir import RunDir
from orchestrator.tracking.client import (
    RUN_ID_KEY,
    MlflowRun,
    bound_mlflow_calls,
    experiment_id,
    resolve_tracking_uri,
    run_link,
    store_error,
)
from orchestrator.tracking.names import mark_model_training, mlflow_metric_key
from orchestrator.tracking.tags import git_commit

PARENT_TAG = "mlflow.parentRunId"
PRETRAINING_RUN_TAG = "pretraining_run_id"
PRETRAINING_LINK_TAG = "pretraining_run_link"


def pretraining_run_id(model_path: str) -> str | None:
    """The MLflow run id of the pretraining run whose final/ or checkpoint `model_path` is, if any."""
    parent = posixpath.dirname(str(model_path).rstrip("/"))
    if not parent:
        return None
    try:
        return RunDir.at(parent).read_run_json().get(RUN_ID_KEY)
    except (OSError, ValueError, UserError):  # no run directory there, or one that cannot be read
        return None


class FinetuneTracker:
    def __init__(self, config: MlflowConfig, tracking_uri: str = "", client=None, run=None):
        self.config = config
        self.tracking_uri = tracking_uri
        self._client = client
        self.run_id = run.info.run_id if run is not None else ""
        self.experiment_id = run.info.experiment_id if run is not None else ""

    @classmethod
    def open(
        cls, config: MlflowConfig, model_path: str, run_name: str, experiment: str = ""
    ) -> FinetuneTracker:
        """Create the parent run (see the module docstring) in `experiment`, "" for the pretraining run's
        (else config.experiment_name); a store that refuses it is a UserError."""
        if not config.enabled:
            return cls(config)
        from mlflow import MlflowClient

        bound_mlflow_calls(config.flush_timeout_s)
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        tracking_uri = resolve_tracking_uri(config)
        tags = {"git_commit": commit} if (commit := git_commit()) else {}
        try:
            client = MlflowClient(tracking_uri)
            pretraining = pretraining_run_id(model_path)
            pretraining_experiment = _experiment_of(client, pretraining) if pretraining else None
            if pretraining_experiment is not None:
                tags[PRETRAINING_RUN_TAG] = pretraining
                tags[PRETRAINING_LINK_TAG] = run_link(tracking_uri, pretraining_experiment, pretraining)
            chosen = None if experiment else pretraining_experiment
            if chosen is None:
                named = MlflowConfig(experiment_name=experiment or config.experiment_name)
                chosen = experiment_id(client, named, tracking_uri)
            mark_model_training(client, chosen)
            run = client.create_run(chosen, run_name=run_name, tags=tags)
        except Exception as error:
            raise store_error(error, tracking_uri) from None
        return cls(config, tracking_uri, client, run)

    @property
    def link(self) -> str:
        return run_link(self.tracking_uri, self.experiment_id, self.run_id) if self.run_id else ""

    def child(self, seed: int, run_dir: RunDir) -> tuple[str, Any]:
        """(child run id, the Ray Train callback that logs the seed's curves to it); ("", None) with
        tracking off."""
        if not self.run_id:
            return "", None
        child = self._client.create_run(
            self.experiment_id, run_name=f"seed {seed}", tags={PARENT_TAG: self.run_id, "seed": str(seed)}
        )
        from orchestrator.tracking.metrics import MetricsCallback  # imports mlflow: only when tracking

        mlflow_run = MlflowRun(self.tracking_uri, child.info.run_id, self.experiment_id)
        return child.info.run_id, MetricsCallback(mlflow_run, run_dir, self.config)

    def log(
        self,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        if not run_id:  # tracking off: mlflow not even imported (about a second)
            return
        from mlflow.entities import Metric, Param, RunTag

        self._guarded(
            self._client.log_batch,
            run_id,
            metrics=[Metric(mlflow_metric_key(k), float(v), 0, 0) for k, v in (metrics or {}).items()],
            params=[Param(k, redact_text(str(v))[:6000]) for k, v in (params or {}).items()],
            tags=[RunTag(k, redact_text(str(v))[:5000]) for k, v in (tags or {}).items()],
        )

    def log_model(self, final_dir: str) -> None:
        """The final model folder as the parent's `model/` artifacts."""
        if self.run_id:
            with storage.local_input(final_dir) as local:
                self._guarded(self._client.log_artifacts, self.run_id, local, "model")

    def end(self, run_id: str, status: str) -> None:
        if run_id:
            self._guarded(self._client.set_terminated, run_id, status)

    def _guarded(self, call, *args, **kwargs) -> None:
        """A failure to record is a warning: the model is on disk whatever MLflow answers."""
        try:
            call(*args, **kwargs)
        except Exception as error:
            warn(f"MLflow: {getattr(call, '__name__', 'a call')} failed: {redact_text(str(error))}")


def _experiment_of(client, run_id: str) -> str | None:
    """The experiment of run `run_id` in this store (None, with a warning, when the store lacks it)."""
    try:
        return client.get_run(run_id).info.experiment_id
    except Exception:
        warn(f"MLflow: the pretraining run {run_id} is not in this tracking store; not linked to it")
        return None
