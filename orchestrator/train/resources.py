"""What a run needs from the cluster, worked out before it starts.

The batch plan splits the run's global batch over the workers (each rank's share, micro-batches,
accumulation); the resource check compares the workers' CPUs/GPUs plus the CPUs kept for Ray Data with what
the cluster has, so that a run that could never be placed is refused at once instead of waiting forever.
"""

from __future__ import annotations

from dataclasses import dataclass

from data import batch_slices
from orchestrator.config import ScalingConfig
from orchestrator.errors import UserError


@dataclass(frozen=True)
class BatchPlan:
    global_batch_size: int
    num_workers: int
    per_worker_batch_size: int
    """The most examples one worker contributes to an optimizer step."""
    micro_batch_size: int
    """The most examples in one forward/backward."""
    accumulation_steps: int
    """Micro-steps per optimizer step, the same on every worker."""

    def worker_batch_size(self, rank: int) -> int:
        """Examples `rank` contributes to every step: its fixed slice of the global batch (`batch_slices`).
        When the workers do not divide the global batch (an elastic run), the first ranks take one more."""
        start, stop = batch_slices(self.global_batch_size, self.num_workers)[rank]
        return stop - start

    def micro_batch_sizes(self, rank: int) -> list[int]:
        """The sizes of `rank`'s micro-batches in a step: its share cut into near-equal parts. The loss is
        normalised over the whole global batch, so unequal parts still give the update of one big batch."""
        base, leftover = divmod(self.worker_batch_size(rank), self.accumulation_steps)
        return [base + int(i < leftover) for i in range(self.accumulation_steps)]


def plan_batches(
    global_batch_size: int, max_micro_batch_size: int, num_workers: int, uneven: bool = False
) -> BatchPlan:
    """Split the global batch over `num_workers`, in as few micro-steps of at most `max_micro_batch_size`
    as fit. A fixed worker count must divide the global batch; `uneven=True` (elastic runs, where Ray picks
    the count) lets the shares differ by one example."""
    if global_batch_size % num_workers and not uneven:
        counts = [n for n in range(1, min(global_batch_size, 1024) + 1) if global_batch_size % n == 0]
        raise UserError(
            f"{num_workers} workers do not divide train.global_batch_size={global_batch_size}; "
            f"worker counts that do: {', '.join(map(str, counts))}"
        )
    if num_workers > global_batch_size:
        raise UserError(
            f"{num_workers} workers are more than train.global_batch_size={global_batch_size} examples: "
            "use fewer workers or a bigger batch"
        )
    largest_share = -(-global_batch_size // num_workers)
    accumulation = -(-largest_share // max_micro_batch_size)
    if global_batch_size // num_workers < accumulation:  # a rank would get an empty micro-step
        raise UserError(
            f"train.micro_batch_size={max_micro_batch_size} is too small to split "
            f"train.global_batch_size={global_batch_size} over {num_workers} workers: use 2 or more"
        )
    micro = -(-largest_share // accumulation)
    return BatchPlan(global_batch_size, num_workers, largest_share, micro, accumulation)


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
