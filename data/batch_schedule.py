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

    @property
    def grows(self) -> bool:
        return bool(self.growth_sizes.size)

    @cached_property
    def growth_sizes(self) -> np.ndarray:
        """The global batch of each step while the batch grows (smaller than the full one)."""
        base, full, span = self.base_batch_size, self.global_batch_size, self.warmup_examples
        sizes, seen = [], 0
        while seen < span:
            # start + (full - start) * seen / span, in whole base batches (integers only: exact everywhere)
            size = min(full, base * ((base * span + (full - base) * seen) // (base * span)))
            if size == full:
                break
            sizes.append(size)
            seen += size
        return np.asarray(sizes, dtype=np.int64)

    @cached_property
    def _examples_after_growth_steps(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.growth_sizes)])

    @property
    def sizes(self) -> list[int]:
        """Every global batch size a step of the run can have, smallest first."""
        return sorted({*self.growth_sizes.tolist(), self.global_batch_size})

    def batch_size(self, step: int) -> int:
        """The global batch of step `step` (0-based: the step that follows `step` finished steps)."""
        return int(self.growth_sizes[step]) if step < self.growth_sizes.size else self.global_batch_size

    def examples_before(self, step: int) -> int:
        """Examples trained on by the first `step` steps."""
        growth_steps = self.growth_sizes.size
        if step <= growth_steps:
            return int(self._examples_after_growth_steps[step])
        return int(self._examples_after_growth_steps[-1]) + (step - growth_steps) * self.global_batch_size

    def base_batches_before(self, step: int) -> int:
        """Base batches of the order consumed by the first `step` steps: the stream's position after them."""
        return self.examples_before(step) // self.base_batch_size

    def steps_for_tokens(self, tokens: float, tokens_per_example: float) -> int:
        """The fewest steps that train on `tokens` tokens, at `tokens_per_example` tokens an example."""
        grown = self._examples_after_growth_steps
        if tokens <= grown[-1] * tokens_per_example:
            return int(np.searchsorted(grown * tokens_per_example, tokens, side="left"))
        remaining = tokens - grown[-1] * tokens_per_example
        return self.growth_sizes.size + math.ceil(remaining / (tokens_per_example * self.global_batch_size))
