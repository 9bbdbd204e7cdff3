"""Training metrics into MLflow from the Ray Train controller, without ever holding training up.

`MetricsCallback` runs on the Train controller (the one process that talks to MLflow during training). It
turns rank 0's reports into MLflow metrics at the global step and hands them to a `MetricsSender`, whose
background thread sends them in batches. While the tracking server does not answer, metrics wait in memory
(beyond `max_buffered` they go to the run directory's unsent records) and go out once it answers again; what
is still unsent when training ends is recorded in the run directory (see `orchestrator.tracking.unsent`).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from mlflow.entities import Metric, RunTag
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from common.console import warn
from common.ray_internals import ControllerCallback, ReportCallback
from common.redact import redact_text
from orchestrator.config import MlflowConfig
from orchestrator.run_dir import RunDir
from orchestrator.tracking.client import MlflowRun, bound_mlflow_calls, is_client_error
from orchestrator.tracking.unsent import Unsent, report_metrics, save_unsent

RETRY_WAIT_S = (1.0, 10.0)  # first and longest wait between attempts while the server is away
CHECKPOINT_TAG = "checkpoint_uri"


class MetricsSender:
    """A background thread that sends metrics and tags to one MLflow run in batches.

    With no `run_id` (the server did not answer when the run started) nothing is sent: everything is
    recorded in `run_dir` when the sender closes.
    """

    def __init__(self, tracking_uri: str, run_id: str, run_dir: RunDir, max_buffered: int):
        self._tracking_uri = tracking_uri
        self._run_id = run_id
        self._run_dir = run_dir
        self._max_buffered = max_buffered
        self._buffer: collections.deque[Metric] = collections.deque()
        self._in_flight: list[Metric] = []  # the batch being sent; kept until the server takes it
        self._in_flight_tags: dict[str, str] = {}
        self._tags: dict[str, str] = {}  # latest value per key; only the last one matters
        self._closing = False
        self._abandoned = False
        self._wake = threading.Condition()
        self._thread = None
        if run_id:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri)
            self._thread = threading.Thread(target=self._send_loop, name="mlflow-metrics-sender", daemon=True)
            self._thread.start()

    def put(self, metrics: list[Metric], tags: dict[str, str] | None = None) -> None:
        """Queue metrics (and tags) to send; never waits for the server."""
        with self._wake:
            self._buffer.extend(metrics)
            self._tags |= tags or {}
            if self._thread is None:
                self._spill_if_over()
            self._wake.notify()

    def close(self, timeout_s: float) -> int:
        """Send what is queued, waiting at most `timeout_s`; record the rest in the run directory and return
        how many metrics that was."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._wake:
            self._abandoned = True
            self._wake.notify()
            unsent = Unsent([*self._in_flight, *self._buffer], self._in_flight_tags | self._tags)
            self._buffer.clear()
            self._tags = {}
        save_unsent(self._run_dir, unsent)
        if unsent.metrics:
            warn(
                f"MLflow: {len(unsent.metrics)} metrics could not be sent before training ended; kept in "
                f"{self._run_dir.unsent}"
            )
        return len(unsent.metrics)

    def _spill_if_over(self) -> None:
        """Beyond `max_buffered` metrics in memory, move them to the run directory (caller holds the lock)."""
        if len(self._buffer) > self._max_buffered:
            save_unsent(self._run_dir, Unsent(list(self._buffer)))
            self._buffer.clear()

    def _next_batch(self) -> bool:
        """Wait for something to send and move it to `_in_flight` (under the lock, so that `close` finds
        everything in one place or the other); False once closed and empty, or abandoned."""
        with self._wake:
            while not (self._buffer or self._tags or self._closing or self._abandoned):
                self._wake.wait()
            if self._abandoned or (self._closing and not (self._buffer or self._tags)):
                return False
            count = min(len(self._buffer), MAX_METRICS_PER_BATCH - len(self._tags))
            self._in_flight = [self._buffer.popleft() for _ in range(count)]
            self._in_flight_tags, self._tags = self._tags, {}
            return True

    def _send_loop(self) -> None:
        unreachable_since: float | None = None
        while self._next_batch():
            wait_s = RETRY_WAIT_S[0]
            while True:
                try:
                    self._client.log_batch(
                        self._run_id,
                        metrics=self._in_flight,
                        tags=[RunTag(key, value) for key, value in self._in_flight_tags.items()],
                        synchronous=True,
                    )
                    break
                except Exception as error:
                    if is_client_error(error):
                        refused = len(self._in_flight)
                        warn(f"MLflow refused {refused} metrics; skipped: {redact_text(str(error))}")
                        break
                    if unreachable_since is None:
                        unreachable_since = time.monotonic()
                        warn(
                            f"MLflow tracking server {redact_text(self._tracking_uri)} is not answering "
                            f"({redact_text(str(error))}); training goes on and metrics are kept until it "
                            f"answers again (in {self._run_dir.unsent} if it does not)."
                        )
                with self._wake:
                    if self._abandoned:
                        return
                    self._spill_if_over()
                    self._wake.wait(wait_s)
                wait_s = min(wait_s * 2, RETRY_WAIT_S[1])
            with self._wake:
                self._in_flight, self._in_flight_tags = [], {}
            if unreachable_since is not None:
                waited = time.monotonic() - unreachable_since
                warn(f"MLflow tracking server answers again after {waited:.0f} s; sending buffered metrics.")
                unreachable_since = None


def checkpoint_uri(checkpoint: Any) -> str:
    """A `ray.train.Checkpoint`'s location as a URI (a plain path on the local filesystem)."""
    scheme = checkpoint.filesystem.type_name
    return checkpoint.path if scheme == "local" else f"{scheme}://{checkpoint.path}"


class MetricsCallback(ControllerCallback, ReportCallback):
    """Ray Train callback that logs rank 0's reported metrics to one MLflow run at the global step.

    Ray's public `UserCallback` has no end-of-run hook, so this uses the controller hooks that Ray's own
    callbacks use, to send what is buffered when training ends or is aborted. Pickled to the controller: it
    holds only settings, and its sender starts there on the first report. With no `run_id` (the server did
    not answer when the run started), the metrics are recorded in `run_dir` for a later sync.
    """

    def __init__(self, mlflow_run: MlflowRun, run_dir: RunDir, config: MlflowConfig):
        self.tracking_uri = mlflow_run.tracking_uri
        self.run_id = mlflow_run.run_id
        self.run_dir = run_dir
        # Per metric, the last step already in MLflow: a resumed or restarted run reports some steps again,
        # and MLflow would keep both values.
        self.last_logged_steps = dict(mlflow_run.last_logged_steps)
        self.max_buffered_metrics = config.max_buffered_metrics
        self.flush_timeout_s = config.flush_timeout_s
        self._sender: MetricsSender | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sender": None}

    def after_report(self, training_report: Any, metrics: list[dict[str, Any]]) -> None:
        """Ray Train hook: all workers reported; rank 0's dict holds the global numbers and "step"."""
        self.send(metrics[0] if metrics else {}, training_report.checkpoint)

    def send(self, reported: dict[str, Any], checkpoint: Any) -> None:
        """Queue one report's metrics (and its checkpoint's URI as a tag) for the MLflow run."""
        tags = {CHECKPOINT_TAG: checkpoint_uri(checkpoint)} if checkpoint else {}
        metrics_now = report_metrics(reported, int(time.time() * 1000))
        to_send = [m for m in metrics_now if m.step > self.last_logged_steps.get(m.key, -1)]
        self.last_logged_steps |= {m.key: m.step for m in to_send}
        if to_send or tags:
            if self._sender is None:
                bound_mlflow_calls(self.flush_timeout_s)
                self._sender = MetricsSender(
                    self.tracking_uri, self.run_id, self.run_dir, self.max_buffered_metrics
                )
            self._sender.put(to_send, tags)

    def after_controller_finish(self, result: Any) -> None:
        """Ray Train hook: training is over; send what is left, waiting a bounded time."""
        self.close()

    def before_controller_abort(self) -> None:
        """Ray Train hook: the run is being aborted (Ctrl-C, a stopped job); send what is left."""
        self.close()

    def close(self) -> int:
        """Send what is buffered (at most `flush_timeout_s`); record the rest in the run directory and
        return how many metrics that was."""
        if self._sender is None:
            return 0
        sender, self._sender = self._sender, None
        return sender.close(self.flush_timeout_s)
