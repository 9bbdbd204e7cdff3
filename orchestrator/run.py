"""The run: the resolved config, the run directory and the plan, built once by the driver.

The driver (`orchestrator.train.driver`) builds a `Run` from the config, the prepared data and the cluster,
and hands it whole to every worker (`orchestrator.train.worker`) and to the tracker (`orchestrator.tracking`):
they read what they need from it and derive nothing from the raw config again. The plan is the contract
between the driver and the workers: the model's sizes, the steps, how the global batch splits over the
workers, and the data order's identity.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from common.errors import UserError
from data import BatchSchedule, EpochOrder, PreparedSplit, batch_slices
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
    base_batch_size: int = 0
    """The order's batch unit (`data.batch_schedule`) the global batch is made of; 0: the global batch."""

    def worker_batch_size(self, rank: int) -> int:
        """Examples `rank` contributes to every step: its fixed slice (`batch_slices`) of each base batch of
        the global batch. When the workers do not divide the base batch (an elastic run), the first ranks take
        one more of each."""
        base = self.base_batch_size or self.global_batch_size
        start, stop = batch_slices(base, self.num_workers)[rank]
        return self.global_batch_size // base * (stop - start)

    def micro_batch_sizes(self, rank: int) -> list[int]:
        """The sizes of `rank`'s micro-batches in a step: its share cut into near-equal parts. The loss is
        normalised over the whole global batch, so unequal parts still give the update of one big batch."""
        base, leftover = divmod(self.worker_batch_size(rank), self.accumulation_steps)
        return [base + int(i < leftover) for i in range(self.accumulation_steps)]


def plan_batches(
    global_batch_size: int,
    max_micro_batch_size: int,
    num_workers: int,
    uneven: bool = False,
    base_batch_size: int = 0,
) -> BatchPlan:
    """Split the global batch (whole base batches of `base_batch_size`; 0: one of the global batch) over
    `num_workers`, in as few micro-steps of at most `max_micro_batch_size` as fit. A fixed worker count must
    divide the base batch; `uneven=True` (elastic runs, where Ray picks the count) lets the shares differ by
    one example of each base batch."""
    base = base_batch_size or global_batch_size
    setting = "train.batch_size_warmup.start" if base_batch_size else "train.global_batch_size"
    if base % num_workers and not uneven:
        counts = [n for n in range(1, min(base, 1024) + 1) if base % n == 0]
        raise UserError(
            f"{num_workers} workers do not divide {setting}={base}; "
            f"worker counts that do: {', '.join(map(str, counts))}"
        )
    if num_workers > base:
        raise UserError(
            f"{num_workers} workers are more than {setting}={base} examples: "
            "use fewer workers or a bigger batch"
        )
    copies = global_batch_size // base
    largest_share = copies * -(-base // num_workers)
    accumulation = -(-largest_share // max_micro_batch_size)
    if copies * (base // num_workers) < accumulation:  # a rank would get an empty micro-step
        raise UserError(
            f"train.micro_batch_size={max_micro_batch_size} is too small to split "
            f"train.global_batch_size={global_batch_size} over {num_workers} workers: use 2 or more"
        )
    micro = -(-largest_share // accumulation)
    return BatchPlan(global_batch_size, num_workers, largest_share, micro, accumulation, base_batch_size)


def plan_step_batches(
    schedule: BatchSchedule, max_micro_batch_size: int, num_workers: int, uneven: bool = False
) -> dict[int, BatchPlan]:
    """The split of every global batch size the schedule's steps have, by size (one for a fixed batch)."""
    base = schedule.base_batch_size if schedule.grows else 0
    return {
        size: plan_batches(size, max_micro_batch_size, num_workers, uneven, base) for size in schedule.sizes
    }


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
    schedule: BatchSchedule | None = None
    """The global batch of every step (None: `batch` throughout, as a fine-tuning run)."""
    base_batches_per_epoch: int = 0
    """Base batches of the order in an epoch (`steps_per_epoch` counts full global batches)."""
    tokens_per_example: float = 0.0
    """The prepared data's mean tokens per example: the unit of train.max_tokens and of the batch warmup."""


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
    """The order of the run's epochs, in base batches: the warmup's start size when the batch grows (a
    step's global batch is then several of them), else the global batch."""
    return EpochOrder(
        train_split.shard_sizes,
        base_batch_size(config),
        config.stream.partitions,
        config.stream.shuffle_window,
        config.train.seed,
    )


def base_batch_size(config: JobConfig) -> int:
    warmup = config.train.batch_size_warmup
    return warmup.start if warmup.enabled else config.train.global_batch_size


def batch_schedule(config: JobConfig, tokens_per_example: float) -> BatchSchedule:
    """The global batch of every step: growing over train.batch_size_warmup.tokens, else fixed."""
    warmup = config.train.batch_size_warmup
    warmup_examples = math.ceil(warmup.tokens / tokens_per_example) if warmup.enabled else 0
    return BatchSchedule(config.train.global_batch_size, base_batch_size(config), warmup_examples)


def data_order_identity(config: JobConfig, prepared_data: str) -> dict[str, Any]:
    """Everything the order of the training examples is made from, besides the worker count: the seed, the
    global batch and its warmup (only when the batch grows: a fixed batch's identity is as before), the
    partitions and the window, and the prepared data itself (`prepared_data`, a hash of its manifest, which
    holds its settings, tokenizer hash and counts)."""
    identity = {
        "seed": config.train.seed,
        "global_batch_size": config.train.global_batch_size,
        "partitions": config.stream.partitions,
        "shuffle_window": config.stream.shuffle_window,
        "prepared_data": prepared_data,
    }
    if config.train.batch_size_warmup.enabled:
        identity["batch_size_warmup"] = dataclasses.asdict(config.train.batch_size_warmup)
    return identity
