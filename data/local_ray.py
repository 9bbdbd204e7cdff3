"""Starting Ray: join a running cluster, or start a local Ray that listens on 127.0.0.1 only.

Every command that needs Ray (`prepare`, `train`, `embed`, `eval`) and the tests start it here. Ray binds its
servers (GCS, raylet, the workers' gRPC, the object manager, the agents) to the node's IP address, which on
Linux is the machine's network address, so a laptop run would be open to its network. On macOS and Windows
Ray takes 127.0.0.1 as the node's address instead; a local start here makes that choice on every platform.
"""

from __future__ import annotations

from typing import Any


def init_ray(**kwargs: Any) -> None:
    """Connect this process to Ray once, as `ray.init(**kwargs)` does: to the cluster that RAY_ADDRESS (or
    `address`) names, or that `ray start` runs on this machine; else to a new local Ray on 127.0.0.1.
    `address="local"` always starts a new one."""
    import ray
    from ray._private import ray_constants, services

    if ray.is_initialized():
        return
    if services.canonicalize_bootstrap_address(kwargs.get("address")) is not None:
        ray.init(**kwargs)
        return
    # Ray's own switch for single-machine use (its default on macOS and Windows): the node's address is
    # 127.0.0.1, and every Ray process of the node listens there. Read while Ray starts; restored after.
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(**{**kwargs, "address": "local"})
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
