"""Every use of Ray's private API, in one module: a Ray upgrade that moves one touches this file only.

- Ray Train's controller callbacks and its restarting state: the public `UserCallback` has no hook at the end
  of a run nor before a restart (the metric sender flushes at the end; a worker's user error stops the run).
- Ray Train's environment switches: its controller's poll interval and its preemption watcher.
- Ray's switch for the idle workers a new local Ray starts for its first driver, and Ray Data's autoscaling
  coordinator, started early (see `start_autoscaling_coordinator`).
- Ray Train's default callbacks: a trainer whose workers use no Ray Data goes without its datasets callback.
- Ray's logging: Ray Train's per-report INFO lines (local mode's too) and Ray Data's stream notices kept off
  the console; the workers' lines printed by the driver without Ray's `(name pid=...)` prefix.
- Ray's own switch for single-machine use, and its address lookup (the local Ray on 127.0.0.1).
- Ray's driver SIGTERM handler (`sys.exit(15)`), which `ray.init` would put in place of ours.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import ray._private.utils
from ray._private import ray_constants, services
from ray._private.authentication import authentication_token_setup
from ray.train.v2._internal.constants import (
    ENABLE_PREEMPTION_WATCHER_ENV_VAR,
    HEALTH_CHECK_INTERVAL_S_ENV_VAR,
)
from ray.train.v2._internal.execution import context as train_context
from ray.train.v2._internal.execution import train_fn_utils
from ray.train.v2._internal.execution.callback import ControllerCallback, ReportCallback
from ray.train.v2._internal.execution.controller.state import RestartingState
from ray.train.v2.api import config as train_config

PRESTART_WORKERS_ENV_VAR = "RAY_prestart_worker_first_driver"
"""Ray's system setting (read by a raylet this process starts): start one idle worker process per CPU when the
first driver connects. A run's actors carry a runtime environment of their own, so none of them takes such a
worker: they only take the CPU while Ray Train starts."""

__all__ = [
    "ENABLE_PREEMPTION_WATCHER_ENV_VAR",
    "HEALTH_CHECK_INTERVAL_S_ENV_VAR",
    "PRESTART_WORKERS_ENV_VAR",
    "ControllerCallback",
    "ReportCallback",
    "RestartingState",
    "quiet_local_mode",
    "quiet_ray_console",
    "quiet_token_auth_notice",
    "worker_lines_without_prefix",
    "names_a_cluster",
    "single_machine_mode",
    "sigterm_handler_kept",
    "start_autoscaling_coordinator",
    "torch_trainer_without_ray_data",
]


def quiet_ray_console() -> None:
    """Ray Train logs every report of every rank at INFO, a long line each (our progress line says it once),
    and Ray Data notes each stream it starts and ends: keep those in Ray's log files, off the console."""
    from ray.data._internal.logging import SessionFileHandler  # ray.data only where a stream runs

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, SessionFileHandler):
            handler.setLevel(logging.ERROR)


def quiet_local_mode() -> None:
    """Ray Train's local mode (the loop in the driver's process) says so at INFO, and logs every report."""
    for module in (train_config, train_fn_utils):
        logging.getLogger(module.__name__).setLevel(logging.WARNING)


def quiet_token_auth_notice() -> None:
    """A new local Ray turns token authentication on (Ray's default) and says so at WARNING, with how to opt
    out: nothing to act on. The notice's logger keeps ERROR (an error about a missing token still shows)."""
    logging.getLogger(authentication_token_setup.__name__).setLevel(logging.ERROR)


def worker_lines_without_prefix() -> None:
    """Before `ray.init`: the driver prints its workers' lines as they are, without the `(RayTrainWorker
    pid=1234)` prefix and the colour codes around it (Ray's RAY_DISABLE_WORKER_LOG_PREFIX, read when Ray is
    imported, set here after the fact). Only rank 0 writes the progress lines, so the prefix says nothing."""
    ray_constants.RAY_DISABLE_WORKER_LOG_PREFIX = True


def names_a_cluster(address: str | None) -> bool:
    """Whether `ray.init(address=...)` would join a cluster: the address (or RAY_ADDRESS) names one, or
    `ray start` runs on this machine."""
    return services.canonicalize_bootstrap_address(address) is not None


@contextlib.contextmanager
def single_machine_mode() -> Iterator[None]:
    """While Ray starts: its own switch for single-machine use (its default on macOS and Windows), under
    which the node's address is 127.0.0.1 and every Ray process of the node listens there."""
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextlib.contextmanager
def sigterm_handler_kept() -> Iterator[None]:
    """While `ray.init` runs: it would set a SIGTERM handler of its own (`sys.exit(15)`), and a stop signal
    then would not be Ctrl-C for the command that starts Ray."""
    set_handler = ray._private.utils.set_sigterm_handler
    ray._private.utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ray._private.utils.set_sigterm_handler = set_handler


def start_autoscaling_coordinator() -> None:
    """Start Ray Data's autoscaling coordinator now, without waiting for it: a named detached actor that Ray
    Train's controller creates (or finds) and then waits on while its process starts, before it starts the
    workers. Started from the driver, its process starts beside the controller's instead of after it."""
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    get_or_create_autoscaling_coordinator()


def torch_trainer_without_ray_data(*args: Any, **kwargs: Any) -> Any:
    """`TorchTrainer(*args, **kwargs)` for workers that use no Ray Data at all (no datasets, no streams of
    their own): without Ray Train's datasets callback, which starts a DatasetManager actor for every fit (a
    process that imports Ray Data, a second or more of CPU while the workers start) and hands the driver's
    Ray Data context to the workers. Imported here, not at the top: this module stays free of torch."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback

    class TorchTrainerWithoutRayData(TorchTrainer):
        def _create_default_callbacks(self) -> list:
            callbacks = super()._create_default_callbacks()
            return [callback for callback in callbacks if not isinstance(callback, DatasetsCallback)]

    return TorchTrainerWithoutRayData(*args, **kwargs)
