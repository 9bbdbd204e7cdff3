"""Starting Ray: join a running cluster, or start a local Ray that listens on 127.0.0.1 only.

Every command that needs Ray (`prepare`, `train`, `embed`, `eval`) and the tests start it here. Ray binds its
servers (GCS, raylet, the workers' gRPC, the object manager, the agents) to the node's IP address, which on
Linux is the machine's network address, so a laptop run would be open to its network. On macOS and Windows
Ray takes 127.0.0.1 as the node's address instead; a local start here makes that choice on every platform.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

GCS_PORT_ENV_VAR = "RAY_GCS_SERVER_PORT"
RAY_ADDRESS_ENV_VAR = "RAY_ADDRESS"


def init_ray(**kwargs: Any) -> None:
    """Connect this process to Ray once, as `ray.init(**kwargs)` does: to the cluster that RAY_ADDRESS (or
    `address`) names, or that `ray start` runs on this machine; else to a new local Ray on 127.0.0.1.
    `address="local"` always starts a new one.

    The console gets no start-up lines a person need not act on: Ray's INFO lines in this process ("Started
    a local Ray instance", "Connecting to existing Ray cluster") are off unless `logging_level` says
    otherwise, a local Ray takes token authentication (Ray's default for it) without the warning that says
    so, and the workers' lines come without Ray's `(RayTrainWorker pid=...)` prefix and its colour codes."""
    import ray

    from common.ray_internals import (
        ENABLE_PREEMPTION_WATCHER_ENV_VAR,
        names_a_cluster,
        quiet_token_auth_notice,
        single_machine_mode,
        worker_lines_without_prefix,
    )
    from common.signals import kept_through_ray_start

    if ray.is_initialized():
        return
    kwargs.setdefault("logging_level", logging.WARNING)
    quiet_token_auth_notice()
    worker_lines_without_prefix()
    with kept_through_ray_start():
        if names_a_cluster(kwargs.get("address")):
            ray.init(**kwargs)
            return
        # A new local Ray's node is never drained: no Ray Train preemption watcher (an actor less to start,
        # and no error line from Ray about its restart arguments).
        os.environ.setdefault(ENABLE_PREEMPTION_WATCHER_ENV_VAR, "0")
        with single_machine_mode(), _gcs_port() as port:
            if kwargs.get("include_dashboard") is not False:
                kwargs["runtime_env"] = _with_address(kwargs.get("runtime_env"), f"127.0.0.1:{port}")
            ray.init(**{**kwargs, "address": "local"})


@contextlib.contextmanager
def _gcs_port() -> Iterator[int]:
    """A free port for the new Ray's GCS (Ray's RAY_GCS_SERVER_PORT, set while Ray starts), so that its
    address is known before it starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    saved = os.environ.get(GCS_PORT_ENV_VAR)
    os.environ[GCS_PORT_ENV_VAR] = str(port)
    try:
        yield port
    finally:
        if saved is None:
            os.environ.pop(GCS_PORT_ENV_VAR, None)
        else:
            os.environ[GCS_PORT_ENV_VAR] = saved


def _with_address(runtime_env: dict | None, address: str) -> dict:
    """The job's runtime environment with RAY_ADDRESS naming this Ray for its workers. Ray Train's placement
    group cleaner asks the State API about the controller, and without an address it looks for the Ray of
    this machine: when another Ray runs here (a second training, a test session) it finds two and its thread
    dies with a traceback on the console."""
    runtime_env = dict(runtime_env or {})
    runtime_env["env_vars"] = {RAY_ADDRESS_ENV_VAR: address, **runtime_env.get("env_vars", {})}
    return runtime_env
