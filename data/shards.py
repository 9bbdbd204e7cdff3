"""A split's examples in a seeded random order over the whole split, written as even Parquet shards.

Example i of a split (its index in the order the units made it: unit by unit) goes to position
`permuted_positions(i)`, a seeded bijection of [0, N): a 4-round Feistel network over the smallest even
number of bits that covers N, walking values outside [0, N) along their cycle until they land inside. Any
example's position is computed alone, in O(1) memory, so the shuffle needs no sort and no table of the split:
each task that holds examples cuts them into one bucket per target shard (`bucket_by_shard`), and each shard's
task sorts the buckets it receives by position and writes them (`write_shard`). Shard sizes differ by at most
one example (`shard_sizes`), and `example_id` is the position: 0..N-1 over the shards in order. Nothing
depends on how many tasks made the examples, so the same seed gives the same shards on any cluster.
"""

from __future__ import annotations

import math
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common import storage
from data.hashing import combine, stream_key

SHARD_COLUMNS = ("example_id", "input_ids", "token_type_ids", "next_sentence_label")
ROW_GROUP_ROWS = 4096
"""A training stream's read task takes about `stream.shuffle_window` (4096) consecutive rows of a shard: in
row groups of this size it reads those and little more, not the whole shard (65,536 rows by default)."""
_FEISTEL_ROUNDS = 4


def shard_sizes(num_examples: int, examples_per_shard: int) -> list[int]:
    """Sizes of ceil(n / examples_per_shard) shards that differ by at most one."""
    num_shards = max(1, math.ceil(num_examples / examples_per_shard))
    base, extra = divmod(num_examples, num_shards)
    return [base + (1 if shard < extra else 0) for shard in range(num_shards)]


def permuted_positions(indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Positions of examples `indices` (in [0, n)) under the seeded permutation of [0, n)."""
    half_bits = max(1, math.ceil(max(1, (n - 1).bit_length()) / 2))
    mask = np.uint64((1 << half_bits) - 1)
    round_keys = [stream_key(seed, "shuffle", n, r) for r in range(_FEISTEL_ROUNDS)]
    values = np.asarray(indices, dtype=np.uint64).copy()
    outside = np.arange(len(values))
    while len(outside):  # cycle walking: the domain is under 4n, so this takes a few rounds
        left, right = values[outside] >> np.uint64(half_bits), values[outside] & mask
        for key in round_keys:
            left, right = right, left ^ (combine(key, right) & mask)
        values[outside] = (left << np.uint64(half_bits)) | right
        outside = outside[values[outside] >= np.uint64(n)]
    return values.astype(np.int64)


def bucket_by_shard(
    examples: pa.Table, first_index: int, num_examples: int, seed: int, shard_bounds: list[int]
) -> list[pa.Table]:
    """Ray task body: examples `first_index`... of the split -> one table per shard (with `example_id`);
    shard k holds positions [shard_bounds[k], shard_bounds[k + 1])."""
    positions = permuted_positions(np.arange(examples.num_rows) + first_index, num_examples, seed)
    shard = np.searchsorted(np.asarray(shard_bounds[1:]), positions, side="right")
    order = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[order], np.arange(len(shard_bounds)))
    ordered = examples.take(pa.array(order)).append_column("example_id", pa.array(positions[order]))
    return [ordered.slice(low, high - low) for low, high in zip(bounds[:-1], bounds[1:], strict=True)]


def only_bucket(*args) -> pa.Table:
    """`bucket_by_shard` for a split of one shard (a task with one return value returns it unwrapped)."""
    (bucket,) = bucket_by_shard(*args)
    return bucket


def write_shard(path: str, first_example_id: int, *buckets: pa.Table) -> int:
    """Ray task body: one shard's buckets -> a Parquet file of its examples by position; its row count."""
    table = pa.concat_tables(buckets).sort_by("example_id")
    ids = table.column("example_id").to_numpy()
    assert ids[0] == first_example_id and (np.diff(ids) == 1).all(), "the shuffle lost or doubled examples"
    filesystem, inner_path = storage.resolve(path)
    filesystem.create_dir(posixpath.dirname(inner_path), recursive=True)
    pq.write_table(
        table.select(list(SHARD_COLUMNS)), inner_path, filesystem=filesystem, row_group_size=ROW_GROUP_ROWS
    )
    return table.num_rows
