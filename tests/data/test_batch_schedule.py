"""A global batch that grows over the first examples (NumPy only, no Ray): the batch of every step in whole
base batches, linear in the examples trained on; the steps' global batches are the base batches of the fixed
epoch order laid end to end, every example of an epoch read once; a rank's rows of a step are its slice of
each of those base batches, the same global batches on any worker count and from any resume point."""

from __future__ import annotations

import pytest

from data import BatchSchedule, EpochOrder, batch_slices

SHARDS = (300, 300, 300, 299, 299, 299)  # 1,797 examples
BASE, FULL, WARMUP_EXAMPLES = 8, 48, 600


def test_the_batch_grows_in_whole_base_batches_linearly_in_the_examples_then_stays_full():
    schedule = BatchSchedule(FULL, BASE, WARMUP_EXAMPLES)
    growth = schedule.growth_steps
    assert growth > 10
    sizes = [schedule.batch_size(step) for step in range(growth + 5)]
    assert sizes[0] == BASE and sizes[growth:] == [FULL] * 5
    assert sizes == sorted(sizes) and all(size % BASE == 0 for size in sizes)
    assert schedule.sizes == list(range(BASE, FULL + 1, BASE))  # every multiple on the way
    for step in range(growth):
        seen = schedule.examples_before(step)
        linear = BASE + (FULL - BASE) * seen / WARMUP_EXAMPLES  # the batch the warmup asks for, unrounded
        assert sizes[step] <= linear < sizes[step] + BASE
    # The full batch comes once the warmup's examples are trained on, not before.
    assert schedule.examples_before(growth - 1) < WARMUP_EXAMPLES <= schedule.examples_before(growth) + FULL
    assert schedule.examples_before(growth + 3) == sum(sizes[: growth + 3])


def test_modernberts_warmup_is_planned_at_once_and_matches_the_line_at_every_step():
    """768 -> 4,608 sequences over 50B tokens of 1,024: 29,035 steps, planned from a few numbers."""
    span = 50_000_000_000 // 1024
    schedule = BatchSchedule(4608, 768, span)
    assert schedule.sizes == [768, 1536, 2304, 3072, 3840, 4608]
    growth = schedule.growth_steps
    assert schedule.examples_before(growth - 1) < span <= schedule.examples_before(growth)
    for step in range(0, growth, 97):
        size, seen = schedule.batch_size(step), schedule.examples_before(step)
        assert size <= 768 + 3840 * seen / span < size + 768
        assert schedule.examples_before(step + 1) - seen == size


def test_a_fixed_batch_is_one_base_batch_a_step():
    schedule = BatchSchedule(32, 32)
    assert not schedule.grows and schedule.sizes == [32]
    assert [schedule.base_batches_before(step) for step in range(4)] == [0, 1, 2, 3]
    assert schedule.examples_before(7) == 7 * 32
    # A token budget turns into steps as it always did: ceil(tokens / (tokens per example x batch)).
    assert schedule.steps_for_tokens(10_000, 61.3) == 6 == -(-10_000 // (61.3 * 32))


def test_a_token_budget_counts_the_smaller_batches_of_the_warmup():
    schedule = BatchSchedule(FULL, BASE, WARMUP_EXAMPLES)
    for examples in (1, BASE, BASE + 1, 500, 2_000, 10_000):
        steps = schedule.steps_for_tokens(examples * 50.0, 50.0)
        assert schedule.examples_before(steps) >= examples > schedule.examples_before(steps - 1)


def rank_rows(order: EpochOrder, world_size: int, rank: int, epoch: int, base: int, bases: int):
    """(epoch, example) of each row rank `rank`'s stream hands over from (epoch, base batch) on: its slice of
    each base batch, read as `data.stream.read_and_mask_steps` reads them (one unit at a time)."""
    start, stop = batch_slices(order.global_batch_size, world_size)[rank]
    rows = []
    for unit_epoch, first, last in order.units(epoch, base, bases):
        ids = order.examples(unit_epoch, first, last, start, stop).reshape(-1)
        rows += [(unit_epoch, int(i)) for i in ids]
    return rows


def global_batches(order, schedule, world_size: int, first_step: int, last_step: int) -> list[list]:
    """The global batch of each step [first_step, last_step) gathered from every rank's stream started at
    the position after `first_step` steps, each rank taking k x its share of a step of k base batches."""
    epoch, base = divmod(schedule.base_batches_before(first_step), order.steps_per_epoch)
    bases = schedule.base_batches_before(last_step) - schedule.base_batches_before(first_step)
    per_step = [[] for _ in range(first_step, last_step)]
    for rank, (start, stop) in enumerate(batch_slices(BASE, world_size)):
        rows = iter(rank_rows(order, world_size, rank, epoch, base, bases))
        for index, step in enumerate(range(first_step, last_step)):
            count = schedule.batch_size(step) // BASE * (stop - start)
            per_step[index] += [next(rows) for _ in range(count)]
        assert next(rows, None) is None  # the stream holds exactly the steps' rows
    return per_step


def test_a_step_is_the_next_base_batches_of_the_order_on_any_worker_count_and_from_any_resume():
    order = EpochOrder(SHARDS, BASE, partitions=4, shuffle_window=40, seed=7)
    schedule = BatchSchedule(FULL, BASE, WARMUP_EXAMPLES)
    per_epoch = order.steps_per_epoch  # 224 base batches
    steps = schedule.steps_for_tokens(2.5 * per_epoch * BASE, 1.0)  # two epochs and a half
    # The reference: the base batches of the order, end to end, cut by the schedule (with their epoch).
    bases = [
        [(epoch, int(i)) for i in order.batch(epoch, base)]
        for epoch, base in (divmod(b, per_epoch) for b in range(schedule.base_batches_before(steps)))
    ]
    expected = [
        sum(bases[schedule.base_batches_before(s) : schedule.base_batches_before(s + 1)], [])
        for s in range(steps)
    ]
    assert [len(batch) for batch in expected] == [schedule.batch_size(s) for s in range(steps)]
    # Every example of an epoch is read once in it; fewer than a base batch sit the epoch out.
    for epoch in (0, 1):
        read = [i for batch in expected for e, i in batch if e == epoch]
        assert len(read) == len(set(read)) == per_epoch * BASE > sum(SHARDS) - BASE
    # A step straddles the epoch boundary: its first rows are masked with epoch 0, the rest with epoch 1.
    assert any({e for e, _ in batch} == {0, 1} for batch in expected)

    for world_size in (1, 2, 4, 3):  # 3: an elastic count, shares 3/3/2 of each base batch
        gathered = global_batches(order, schedule, world_size, 0, steps)
        assert [sorted(b) for b in gathered] == [sorted(b) for b in expected], world_size
    # A resume mid-warmup and one after it, on another worker count, read the same steps on.
    for resume_at in (5, schedule.growth_steps + 3):
        resumed = global_batches(order, schedule, 2, resume_at, steps)
        assert [sorted(b) for b in resumed] == [sorted(b) for b in expected[resume_at:]]


@pytest.mark.parametrize("base", [5, 7])
def test_the_base_batch_must_divide_the_global_batch(base):
    with pytest.raises(ValueError, match="does not divide"):
        BatchSchedule(48, base, 100)
