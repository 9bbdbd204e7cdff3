"""System metrics of every node that holds a worker, in the training run's MLflow run.

The worker of local rank 0 on each node runs one MLflow `SystemMetricsMonitor` for its node (CPU, memory,
disk, network, and per GPU its utilisation and memory where NVML sees GPUs), writing to the run with the
node's name in the key: `system/<node>/cpu_utilization_percentage`,
`system/<node>/gpu_0_utilization_percentage`.
A node is named by its address and the start of its Ray node id (`10.0.3.17-3f9a1c`), as `ray status` and
the dashboard show them; the id tells apart Ray nodes that share an address.

It samples every `mlflow.system_metrics_interval_s` (10 s by default) in a thread of its own, which alone
talks to the tracking server: training never waits for it, nor for a server that does not answer (its calls
are bounded, and a monitor that cannot reach the run stops, quietly: the node's metrics are not kept for a
later sync). `mlflow.log_system_metrics=false` turns it off.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from orchestrator.tracking.client import bound_mlflow_calls

STOP_WAIT_S = 10.0  # the most the end of training waits for the monitor's last batch


@dataclass(frozen=True)
class SystemMetricsTarget:
    """Where the node monitors write: handed to every worker (None when system metrics are off)."""

    tracking_uri: str
    run_id: str
    interval_s: float
    flush_timeout_s: float


def node_name() -> str:
    """This Ray node's address and the first 6 hex digits of its node id."""
    import ray

    return f"{ray.util.get_node_ip_address()}-{ray.get_runtime_context().get_node_id()[:6]}"


class NodeMonitor:
    """One MLflow system metrics monitor for this node, started and stopped without waiting on the server."""

    def __init__(self, target: SystemMetricsTarget, node: str):
        self.target, self.node = target, node
        self._monitor = None
        self._stopped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._start, name="mlflow-system-metrics-start", daemon=True)

    def start(self) -> NodeMonitor:
        self._thread.start()
        return self

    def _start(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        bound_mlflow_calls(self.target.flush_timeout_s)
        # MLflow says at INFO that it starts and stops, at WARNING that a machine without NVIDIA GPUs has no
        # GPU metrics, and that it stops when the tracking server does not answer (with the server's address,
        # credentials included): none of it is for the console or the logs.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)
        monitor = SystemMetricsMonitor(
            self.target.run_id,
            sampling_interval=self.target.interval_s,
            resume_logging=True,  # after a restart, go on at the step after the last one logged
            node_id=self.node,
            tracking_uri=self.target.tracking_uri,
        )
        with self._lock:
            if self._stopped:
                return
            self._monitor = monitor
            monitor.start()

    def stop(self) -> None:
        """Stop sampling and send the last batch, waiting at most STOP_WAIT_S."""
        with self._lock:
            self._stopped = True
            monitor = self._monitor
        if monitor is not None:
            finishing = threading.Thread(target=monitor.finish, name="mlflow-system-metrics-end", daemon=True)
            finishing.start()
            finishing.join(STOP_WAIT_S)


def start_node_monitor(target: SystemMetricsTarget | None, local_rank: int) -> NodeMonitor | None:
    """On local rank 0 of a node, when system metrics are on: this node's monitor, started."""
    if target is None or local_rank != 0:
        return None
    return NodeMonitor(target, node_name()).start()
