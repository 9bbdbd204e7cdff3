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

    from common.ray_internals import names_a_cluster, single_machine_mode
    from common.signals import kept_through_ray_start

    if ray.is_initialized():
        return
    with kept_through_ray_start():
        if names_a_cluster(kwargs.get("address")):
            ray.init(**kwargs)
        else:
            with single_machine_mode():
                ray.init(**{**kwargs, "address": "local"})
