"""What a run needs from the cluster, worked out before it starts.

The batch plan splits the run's global batch over the workers (per-worker batch, micro batch, accumulation);
the resource check compares the workers' CPUs/GPUs plus the CPUs kept for Ray Data with what the cluster has,
so that a run that could never be placed is refused at once instead of waiting forever.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.cli import UserError
from orchestrator.config import ScalingConfig


@dataclass(frozen=True)
class BatchPlan:
    global_batch_size: int
    num_workers: int
    per_worker_batch_size: int
    """Examples each worker contributes to one optimizer step."""
    micro_batch_size: int
    """Examples in one forward/backward."""
    accumulation_steps: int
    """Micro-steps per optimizer step on each worker."""


def plan_batches(global_batch_size: int, max_micro_batch_size: int, num_workers: int) -> BatchPlan:
    """Split the global batch: the worker count must divide it; the micro batch is the largest divisor of the
    per-worker batch not above `max_micro_batch_size`, so every micro-step has the same size."""
    if global_batch_size % num_workers:
        counts = [n for n in range(1, min(global_batch_size, 1024) + 1) if global_batch_size % n == 0]
        raise UserError(
            f"{num_workers} workers do not divide train.global_batch_size={global_batch_size}; "
            f"worker counts that do: {', '.join(map(str, counts))}"
        )
    per_worker = global_batch_size // num_workers
    micro = max(d for d in range(1, min(per_worker, max_micro_batch_size) + 1) if per_worker % d == 0)
    return BatchPlan(global_batch_size, num_workers, per_worker, micro, per_worker // micro)


def required_resources(scaling: ScalingConfig) -> dict[str, float]:
    """Cluster-wide totals the run holds while it trains: the workers, plus the CPUs kept for Ray Data."""
    need = {"CPU": scaling.num_workers * scaling.cpus_per_worker + scaling.data_cpus}
    if scaling.use_gpu:
        need["GPU"] = float(scaling.num_workers)
    return need


def check_resources(scaling: ScalingConfig, cluster: dict[str, float], nodes: list[dict[str, float]]) -> None:
    """Refuse (UserError) a run whose needs exceed the cluster's totals, or whose worker fits on no node.

    `cluster` is `ray.cluster_resources()`; `nodes` the `Resources` of each alive node of `ray.nodes()`.
    A cluster that autoscales may grow later: this check sees the nodes that are up now.
    """
    missing = []
    for resource, amount in required_resources(scaling).items():
        have = cluster.get(resource, 0.0)
        if amount > have + 1e-9:
            missing.append(f"{amount:g} {resource} (the cluster has {have:g})")
    per_worker = {"CPU": scaling.cpus_per_worker, **({"GPU": 1.0} if scaling.use_gpu else {})}
    if not missing and not any(all(node.get(k, 0.0) >= v for k, v in per_worker.items()) for node in nodes):
        missing.append(f"a node with {per_worker} for one worker")
    if missing:
        raise UserError(
            f"the run needs {scaling.num_workers} workers x {scaling.cpus_per_worker:g} CPU"
            f"{' + 1 GPU' if scaling.use_gpu else ''} plus {scaling.data_cpus:g} CPU for Ray Data, "
            f"but this can never be met: missing {'; '.join(missing)}. "
            "Use fewer workers (--num-workers), lower scaling.cpus_per_worker / scaling.data_cpus"
            f"{', or --cpu' if scaling.use_gpu else ''}, or add nodes."
        )
