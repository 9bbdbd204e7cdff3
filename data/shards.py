"""Even Parquet shards of a sorted example dataset, with a stable `example_id` (the row's global position).

The sorted dataset's blocks are cut into shards whose sizes differ by at most one example; one Ray task writes
each shard from slices of the blocks it spans, so no block boundary shows in the output.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data import storage
from data.errors import DataError

SHARD_COLUMNS = ("example_id", "input_ids", "token_type_ids", "next_sentence_label")


@dataclass
class WrittenSplit:
    examples: int
    tokens: int
    truncated: int
    paths: list[str]
    """Shard paths relative to the prepared directory."""


def shard_sizes(num_examples: int, examples_per_shard: int) -> list[int]:
    """Sizes of ceil(n / examples_per_shard) shards that differ by at most one."""
    num_shards = max(1, math.ceil(num_examples / examples_per_shard))
    base, extra = divmod(num_examples, num_shards)
    return [base + (1 if shard < extra else 0) for shard in range(num_shards)]


def write_shards(sorted_examples, prepared_dir: str, split: str, examples_per_shard: int) -> WrittenSplit:
    """Write `sorted_examples` (a Ray Dataset) as prepared_dir/split/shard-NNNNN.parquet."""
    import ray

    blocks: list[tuple[object, int]] = []
    for bundle in sorted_examples.materialize().iter_internal_ref_bundles():
        blocks.extend((entry.ref, entry.metadata.num_rows) for entry in bundle.blocks)
    block_starts = np.cumsum([0] + [rows for _, rows in blocks])
    num_examples = int(block_starts[-1])
    if num_examples == 0:
        raise DataError(
            f"the {split} split produced no examples; check the corpus (are its documents empty?)"
        )
    write_shard = ray.remote(_write_shard)
    pending, paths = [], []
    shard_start = 0
    for shard, size in enumerate(shard_sizes(num_examples, examples_per_shard)):
        relative_path = f"{split}/shard-{shard:05d}.parquet"
        shard_end = shard_start + size
        spans, refs = [], []
        for index, (block_ref, _) in enumerate(blocks):
            low = max(shard_start, block_starts[index])
            high = min(shard_end, block_starts[index + 1])
            if low < high:
                spans.append((int(low - block_starts[index]), int(high - low)))
                refs.append(block_ref)
        pending.append(
            write_shard.remote(storage.join(prepared_dir, relative_path), shard_start, spans, *refs)
        )
        paths.append(relative_path)
        shard_start = shard_end
    stats = ray.get(pending)
    return WrittenSplit(
        examples=num_examples,
        tokens=sum(tokens for tokens, _ in stats),
        truncated=sum(truncated for _, truncated in stats),
        paths=paths,
    )


def _write_shard(path: str, first_example_id: int, spans: list[tuple[int, int]], *blocks) -> tuple[int, int]:
    """Ray task: the slices of the blocks that make one shard -> a Parquet file; (tokens, truncated)."""
    from ray.data.block import BlockAccessor

    pieces = [
        BlockAccessor.for_block(block).to_arrow().slice(offset, length)
        for block, (offset, length) in zip(blocks, spans, strict=True)
    ]
    table = pa.concat_tables(pieces)
    example_ids = pa.array(np.arange(first_example_id, first_example_id + table.num_rows, dtype=np.int64))
    table = table.append_column("example_id", example_ids)
    tokens = int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0)
    truncated = int(pc.sum(table.column("truncated").cast(pa.int64())).as_py() or 0)
    filesystem, inner_path = storage.resolve(path)
    filesystem.create_dir(posixpath.dirname(inner_path), recursive=True)
    pq.write_table(table.select(list(SHARD_COLUMNS)), inner_path, filesystem=filesystem)
    return tokens, truncated
