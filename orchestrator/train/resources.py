"""What a run needs from the cluster, worked out before it starts.

The resource check compares the workers' CPUs/GPUs plus the CPUs kept for Ray Data with what
the cluster has, so that a run that could never be placed is refused at once instead of waiting forever.
"""

from __future__ import annotations

from common.errors import UserError
from orchestrator.config import ScalingConfig


def required_resources(scaling: ScalingConfig) -> dict[str, float]:
    """Cluster-wide totals a run cannot start without: its fewest workers, plus the CPUs kept for Ray Data."""
    workers = scaling.fewest_workers
    need = {"CPU": workers * scaling.cpus_per_worker + scaling.data_cpus}
    if scaling.use_gpu:
        need["GPU"] = float(workers)
    return need


def ray_worker_count(scaling: ScalingConfig, cluster: dict[str, float]) -> int | tuple[int, int]:
    """`num_workers` for Ray Train's ScalingConfig: the fixed count, or (min, max) for an elastic run.

    Ray Train's elastic policy takes all the workers' resources it can find. On CPUs that would leave none
    for Ray Data, whose tasks would then wait forever, so a CPU run's maximum is capped to what fits beside
    `data_cpus` in the cluster it starts on."""
    if not scaling.elastic:
        return scaling.num_workers
    most = scaling.num_workers
    if not scaling.use_gpu:
        fits = int((cluster.get("CPU", 0.0) - scaling.data_cpus) // scaling.cpus_per_worker)
        most = max(scaling.fewest_workers, min(most, fits))
    return (scaling.fewest_workers, most) if most > scaling.fewest_workers else most


def check_resources(scaling: ScalingConfig, cluster: dict[str, float], nodes: list[dict[str, float]]) -> None:
    """Refuse (UserError) a run whose needs exceed the cluster's totals, or whose worker fits on no node.

    `cluster` is `ray.cluster_resources()`; `nodes` the `Resources` of each alive node of `ray.nodes()`.
    A cluster that autoscales may grow later: this check sees the nodes that are up now.
    """
    missing = []
    for resource, amount in required_resources(scaling).items():
        have = cluster.get(resource, 0.0)
        if amount > have + 1e-9:
            missing.append(f"{amount - have:g} {resource} (it needs {amount:g}, the cluster has {have:g})")
    per_worker = {"CPU": scaling.cpus_per_worker, **({"GPU": 1.0} if scaling.use_gpu else {})}
    if not missing and not any(all(node.get(k, 0.0) >= v for k, v in per_worker.items()) for node in nodes):
        missing.append(f"a node with {per_worker} for one worker")
    if missing:
        raise UserError(
            f"the run needs {scaling.fewest_workers} workers x {scaling.cpus_per_worker:g} CPU"
            f"{' + 1 GPU' if scaling.use_gpu else ''} plus {scaling.data_cpus:g} CPU for Ray Data, "
            f"but this can never be met: missing {'; '.join(missing)}. "
            "Use fewer workers (--num-workers), lower scaling.cpus_per_worker / scaling.data_cpus"
            f"{', or --cpu' if scaling.use_gpu else ''}, or add nodes."
        )
