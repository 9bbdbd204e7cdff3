"""What MLflow did not get, kept in the run directory until it can be sent.

While the tracking server does not answer, training goes on. The metrics, tags, end status and final model
that could not be sent are recorded as JSON files in the run directory's `mlflow_unsent/`, one file per
writer and moment (never appended to: the run directory may be a bucket). They are sent when the run is next
started or resumed, or by `bert-pretrain tracking sync RUN_DIR`, and each file is deleted once sent.

Every metric arrives exactly once: MLflow keeps every value it is sent, so before sending, the metrics the
run already has (a batch the server took just before it stopped answering) are left out by (key, step),
and of the same (key, step) recorded twice (a step trained again after a failure) the first is sent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from mlflow.entities import Metric, RunTag
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from common import storage
from orchestrator.run_dir import RunDir
from orchestrator.tracking.names import mlflow_metric_key


@dataclass
class Unsent:
    metrics: list[Metric] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    end_status: str | None = None
    """FINISHED, FAILED or KILLED: how the run ended, when the server did not hear it."""
    final_model: bool = False
    """The final model (run_dir/final) and the data manifest are still to be logged."""

    def __bool__(self) -> bool:
        return bool(self.metrics or self.tags or self.end_status or self.final_model)

    def to_json(self) -> str:
        metrics = [[m.key, m.value, m.timestamp, m.step] for m in self.metrics]
        return json.dumps(
            {
                "metrics": metrics,
                "tags": self.tags,
                "end_status": self.end_status,
                "final_model": self.final_model,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Unsent:
        raw = json.loads(text)
        metrics = [
            # Recorded by an earlier version, a metric may carry a bare section (`train/loss`): sent as now.
            Metric(mlflow_metric_key(key), value, timestamp, step)
            for key, value, timestamp, step in raw["metrics"]
        ]
        return cls(metrics, raw["tags"], raw["end_status"], raw["final_model"])


def report_metrics(reported: dict[str, Any], timestamp_ms: int) -> list[Metric]:
    """The numbers of one of rank 0's reports as MLflow metrics at its "step" (none without a step), under
    their MLflow names (`orchestrator.tracking.names.mlflow_metric_key`)."""
    step = reported.get("step")
    if step is None:
        return []
    return [
        Metric(mlflow_metric_key(key), float(value), timestamp_ms, int(step))
        for key, value in reported.items()
        if key != "step" and isinstance(value, Real) and not isinstance(value, bool)
    ]


def save_reports(run_dir: RunDir, reports: Sequence[dict[str, Any]]) -> None:
    """Record the metrics of rank 0's reports (kept in a checkpoint) as unsent: sent where the run lacks
    them, as Ray Train may not have taken them in before an interrupt."""
    save_unsent(
        run_dir, Unsent([m for r in reports for m in report_metrics(r["metrics"], r["timestamp_ms"])])
    )


def save_unsent(run_dir: RunDir, unsent: Unsent) -> None:
    """Record `unsent` in the run directory (nothing when it is empty)."""
    if unsent:
        # Names sort in the order written, so that merging keeps the first value of a (key, step).
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        storage.write_text(storage.join(run_dir.unsent, name), unsent.to_json())


def load_unsent(run_dir: RunDir) -> tuple[Unsent, list[str]]:
    """Everything recorded as unsent, merged (the first value of each (key, step); the latest tags, end status
    and final-model flag), and the files it came from."""
    names = [name for name in storage.list_files(run_dir.unsent) if name.endswith(".json")]
    merged, seen = Unsent(), set()
    for name in names:
        unsent = Unsent.from_json(storage.read_text(storage.join(run_dir.unsent, name)))
        for metric in unsent.metrics:
            if (metric.key, metric.step) not in seen:
                seen.add((metric.key, metric.step))
                merged.metrics.append(metric)
        merged.tags |= unsent.tags
        merged.end_status = unsent.end_status or merged.end_status
        merged.final_model = merged.final_model or unsent.final_model
    return merged, [storage.join(run_dir.unsent, name) for name in names]


def send_unsent(client, run_id: str, unsent: Unsent) -> int:
    """Send the recorded metrics and tags to run `run_id`, leaving out the metrics it already has; return how
    many metrics were sent."""
    logged = {
        (key, metric.step)
        for key in {m.key for m in unsent.metrics}
        for metric in client.get_metric_history(run_id, key)
    }
    metrics = [m for m in unsent.metrics if (m.key, m.step) not in logged]
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH], synchronous=True)
    tags = [RunTag(key, value) for key, value in unsent.tags.items()]
    for start in range(0, len(tags), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=tags[start : start + MAX_PARAMS_TAGS_PER_BATCH], synchronous=True)
    return len(metrics)


def forget_unsent(files: list[str]) -> None:
    """Delete the records once what they hold has been sent."""
    for path in files:
        storage.remove_file(path)
