"""The global batch size of every training step: fixed, or growing over the run's first examples.

The epoch order (`data.order`) is built on a base batch of `base_batch_size` examples; the global batch of a
step is the next k base batches of that order, k from 1 (the base batch) up to
`global_batch_size // base_batch_size`. The position of the data stream is then the number of base batches
consumed, not step x batch, and a rank's rows of a step are its fixed slice of each of those base batches, so
the order, the masks and the resume point stay a pure function of (seed, epoch, base batch), whatever the
worker count. With no growth the base batch is the global batch: one base batch a step, as before.

The growth (ModernBERT's batch size warmup) is linear in the examples trained on: the step after e examples
has the batch start + (global - start) * e / warmup_examples, rounded down to whole base batches, until e
reaches `warmup_examples`; from then on the full global batch. Everything here follows from the three
numbers, so the size of every step is known before the run starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class BatchSchedule:
    global_batch_size: int
    """Examples per step once the batch has grown (a multiple of the base batch)."""
    base_batch_size: int
    """The order's batch unit and the first step's batch (the global batch when it does not grow)."""
    warmup_examples: int = 0
    """Examples over which the batch grows from the base batch to the global batch; 0 = fixed."""

    def __post_init__(self) -> None:
        if self.global_batch_size % self.base_batch_size:
            raise ValueError(
                f"the base batch {self.base_batch_size} does not divide the global batch "
                f"{self.global_batch_size}"
            )

    @cached_property
    def _stretches(self) -> tuple[np.ndarray, np.ndarray]:
        """(batch size, steps) of each stretch of steps at one size while the batch grows: the batch is k base
        batches from the step after ceil((k - 1) * base * span / (full - base)) examples on (a few numbers
        per size, however many steps the warmup takes)."""
        base, full, span = self.base_batch_size, self.global_batch_size, self.warmup_examples
        sizes, steps, seen = [], [], 0
        for k in range(1, full // base if span else 1):
            grows_at = -(-k * base * span // (full - base))  # examples after which the batch is k + 1 bases
            count = max(0, -(-(grows_at - seen) // (k * base)))
            if count:
                sizes.append(k * base)
                steps.append(count)
                seen += count * k * base
        return np.asarray(sizes, dtype=np.int64), np.asarray(steps, dtype=np.int64)

    @cached_property
    def _stretch_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """(first step, examples before it) of each stretch, and the end of the growth after the last."""
        sizes, steps = self._stretches
        return np.concatenate([[0], np.cumsum(steps)]), np.concatenate([[0], np.cumsum(sizes * steps)])

    @property
    def growth_steps(self) -> int:
        """Steps with a batch smaller than the global batch (0: a fixed batch)."""
        return int(self._stretch_starts[0][-1])

    @property
    def grows(self) -> bool:
        return self.growth_steps > 0

    @property
    def sizes(self) -> list[int]:
        """Every global batch size a step of the run can have, smallest first."""
        return [*self._stretches[0].tolist(), self.global_batch_size]

    def batch_size(self, step: int) -> int:
        """The global batch of step `step` (0-based: the step that follows `step` finished steps)."""
        if step >= self.growth_steps:
            return self.global_batch_size
        first_steps, _ = self._stretch_starts
        return int(self._stretches[0][np.searchsorted(first_steps, step, side="right") - 1])

    def examples_before(self, step: int) -> int:
        """Examples trained on by the first `step` steps."""
        first_steps, examples = self._stretch_starts
        if step >= self.growth_steps:
            return int(examples[-1]) + (step - self.growth_steps) * self.global_batch_size
        stretch = np.searchsorted(first_steps, step, side="right") - 1
        return int(examples[stretch] + (step - first_steps[stretch]) * self._stretches[0][stretch])

    def base_batches_before(self, step: int) -> int:
        """Base batches of the order consumed by the first `step` steps: the stream's position after them."""
        return self.examples_before(step) // self.base_batch_size

    def steps_for_tokens(self, tokens: float, tokens_per_example: float) -> int:
        """The fewest steps that train on `tokens` tokens, at `tokens_per_example` tokens an example."""
        first_steps, examples = self._stretch_starts
        stretch = int(np.searchsorted(examples * tokens_per_example, tokens, side="left")) - 1
        if stretch >= len(self._stretches[0]):  # more tokens than the growth takes
            stretch, size = len(self._stretches[0]), self.global_batch_size
        else:
            size = int(self._stretches[0][stretch])
        remaining = tokens - examples[stretch] * tokens_per_example
        return int(first_steps[stretch]) + max(0, math.ceil(remaining / (tokens_per_example * size)))
