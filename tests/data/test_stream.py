"""The training stream's order and the per-rank Ray Data streams: every epoch a new permutation, the same
global batches on any worker count, exact resumes, each rank reading only its own partitions."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data import (
    EpochOrder,
    MaskingConfig,
    batch_slices,
    build_train_dataset,
    load_split,
    rank_eval_stream,
    rank_train_stream,
)
from data.masking import mask_tokens
from data.stream import PreparedSplit, read_examples

SHARDS = (300, 300, 300, 299, 299, 299)


def epoch_batches(order: EpochOrder, epoch: int) -> np.ndarray:
    return order.examples(epoch, 0, order.steps_per_epoch)  # (steps, global batch)


@pytest.mark.parametrize(("batch", "partitions", "window"), [(24, 1024, 64), (24, 8, 40), (7, 3, 12)])
def test_each_epoch_is_a_permutation_cut_the_same_way_for_every_world_size(batch, partitions, window):
    order = EpochOrder(SHARDS, batch, partitions=partitions, shuffle_window=window, seed=5)
    assert order.steps_per_epoch == sum(SHARDS) // batch
    epochs = [epoch_batches(order, epoch) for epoch in range(3)]
    for batches in epochs:
        assert len(np.unique(batches)) == batches.size == order.steps_per_epoch * batch  # no example twice
        assert batches.min() >= 0 and batches.max() < sum(SHARDS)
    for world_size in range(1, batch + 1):
        slices = batch_slices(batch, world_size)
        shares = [stop - start for start, stop in slices]
        assert max(shares) - min(shares) <= 1 and slices[0][0] == 0 and slices[-1][1] == batch
        for epoch, batches in enumerate(epochs):
            by_rank = [order.examples(epoch, 0, order.steps_per_epoch, *s) for s in slices]
            np.testing.assert_array_equal(np.concatenate(by_rank, axis=1), batches)
        # A rank reads the partitions under its slice only: every slice boundary that cuts a partition makes
        # one partition read twice, so the data read is at most (P + W - 1) / P of the epoch; with W <= P no
        # partition is read by more than two ranks.
        read = [order.partitions_under(*s) for s in slices]
        readers = np.bincount(np.concatenate(read), minlength=order.num_partitions)
        assert readers.min() >= 1 and readers.sum() <= order.num_partitions + world_size - 1
        assert world_size > order.num_partitions or readers.max() <= 2
        if batch % order.num_partitions == 0 and order.num_partitions % world_size == 0:
            assert readers.max() == 1
    # Every epoch its own batches, and another seed another order.
    first, second = (set(map(frozenset, batches.tolist())) for batches in epochs[:2])
    assert not first & second
    other_seed = EpochOrder(SHARDS, batch, partitions=partitions, shuffle_window=window, seed=6)
    assert not np.array_equal(epoch_batches(other_seed, 0), epochs[0])


def test_a_batch_mixes_the_whole_split_and_a_read_task_reads_contiguous_runs():
    order = EpochOrder(SHARDS, 16, shuffle_window=32, seed=1)
    batches = epoch_batches(order, 0)
    shard_of = np.searchsorted(np.cumsum(SHARDS), batches, side="right")
    assert np.mean([len(np.unique(row)) for row in shard_of]) >= 5  # of 6 shards, in each batch of 16
    # Examples that share a batch in one epoch hardly meet again in the next (as in a random permutation).
    pairs = {pair for row in batches.tolist() for pair in itertools.combinations(sorted(row), 2)}
    again = {
        pair for row in epoch_batches(order, 1).tolist() for pair in itertools.combinations(sorted(row), 2)
    }
    assert len(pairs & again) / len(pairs) < 0.05
    # One read task (a window of a rank) reads, from each of its partitions, one contiguous run of the
    # epoch's sequence: positions p * steps + [window start, window end) of partition p.
    start, stop = batch_slices(16, 3)[1]
    for epoch, first, last in order.units(0, 0, order.steps_per_epoch):
        rows = order.examples(epoch, first, last, start, stop)
        assert rows.shape == (last - first, stop - start)
        for column, partition in enumerate(range(start, stop)):
            run = partition * order.steps_per_epoch + np.arange(first, last)
            assert sorted(rows[:, column]) == sorted(order.sequence(epoch, run))


def test_units_cover_the_steps_from_a_position_without_crossing_windows_or_epochs():
    order = EpochOrder(SHARDS, 16, shuffle_window=40, seed=0)  # 112 steps an epoch, windows of 40
    units = order.units(0, 100, 130)
    assert units == [(0, 100, 112), (1, 0, 40), (1, 40, 80), (1, 80, 112), (2, 0, 6)]


def test_a_split_smaller_than_a_batch_is_refused():
    with pytest.raises(Exception, match="fewer than one global batch"):
        EpochOrder((10, 10), 32)


def collect_steps(dataset, share: int) -> list[pa.Table]:
    rows = pa.concat_tables(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    return [rows.slice(offset, share) for offset in range(0, rows.num_rows, share)]


def test_every_rank_streams_its_slice_of_the_same_global_batches_and_resumes_exactly(prepared_dir):
    """The global batches of 6 steps across an epoch boundary, gathered from the per-rank Ray Data streams of
    1, 2 and 3 workers (3: shares 6/5/5), hold the ids of the order and the masks of their epoch; a stream
    started at a step inside the epoch (a resume, 2 -> 1 workers) continues with the very same rows."""
    split = load_split(prepared_dir)
    masking = MaskingConfig()
    order = EpochOrder(split.shard_sizes, 16, partitions=8, shuffle_window=6, seed=3)
    last = order.steps_per_epoch
    expected = [order.batch(0, step) for step in range(last - 3, last)] + [
        order.batch(1, s) for s in range(3)
    ]

    gathered = {}
    for world_size in (1, 2, 3):
        per_rank = [
            collect_steps(
                rank_train_stream(split, order, masking, rank, world_size, 0, last - 3, 6), stop - start
            )
            for rank, (start, stop) in enumerate(batch_slices(16, world_size))
        ]
        assert all(len(steps) == 6 for steps in per_rank)
        gathered[world_size] = [pa.concat_tables(step) for step in zip(*per_rank, strict=True)]
    for step, ids in enumerate(expected):
        for world_size, steps in gathered.items():
            assert steps[step].column("example_id").to_numpy().tolist() == ids.tolist(), (world_size, step)
            assert (
                steps[step].column("mlm_labels").to_pylist()
                == gathered[1][step].column("mlm_labels").to_pylist()
            )
    # The masks are those of the batch's epoch, computed from the prepared rows of those ids.
    for step, epoch in ((0, 0), (5, 1)):
        prepared = read_examples(split, expected[step])
        ids = prepared.column("input_ids").combine_chunks()
        _, labels = mask_tokens(
            ids.values.to_numpy(),
            ids.offsets.to_numpy().astype(np.int64),
            prepared.column("example_id").to_numpy(),
            order.seed,
            epoch,
            masking,
            split.vocab,
        )
        streamed = gathered[2][step].column("mlm_labels").combine_chunks().values.to_numpy()
        np.testing.assert_array_equal(streamed, labels)

    resumed = collect_steps(rank_train_stream(split, order, masking, 0, 1, 0, last - 1, 4), 16)
    assert [t.column("example_id").to_pylist() for t in resumed] == [ids.tolist() for ids in expected[2:]]
    assert resumed[-1].column("input_ids").to_pylist() == gathered[2][-1].column("input_ids").to_pylist()


def test_eval_slices_cover_the_held_out_split_once(prepared_dir):
    split = load_split(prepared_dir, "eval")
    whole = pa.concat_tables(
        build_train_dataset(prepared_dir, seed=4, split="eval").iter_batches(
            batch_size=None, batch_format="pyarrow"
        )
    )
    parts = [
        pa.concat_tables(
            rank_eval_stream(split, MaskingConfig(), 4, rank, 3).iter_batches(
                batch_size=None, batch_format="pyarrow"
            )
        )
        for rank in range(3)
    ]
    assert pa.concat_tables(parts).to_pylist() == whole.to_pylist()


def test_rows_are_read_from_the_row_groups_that_hold_them(prepared_dir, tmp_path):
    split = load_split(prepared_dir)
    regrouped = []
    for index, path in enumerate(split.shard_paths):
        pq.write_table(pq.read_table(path), tmp_path / f"{index}.parquet", row_group_size=7)
        regrouped.append(str(tmp_path / f"{index}.parquet"))
    assert pq.ParquetFile(regrouped[0]).num_row_groups > 10
    indices = np.random.default_rng(0).permutation(split.num_examples)[:200]
    rows = read_examples(PreparedSplit(tuple(regrouped), split.shard_sizes, split.vocab), indices)
    assert rows.column("example_id").to_pylist() == indices.tolist()
    assert rows.to_pylist() == read_examples(split, indices).to_pylist()
