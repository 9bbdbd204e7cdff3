"""The run: the resolved config, the run directory and the plan, built once by the driver.

The driver (`orchestrator.train.driver`) builds a `Run` from the config, the prepared data and the cluster,
and hands it whole to every worker (`orchestrator.train.worker`) and to the tracker (`orchestrator.tracking`):
they read what they need from it and derive nothing from the raw config again. The plan is the contract
between the driver and the workers: the model's sizes, the steps, how the global batch splits over the
workers, and the data order's identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.errors import UserError
from data import EpochOrder, PreparedSplit, batch_slices
from model import EncoderConfig
from orchestrator.config import JobConfig
from orchestrator.run_dir import RunDir


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


@dataclass(frozen=True)
class RunPlan:
    """What the driver worked out for the workers (from the config, the prepared data, the worker count)."""

    batch: BatchPlan
    total_steps: int
    steps_per_epoch: int
    model: EncoderConfig
    """A preset's sizes or those of checkpoint.init_from, the data's vocabulary."""
    pad_token_id: int
    max_seq_length: int
    data_order: dict[str, Any] = field(default_factory=dict)
    """What the order of the examples is made from (`data_order_identity`); a resume must keep all of it
    (empty for a run without a data stream to resume, as a fine-tuning run)."""


@dataclass(frozen=True)
class Run:
    config: JobConfig
    """The resolved config: validated once when loaded, local paths absolute."""
    dir: RunDir
    plan: RunPlan
    train_split: PreparedSplit
    eval_split: PreparedSplit | None
    """The held-out split when the run evaluates, else None."""
    probes: tuple = ()
    """The downstream probes' labelled sets, tokenized (`orchestrator.train.probes.ProbeData`)."""

    @property
    def order(self) -> EpochOrder:
        """The run's data order (the same on the driver and on every rank)."""
        return epoch_order(self.config, self.train_split)


def epoch_order(config: JobConfig, train_split: PreparedSplit) -> EpochOrder:
    return EpochOrder(
        train_split.shard_sizes,
        config.train.global_batch_size,
        config.stream.partitions,
        config.stream.shuffle_window,
        config.train.seed,
    )


def data_order_identity(config: JobConfig, prepared_data: str) -> dict[str, Any]:
    """Everything the order of the training examples is made from, besides the worker count: the seed, the
    global batch, the partitions and the window, and the prepared data itself (`prepared_data`, a hash of
    its manifest, which holds its settings, tokenizer hash and counts)."""
    return {
        "seed": config.train.seed,
        "global_batch_size": config.train.global_batch_size,
        "partitions": config.stream.partitions,
        "shuffle_window": config.stream.shuffle_window,
        "prepared_data": prepared_data,
    }
