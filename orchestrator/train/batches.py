"""A rank's training batches: its Ray Data stream from the resume position, cut into micro-batches.

Each rank executes its own Ray Data stream of its fixed slice of every base batch of the order (`data.stream`,
`data.order`), from the saved position to the last step, across epochs; the global batch of a step is the
next k base batches (`data.batch_schedule`: k = 1 when the batch does not grow, the base batch being the
global batch), so its examples and their masks are a function of (seed, epoch, base batch) alone. The
position after step s is (b // base_batches_per_epoch, b % base_batches_per_epoch), b the base batches the
first s steps consumed, for any worker count, and a resume (after a failure, a restart, or with another
worker count) reads exactly the examples the run would have read.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch

from data import ExactBatches, PadAndCollate, rank_train_stream
from orchestrator.run import Run
from orchestrator.train.checkpoints import TrainState
from orchestrator.train.step import to_device

T = TypeVar("T")


def start_train_stream(run: Run, position: TrainState, rank: int, world_size: int) -> ExactBatches:
    """This rank's rows from `position` to the last step, already being fetched: a stream's start (Ray Data
    tasks in new processes) takes seconds, and so does the model's (torch's first optimizer imports its
    compiler), so the stream starts first and the two overlap."""
    schedule = run.plan.schedule
    base_batches_left = schedule.base_batches_before(run.plan.total_steps) - schedule.base_batches_before(
        position.step
    )
    stream = rank_train_stream(
        run.train_split,
        run.order,
        run.config.masking,
        rank,
        world_size,
        position.data_epoch,
        position.data_step_in_epoch,
        base_batches_left,
    )
    return ExactBatches(
        fetch_ahead(stream.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2))
    )


def fetch_ahead(iterable: Iterable[T]) -> Iterator[T]:
    """The items of `iterable`, the first fetched from now on, on a thread, while the caller goes on."""
    iterator = iter(iterable)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    first = pool.submit(next, iterator, None)
    pool.shutdown(wait=False)

    def items() -> Iterator[T]:
        item = first.result()
        if item is not None:
            yield item
            yield from iterator

    return items()


def step_batches(
    rows: ExactBatches, micro_batch_sizes: Iterable[list[int]], collate: PadAndCollate, device: torch.device
) -> Iterator[list[dict[str, torch.Tensor]]]:
    """This worker's micro-batches, one list per optimizer step (of the sizes `micro_batch_sizes` gives,
    step after step), cut from its stream's rows."""
    with contextlib.closing(rows):  # stops the stream's prefetching when the run ends early
        for sizes in micro_batch_sizes:
            yield [to_device(collate.collate_table(rows.take(size)), device) for size in sizes]
