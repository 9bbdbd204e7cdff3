"""Training metrics into MLflow from the Ray Train controller, without ever holding training up.

`MetricsCallback` runs on the Train controller (the one process that talks to MLflow during training). It
turns rank 0's reports into MLflow metrics at the global step and hands them to a `MetricsSender`, whose
background thread sends them in batches. While the tracking server does not answer, metrics wait in a bounded
buffer (the oldest dropped beyond it) and go out once it answers again.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from numbers import Real
from typing import Any

from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_METRICS_PER_BATCH
from ray.train.v2._internal.execution.callback import ControllerCallback, ReportCallback

logger = logging.getLogger(__name__)

# MLflow's own HTTP retries would hold a batch for minutes; the sender retries on its own schedule instead.
# Set only in the process that sends metrics, and only where the user has not chosen values.
HTTP_SETTINGS_FOR_SENDER = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
RETRY_WAIT_S = (1.0, 10.0)  # first and longest wait between attempts while the server is away
CHECKPOINT_TAG = "checkpoint_uri"


def is_client_error(error: Exception) -> bool:
    """Whether MLflow refused the data itself (retrying cannot help), rather than failing to answer."""
    if not isinstance(error, MlflowException):
        return False
    status = error.get_http_status_code()
    return 400 <= status < 500 and status != 429


class MetricsSender:
    """A background thread that sends metrics and tags to one MLflow run in batches."""

    def __init__(self, tracking_uri: str, run_id: str, max_buffered: int):
        from mlflow import MlflowClient

        for name, value in HTTP_SETTINGS_FOR_SENDER.items():
            os.environ.setdefault(name, value)
        self._client = MlflowClient(tracking_uri)
        self._run_id = run_id
        self._buffer: collections.deque[Metric] = collections.deque(maxlen=max_buffered)
        self._in_flight: list[Metric] = []  # the batch being sent; kept until the server takes it
        self._tags: dict[str, str] = {}  # latest value per key; only the last one matters
        self._dropped = 0
        self._closing = False
        self._abandoned = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._send_loop, name="mlflow-metrics-sender", daemon=True)
        self._thread.start()

    def put(self, metrics: list[Metric], tags: dict[str, str] | None = None) -> None:
        """Queue metrics (and tags) to send; never waits for the server."""
        with self._wake:
            for metric in metrics:
                if len(self._buffer) == self._buffer.maxlen:
                    if not self._dropped:
                        logger.warning(
                            "MLflow metrics buffer is full (%d); dropping the oldest until the tracking "
                            "server answers.",
                            self._buffer.maxlen,
                        )
                    self._dropped += 1
                self._buffer.append(metric)
            self._tags |= tags or {}
            self._wake.notify()

    def close(self, timeout_s: float) -> int:
        """Send what is queued, waiting at most `timeout_s`; returns how many metrics were left unsent."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout_s)
        with self._wake:
            self._abandoned = True
            self._wake.notify()
            unsent = len(self._buffer) + len(self._in_flight)
        if unsent:
            logger.warning("MLflow: %d metrics could not be sent before the run ended.", unsent)
        if self._dropped:
            logger.warning("MLflow: %d metrics were dropped while the server was away.", self._dropped)
        return unsent

    def _next_batch(self) -> tuple[list[Metric], dict[str, str]] | None:
        """Wait for something to send; None once closed and empty, or abandoned."""
        with self._wake:
            while not (self._buffer or self._tags or self._closing or self._abandoned):
                self._wake.wait()
            if self._abandoned or (self._closing and not (self._buffer or self._tags)):
                return None
            count = min(len(self._buffer), MAX_METRICS_PER_BATCH - len(self._tags))
            batch = [self._buffer.popleft() for _ in range(count)]
            tags, self._tags = self._tags, {}
            return batch, tags

    def _send_loop(self) -> None:
        unreachable_since: float | None = None
        while (work := self._next_batch()) is not None:
            self._in_flight, tags = work
            wait_s = RETRY_WAIT_S[0]
            while True:
                try:
                    self._client.log_batch(
                        self._run_id,
                        metrics=self._in_flight,
                        tags=[RunTag(key, value) for key, value in tags.items()],
                        synchronous=True,
                    )
                    break
                except Exception as error:
                    if is_client_error(error):
                        logger.warning("MLflow refused %d metrics; skipped: %s", len(self._in_flight), error)
                        break
                    if unreachable_since is None:
                        unreachable_since = time.monotonic()
                        logger.warning(
                            "MLflow tracking server is not answering (%s); training goes on and metrics are "
                            "kept (up to %d) until it answers again.",
                            error,
                            self._buffer.maxlen,
                        )
                with self._wake:
                    if self._abandoned:
                        return
                    self._wake.wait(wait_s)
                wait_s = min(wait_s * 2, RETRY_WAIT_S[1])
            self._in_flight = []
            if unreachable_since is not None:
                logger.warning(
                    "MLflow tracking server answers again after %.0f s; sending buffered metrics.",
                    time.monotonic() - unreachable_since,
                )
                unreachable_since = None


def checkpoint_uri(checkpoint: Any) -> str:
    """A `ray.train.Checkpoint`'s location as a URI (a plain path on the local filesystem)."""
    scheme = checkpoint.filesystem.type_name
    return checkpoint.path if scheme == "local" else f"{scheme}://{checkpoint.path}"


class MetricsCallback(ControllerCallback, ReportCallback):
    """Ray Train callback that logs rank 0's reported metrics to one MLflow run at the global step.

    Ray's public `UserCallback` has no end-of-run hook, so this uses the controller hooks that Ray's own
    callbacks use, to send what is buffered when training ends or is aborted. Pickled to the controller: it
    holds only settings, and its sender starts there on the first report.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        last_logged_steps: dict[str, int],
        max_buffered_metrics: int,
        flush_timeout_s: float,
    ):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        # Per metric, the last step already in MLflow: a resumed or restarted run reports some steps again,
        # and MLflow would keep both values.
        self.last_logged_steps = dict(last_logged_steps)
        self.max_buffered_metrics = max_buffered_metrics
        self.flush_timeout_s = flush_timeout_s
        self._sender: MetricsSender | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sender": None}

    def after_report(self, training_report: Any, metrics: list[dict[str, Any]]) -> None:
        """Ray Train hook: all workers reported; rank 0's dict holds the global numbers and "step"."""
        reported = metrics[0] if metrics else {}
        checkpoint = training_report.checkpoint
        tags = {CHECKPOINT_TAG: checkpoint_uri(checkpoint)} if checkpoint else {}
        step = reported.get("step")
        if step is None and not tags:
            return
        timestamp_ms = int(time.time() * 1000)
        to_send = []
        for key, value in reported.items():
            if key == "step" or step is None or not isinstance(value, Real) or isinstance(value, bool):
                continue
            if step <= self.last_logged_steps.get(key, -1):
                continue
            self.last_logged_steps[key] = int(step)
            to_send.append(Metric(key, float(value), timestamp_ms, int(step)))
        if to_send or tags:
            if self._sender is None:
                self._sender = MetricsSender(self.tracking_uri, self.run_id, self.max_buffered_metrics)
            self._sender.put(to_send, tags)

    def after_controller_finish(self, result: Any) -> None:
        """Ray Train hook: training is over; send what is left, waiting a bounded time."""
        self.close()

    def before_controller_abort(self) -> None:
        """Ray Train hook: the run is being aborted (Ctrl-C, a stopped job); send what is left."""
        self.close()

    def close(self) -> int:
        """Send what is buffered (at most `flush_timeout_s`); returns how many metrics were left unsent."""
        if self._sender is None:
            return 0
        sender, self._sender = self._sender, None
        return sender.close(self.flush_timeout_s)
