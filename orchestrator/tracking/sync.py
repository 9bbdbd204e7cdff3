"""`bert-pretrain tracking sync RUN_DIR`: send what a run kept while its tracking server did not answer."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from common import storage
from common.errors import UserError
from common.redact import REDACTED
from data.manifest import MANIFEST_FILE, load_manifest
from orchestrator.config import config_from_dict
from orchestrator.run_dir import RunDir
from orchestrator.tracking.client import (
    MlflowRun,
    bound_mlflow_calls,
    find_or_create_run,
    resolve_tracking_uri,
    store_error,
)
from orchestrator.tracking.dataset import log_dataset, prepared_dataset
from orchestrator.tracking.run import RunTracker
from orchestrator.tracking.unsent import forget_unsent, load_unsent, save_reports, send_unsent


@dataclass(frozen=True)
class Synced:
    metrics: int = 0
    """Metrics sent (those the MLflow run already had are left out)."""
    others: tuple[str, ...] = ()
    """What else was sent: "tags", "the final model", "the end status"."""
    link: str = ""
    """Where to see the run ("" when nothing was kept unsent)."""


def sync_run(run_dir: RunDir, tracking_uri: str = "", reports: Sequence[dict] = ()) -> Synced:
    """Send what `run_dir` keeps unsent (metrics, tags, the final model, the end status) and the dataset
    input (the run's prepared data, when it is there), and the metrics of
    `reports` (those of the run's newest checkpoint) that the MLflow run lacks, creating the run when no
    start reached the server. The tracking store is the one in run.json's config unless `tracking_uri` is
    given."""
    saved = run_dir.read_run_json()
    if "config" not in saved:
        raise UserError(f"{run_dir} is not a run directory (no run.json with a config): give STORAGE/RUN")
    job = config_from_dict(saved["config"])  # this process's one parse of the run's config
    config = dataclasses.replace(job.mlflow, tracking_uri=tracking_uri or job.mlflow.tracking_uri)
    save_reports(run_dir, reports)
    unsent, files = load_unsent(run_dir)
    if not files:
        return Synced()
    resolved_uri = resolve_tracking_uri(config)
    if REDACTED in resolved_uri:
        raise UserError(
            f"run.json keeps the tracking URI without its credentials ({resolved_uri}): pass it with "
            "--tracking-uri, or set MLFLOW_TRACKING_URI (or MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD)"
        )
    bound_mlflow_calls(config.flush_timeout_s)
    try:
        client, run, _ = find_or_create_run(config, run_dir, resolved_uri)
        tracker = RunTracker(
            config, run_dir, MlflowRun(resolved_uri, run.info.run_id, run.info.experiment_id)
        )
        tracker.send_config(saved["config"])
        manifest = storage.join(job.data.prepared_dir, MANIFEST_FILE)
        if storage.is_file(manifest):
            dataset = prepared_dataset(job.data.prepared_dir, load_manifest(job.data.prepared_dir))
            log_dataset(client, tracker.run_id, dataset)
        sent = send_unsent(client, tracker.run_id, unsent)
        if unsent.final_model:
            with storage.local_input(run_dir.final) as final_dir:
                tracker.send_final(
                    final_dir,
                    {"data_manifest": manifest} if storage.is_file(manifest) else {},
                    saved.get("plan", {}).get("total_steps", 0),
                )
        if unsent.end_status:
            client.set_terminated(tracker.run_id, unsent.end_status)
    except UserError:
        raise
    except Exception as error:
        raise store_error(error, resolved_uri) from None
    forget_unsent(files)
    others = (
        ("tags", unsent.tags),
        ("the final model", unsent.final_model),
        ("the end status", unsent.end_status),
    )
    return Synced(sent, tuple(name for name, kept in others if kept), tracker.link)
