"""The order of a training epoch: which examples make the global batch of each step, and who reads them.

The order is a pure function of (seed, epoch, example index, the split's shard sizes, the global batch size,
the canonical partitions, the shuffle window): never of the worker count, failures or restarts, so a run is
the same on any number of workers and resumes exactly from (epoch, step). NumPy only, built as Mosaic
streaming builds its order (`partition/orig.py` for the partitions, `shuffle/py1b.py` for the windows), in
four seeded steps per epoch:

1. The epoch's sequence: the shards in a seeded permutation, laid end to end, rotated by a seeded offset.
   Reading along the sequence reads each shard front to back.
2. Canonical partitions: the first `steps_per_epoch * B` positions of the sequence are cut into P contiguous
   runs. Partition p gives b_p examples to every global batch (b_p is B // P or one more), so it spans
   `steps_per_epoch * b_p` positions. The rest of the sequence, fewer than B examples, sits this epoch out (a
   different rest each epoch).
3. Windows: each partition is cut into windows of `window_steps` steps (`window_steps * b_p` rows) and each
   window permuted by a seeded hash sort.
4. The global batch of step s: partition after partition, the b_p rows of step s of each. A rank's share is a
   fixed slice of the batch's positions (`batch_slices`), so a rank reads only the partitions under its slice.
   With P >= W ranks a partition is read by one rank, or by two where a slice boundary cuts it (at most W - 1
   such partitions); so the data read per epoch stays about 1x, at 8 ranks as at 512, where a rank that read
   every shard to pick its rows would make the bucket traffic grow with the rank count.

With a batch that grows over the first steps (`data.batch_schedule`), the order is built on the base batch
(the warmup's start size) and a step's global batch is the next k of its batches: B below is that base
batch, and "step" one base batch.

Why py1b's fixed windows and not py1e's overlapping ranges: a window is exactly what one read task of a rank
reads and shuffles, in bounded memory (about `shuffle_window` rows per partition), with nothing carried from
one task to the next; py1e's smoother window edges would need two windows in memory at once. The mixing a
batch needs comes mostly from elsewhere: `prepare` writes the examples in a seeded random order, and every
global batch draws from all P partitions, P places spread over the whole split. The permutation, rotation and
windows make each epoch's batches new.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from data.errors import DataError
from data.hashing import combine, stream_key


def batch_slices(global_batch_size: int, world_size: int) -> list[tuple[int, int]]:
    """Each rank's fixed slice [start, stop) of the global batch's positions: near-equal shares, the first
    `global_batch_size % world_size` ranks one example more."""
    base, extra = divmod(global_batch_size, world_size)
    stops = np.cumsum([base + (rank < extra) for rank in range(world_size)])
    return [(int(stop - base - (rank < extra)), int(stop)) for rank, stop in enumerate(stops)]


@dataclass(frozen=True)
class EpochOrder:
    shard_sizes: tuple[int, ...]
    """Examples in each shard of the split, in the manifest's order (example i is the i-th row overall)."""
    global_batch_size: int
    partitions: int = 1024
    """Canonical partitions requested; an epoch has min(partitions, global_batch_size)."""
    shuffle_window: int = 4096
    """Rows of a partition permuted together."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the split has {self.num_examples} examples, fewer than one global batch "
                f"({self.global_batch_size}): use a bigger corpus or a smaller batch"
            )

    @cached_property
    def num_examples(self) -> int:
        return int(sum(self.shard_sizes))

    @cached_property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch_size

    @cached_property
    def num_partitions(self) -> int:
        return min(self.partitions, self.global_batch_size)

    @cached_property
    def rows_per_step(self) -> np.ndarray:
        """b_p: examples partition p gives each global batch."""
        base, extra = divmod(self.global_batch_size, self.num_partitions)
        return base + (np.arange(self.num_partitions) < extra)

    @cached_property
    def slot_starts(self) -> np.ndarray:
        """Where each partition's examples start in a global batch (and the batch size at the end)."""
        return np.concatenate([[0], np.cumsum(self.rows_per_step)])

    @cached_property
    def window_steps(self) -> int:
        return max(1, self.shuffle_window // int(self.rows_per_step.max()))

    def batch(self, epoch: int, step: int) -> np.ndarray:
        """The example indices of the global batch of `step` in `epoch`, in batch order."""
        return self.examples(epoch, step, step + 1)[0]

    def examples(self, epoch: int, first_step: int, stop_step: int, start: int = 0, stop: int | None = None):
        """Example indices (steps, positions) of the steps [first_step, stop_step) of `epoch`, at the batch
        positions [start, stop) (a rank's slice; all of them by default)."""
        stop = self.global_batch_size if stop is None else stop
        if not 0 <= first_step <= stop_step <= self.steps_per_epoch:
            raise ValueError(
                f"steps [{first_step}, {stop_step}) are outside the epoch of {self.steps_per_epoch}"
            )
        windows = []
        for window_start in range(first_step - first_step % self.window_steps, stop_step, self.window_steps):
            low, high = max(first_step, window_start), min(stop_step, window_start + self.window_steps)
            windows.append(self._window_positions(epoch, window_start, low, high, start, stop))
        positions = np.concatenate(windows) if windows else np.zeros((0, stop - start), np.int64)
        return self.sequence(epoch, positions)

    def units(self, epoch: int, step: int, num_steps: int) -> list[tuple[int, int, int]]:
        """(epoch, first_step, stop_step) pieces, none across a window or an epoch, covering `num_steps`
        steps from (epoch, step): what one read task of a rank reads."""
        pieces = []
        while num_steps > 0:
            stop = min(
                step - step % self.window_steps + self.window_steps, self.steps_per_epoch, step + num_steps
            )
            pieces.append((epoch, step, stop))
            num_steps -= stop - step
            epoch, step = (epoch + 1, 0) if stop == self.steps_per_epoch else (epoch, stop)
        return pieces

    def partitions_under(self, start: int, stop: int) -> np.ndarray:
        """The partitions a rank with batch positions [start, stop) reads."""
        slots = np.arange(start, stop)
        return np.unique(np.searchsorted(self.slot_starts, slots, side="right") - 1)

    def _window_positions(self, epoch, window_start, low, high, start, stop) -> np.ndarray:
        """Sequence positions (steps, slots) of steps [low, high) of the window starting at `window_start`."""
        slots = np.arange(start, stop)
        partition = np.searchsorted(self.slot_starts, slots, side="right") - 1  # (S,)
        rows = self.rows_per_step[partition]  # b_p of each slot
        window_steps = min(self.window_steps, self.steps_per_epoch - window_start)
        # Row of the window each (step, slot) takes before the permutation, then after it.
        row = (np.arange(low, high) - window_start)[:, None] * rows + (slots - self.slot_starts[partition])
        permuted = np.empty_like(row)
        for p in np.unique(partition):
            columns = partition == p
            key = combine(combine(stream_key(self.seed, "window", epoch), p), window_start)
            permutation = np.argsort(
                combine(key, np.arange(window_steps * self.rows_per_step[p])), kind="stable"
            )
            permuted[:, columns] = permutation[row[:, columns]]
        partition_start = self.steps_per_epoch * self.slot_starts[partition]
        return partition_start + window_start * rows + permuted

    def sequence(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """Example indices at positions of the epoch's sequence (shards permuted, end to end, rotated)."""
        sizes = np.asarray(self.shard_sizes, dtype=np.int64)
        shard_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        permutation = np.argsort(combine(stream_key(self.seed, "shards", epoch), np.arange(len(sizes))))
        starts_in_sequence = np.concatenate([[0], np.cumsum(sizes[permutation])[:-1]])
        rotation = int(combine(stream_key(self.seed, "rotation", epoch), 0) % np.uint64(self.num_examples))
        at = (np.asarray(positions, dtype=np.int64) + rotation) % self.num_examples
        piece = np.searchsorted(starts_in_sequence, at, side="right") - 1
        return shard_starts[permutation[piece]] + at - starts_in_sequence[piece]
