"""The training stream: prepared shards -> Ray Data reads and masks -> a rank's rows -> padded torch batches.

Every rank of a run executes its own Ray Dataset (`rank_train_stream`): its read tasks run anywhere in the
cluster (its own node first), each reading one window of the rank's slice of the epoch order
(`data.order`), masking it and handing it over in step order, with Ray Data's prefetch and a bounded object
store budget per rank. What a rank reads is fixed by the plan; no actor sits between the shards and the
ranks. `rank_eval_stream` gives each rank a contiguous slice of the held-out split.

`build_train_dataset` is the whole split in its written order (for `data inspect`, `eval` and tests).
`make_collate_fn` pads a batch of unpadded rows into the batch schema of `common.batch`, to the longest
example of the batch or to `max_seq_length`; the trainer cuts its rows with `ExactBatches` and pads each cut
with the collate function's `collate_table`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.collate_fn import NumpyBatchCollateFn
from tokenizers import Tokenizer

from common import storage
from common.batch import IGNORE_INDEX
from data.config import MaskingConfig
from data.errors import DataError
from data.manifest import TOKENIZER_DIR, Manifest, load_manifest
from data.masking import MaskingVocab, mask_tokens
from data.order import EpochOrder, batch_slices
from data.shards import shard_sizes
from data.tokenizer import load_tokenizer, tokenizer_hash

_READ_BATCH_ROWS = 8192
_BLOCK_ROWS = 8192
"""Rows of a block a rank's stream hands over (whole steps): a window's rows leave its task in pieces."""
_EVAL_TASK_ROWS = 65536
_RANK_STREAM_MEMORY = 512 * 1024**2
"""Object store bytes one rank's stream may hold (blocks read ahead and not yet consumed)."""

STREAM_COLUMNS = (
    "example_id",
    "input_ids",
    "token_type_ids",
    "attention_mask",
    "mlm_labels",
    "next_sentence_label",
)
"""Rows of the streams. next_sentence_label is 0 = B follows A, 1 = random; the "mlm" objective writes 0
everywhere (and the model runs with NSP off)."""


@dataclass(frozen=True)
class PreparedSplit:
    """What a stream needs to read and mask a split: its shards, their sizes and the masking vocabulary."""

    shard_paths: tuple[str, ...]
    shard_sizes: tuple[int, ...]
    vocab: MaskingVocab

    @property
    def num_examples(self) -> int:
        return sum(self.shard_sizes)


def load_split(prepared_dir: str, split: str = "train") -> PreparedSplit:
    """Read the manifest and the tokenizer copy of `prepared_dir` once (checked against each other)."""
    manifest = load_manifest(prepared_dir)
    if split not in manifest.shards:
        raise DataError(
            f"{prepared_dir} has no {split!r} split (it has {', '.join(manifest.shards)}); "
            "prepare with --eval-fraction F > 0 for an eval split"
        )
    tokenizer_dir = storage.join(prepared_dir, TOKENIZER_DIR)
    tokenizer = load_tokenizer(tokenizer_dir)
    _check_tokenizer(manifest, prepared_dir, tokenizer_dir, tokenizer)
    vocab = MaskingVocab.from_tokenizer(tokenizer)
    if len(vocab.is_special) < manifest.vocab_size:
        raise DataError(f"the tokenizer copy in {prepared_dir} is damaged; run `bert-pretrain prepare` again")
    paths = manifest.shards[split]
    sizes = shard_sizes(manifest.counts["examples"][split], manifest.settings.examples_per_shard)
    if len(sizes) != len(paths):
        raise DataError(
            f"{prepared_dir}'s manifest lists {len(paths)} {split} shards for {len(sizes)}; "
            "run `bert-pretrain prepare` again"
        )
    return PreparedSplit(tuple(storage.join(prepared_dir, path) for path in paths), tuple(sizes), vocab)


def check_tokenizer(prepared_dir: str, tokenizer_dir: str) -> None:
    """Raise a DataError when `tokenizer_dir` is not the tokenizer `prepared_dir` was made with."""
    _check_tokenizer(load_manifest(prepared_dir), prepared_dir, tokenizer_dir, load_tokenizer(tokenizer_dir))


def _check_tokenizer(manifest: Manifest, prepared_dir: str, tokenizer_dir: str, tokenizer: Tokenizer) -> None:
    actual = tokenizer_hash(tokenizer)
    if actual != manifest.tokenizer_hash:
        raise DataError(
            f"the tokenizer at {tokenizer_dir} (hash {actual}) is not the one {prepared_dir} was prepared "
            f"with (hash {manifest.tokenizer_hash}); use {storage.join(prepared_dir, TOKENIZER_DIR)} or "
            f"prepare again with `bert-pretrain prepare --tokenizer {tokenizer_dir}`"
        )


def rank_train_stream(
    split: PreparedSplit,
    order: EpochOrder,
    masking: MaskingConfig,
    rank: int,
    world_size: int,
    epoch: int,
    step: int,
    num_steps: int,
):
    """Rank `rank`'s rows of the `num_steps` global batches from (epoch, step) on, as a Ray Dataset in step
    order: its `batch_slices` share of each batch, masked with the batch's epoch."""
    start, stop = batch_slices(order.global_batch_size, world_size)[rank]
    units = [{"epoch": e, "first": a, "stop": b} for e, a, b in order.units(epoch, step, num_steps)]
    kwargs = {"split": split, "order": order, "masking": masking, "start": start, "stop": stop}
    return _rank_dataset(units, read_and_mask_steps, kwargs)


def rank_eval_stream(split: PreparedSplit, masking: MaskingConfig, seed: int, rank: int, world_size: int):
    """Rank `rank`'s contiguous slice of a held-out split, masked as epoch 0, as a Ray Dataset."""
    start, stop = batch_slices(split.num_examples, world_size)[rank]
    ranges = [
        {"first": a, "stop": min(a + _EVAL_TASK_ROWS, stop)} for a in range(start, stop, _EVAL_TASK_ROWS)
    ]
    kwargs = {"split": split, "masking": masking, "seed": seed}
    return _rank_dataset(ranges, read_and_mask_range, kwargs)


def _rank_dataset(items: list[dict], udf, fn_kwargs: dict):
    """One task per item, blocks out in the items' order. The process that iterates the dataset executes it
    and submits its tasks, so Ray's scheduler places them on its node first, where the input items are."""
    import ray.data

    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        udf,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs=fn_kwargs,
        # One task reading ahead of the one being consumed.
        compute=ray.data.TaskPoolStrategy(size=min(2, max(1, len(items)))),
    )
    context = dataset.context  # the dataset's own copy
    context.execution_options = ray.data.ExecutionOptions(
        preserve_order=True,
        verbose_progress=False,
        resource_limits=ray.data.ExecutionResources(object_store_memory=_RANK_STREAM_MEMORY),
    )
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return dataset


def read_and_mask_steps(
    units: pa.Table, split: PreparedSplit, order: EpochOrder, masking: MaskingConfig, start: int, stop: int
) -> Iterator[pa.Table]:
    """Ray Data UDF: (epoch, first, stop) steps -> the masked rows of batch positions [start, stop) of those
    steps, step after step, in blocks of whole steps."""
    block = max(1, _BLOCK_ROWS // (stop - start)) * (stop - start)
    for epoch, first, last in zip(
        *(units.column(c).to_pylist() for c in ("epoch", "first", "stop")), strict=True
    ):
        rows = read_examples(split, order.examples(epoch, first, last, start, stop).reshape(-1))
        for offset in range(0, rows.num_rows, block):  # masked a block at a time: the first leaves sooner
            yield mask_batch(rows.slice(offset, block), order.seed, epoch, masking, split.vocab)


def read_and_mask_range(
    ranges: pa.Table, split: PreparedSplit, masking: MaskingConfig, seed: int
) -> Iterator[pa.Table]:
    """Ray Data UDF: (first, stop) example ranges -> their rows masked as epoch 0, in blocks."""
    for first, last in zip(
        ranges.column("first").to_pylist(), ranges.column("stop").to_pylist(), strict=True
    ):
        rows = read_examples(split, np.arange(first, last))
        for offset in range(0, rows.num_rows, _BLOCK_ROWS):
            yield mask_batch(rows.slice(offset, _BLOCK_ROWS), seed, 0, masking, split.vocab)


def read_examples(split: PreparedSplit, indices: np.ndarray) -> pa.Table:
    """The prepared rows of the examples at `indices` (positions in the split), in that order. Each shard is
    opened once and only its row groups that hold a wanted row are read."""
    shard_starts = np.concatenate([[0], np.cumsum(split.shard_sizes)])
    shard_of = np.searchsorted(shard_starts, indices, side="right") - 1
    by_shard = np.argsort(shard_of, kind="stable")
    pieces = []
    for shard in np.unique(shard_of):
        local = indices[shard_of == shard] - shard_starts[shard]
        filesystem, inner_path = storage.resolve(split.shard_paths[shard])
        parquet = pq.ParquetFile(inner_path, filesystem=filesystem)
        group_rows = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
        group_starts = np.concatenate([[0], np.cumsum(group_rows)])
        group_of = np.searchsorted(group_starts, local, side="right") - 1
        groups = np.unique(group_of)
        table = parquet.read_row_groups(groups.tolist())
        # Row r of group g sits after the rows of the groups read before g.
        read_before = np.concatenate([[0], np.cumsum([group_rows[g] for g in groups])])
        at = read_before[np.searchsorted(groups, group_of)] + local - group_starts[group_of]
        pieces.append(table.take(pa.array(at)))
    rows = pa.concat_tables(pieces)
    return rows.take(pa.array(np.argsort(by_shard, kind="stable")))


def build_train_dataset(
    prepared_dir: str,
    masking: MaskingConfig | None = None,
    seed: int = 0,
    epoch: int = 0,
    split: str = "train",
):
    """The masked examples of a whole split in their written order, as a Ray Dataset (rows: STREAM_COLUMNS,
    unpadded)."""
    import ray.data

    masking = masking or MaskingConfig()
    masking.validate()
    prepared = load_split(prepared_dir, split)
    # One task per shard reads it with pyarrow and masks it: the shards are ours (even, with known counts),
    # and `ray.data.read_parquet` would sample files with remote tasks, seconds on a small cluster.
    return ray.data.from_items(
        list(prepared.shard_paths), override_num_blocks=len(prepared.shard_paths)
    ).map_batches(
        read_and_mask_shards,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"seed": seed, "epoch": epoch, "config": masking, "vocab": prepared.vocab},
    )


def read_and_mask_shards(
    paths: pa.Table, seed: int, epoch: int, config: MaskingConfig, vocab: MaskingVocab
) -> Iterator[pa.Table]:
    """Ray Data UDF: shard paths (column `item`) -> their masked rows, in tables of `_READ_BATCH_ROWS` (so
    that a shard of any size streams in bounded memory)."""
    for path in paths.column("item").to_pylist():
        filesystem, inner_path = storage.resolve(path)
        shard = pq.ParquetFile(inner_path, filesystem=filesystem)
        for rows in shard.iter_batches(batch_size=_READ_BATCH_ROWS):
            yield mask_batch(pa.Table.from_batches([rows]), seed, epoch, config, vocab)


def mask_batch(
    batch: pa.Table, seed: int, epoch: int, config: MaskingConfig, vocab: MaskingVocab
) -> pa.Table:
    """Ray Data UDF: prepared rows -> masked rows (still unpadded)."""
    input_ids = batch.column("input_ids").combine_chunks()
    offsets = input_ids.offsets.to_numpy().astype(np.int64)
    flat_ids = input_ids.values.to_numpy()
    if offsets[0] != 0:  # a sliced list array: rebase onto its own values
        flat_ids = flat_ids[offsets[0] : offsets[-1]]
        offsets = offsets - offsets[0]
    example_ids = batch.column("example_id").to_numpy()
    masked, labels = mask_tokens(flat_ids, offsets, example_ids, seed, epoch, config, vocab)
    pa_offsets = pa.array(offsets.astype(np.int32))
    token_type_ids = batch.column("token_type_ids").combine_chunks()
    return pa.table(
        {
            "example_id": batch.column("example_id"),
            "input_ids": pa.ListArray.from_arrays(pa_offsets, pa.array(masked)),
            "token_type_ids": pa.ListArray.from_arrays(pa_offsets, token_type_ids.flatten()),
            "attention_mask": pa.ListArray.from_arrays(pa_offsets, pa.array(np.ones(len(masked), np.int8))),
            "mlm_labels": pa.ListArray.from_arrays(pa_offsets, pa.array(labels)),
            "next_sentence_label": batch.column("next_sentence_label"),
        }
    )


class PadAndCollate(NumpyBatchCollateFn):
    """Unpadded masked rows (numpy) -> the padded torch batch (`common.batch.MODEL_INPUTS`)."""

    def __init__(self, masking: MaskingConfig, max_seq_length: int, pad_token_id: int) -> None:
        super().__init__()
        self.masking = masking
        self.max_seq_length = max_seq_length
        self.pad_token_id = pad_token_id

    def padded_length(self, longest: int) -> int:
        if self.masking.pad_to == "max_length":
            return self.max_seq_length
        multiple = self.masking.pad_to_multiple_of
        return min(self.max_seq_length, -(-longest // multiple) * multiple) if longest else multiple

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        rows = _rows(batch["input_ids"])
        lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
        columns = ("input_ids", "token_type_ids", "mlm_labels")
        values = {name: _concatenate(_rows(batch[name])) for name in columns}
        return self._padded(lengths, values, batch["next_sentence_label"])

    def collate_table(self, table: pa.Table) -> dict:
        """The same padded batch from an Arrow table of stream rows (a slice of a worker's shard)."""
        lengths = pc.list_value_length(table.column("input_ids")).to_numpy()
        columns = ("input_ids", "token_type_ids", "mlm_labels")
        values = {name: pc.list_flatten(table.column(name)).to_numpy() for name in columns}
        return self._padded(lengths, values, table.column("next_sentence_label").to_numpy())

    def _padded(self, lengths: np.ndarray, values: dict[str, np.ndarray], nsp_labels: np.ndarray) -> dict:
        """Rows given as lengths and their concatenated values -> padded [B, S] int64 tensors."""
        import torch

        longest = int(lengths.max(initial=0))
        width = max(self.padded_length(longest), longest)
        inside = np.arange(width)[None, :] < lengths[:, None]  # (B, S)
        fills = {"input_ids": self.pad_token_id, "token_type_ids": 0, "mlm_labels": IGNORE_INDEX}
        batch = {}
        for name, fill in fills.items():
            padded = np.full((len(lengths), width), fill, dtype=np.int64)
            padded[inside] = values[name]
            batch[name] = torch.from_numpy(padded)
        batch["attention_mask"] = torch.from_numpy(inside.astype(np.int64))
        batch["next_sentence_label"] = torch.from_numpy(np.asarray(nsp_labels, dtype=np.int64))
        return batch


class ExactBatches:
    """Cuts a stream of Arrow tables (a worker's Ray Data blocks) into batches of exactly the sizes asked
    for, which may change from batch to batch (uneven shares of a global batch)."""

    def __init__(self, tables: Iterable[pa.Table]) -> None:
        self._tables = iter(tables)
        self._pending: pa.Table | None = None

    def take(self, count: int) -> pa.Table:
        """The next `count` rows; a DataError when the stream ends first."""
        parts = [self._pending] if self._pending is not None else []
        available = sum(part.num_rows for part in parts)
        while available < count:
            table = next(self._tables, None)
            if table is None:
                raise DataError(f"the data shard ended {count - available} rows short of a batch")
            parts.append(table)
            available += table.num_rows
        joined = pa.concat_tables(parts)
        self._pending = joined.slice(count)
        return joined.slice(0, count)

    def close(self) -> None:
        """Stop the stream (and its prefetching) when the rest is not needed."""
        close = getattr(self._tables, "close", None)
        if close is not None:
            close()


def _rows(column: np.ndarray) -> list[np.ndarray] | np.ndarray:
    """List column as Ray hands it over: an object array of arrays (ragged) or a 2-D array (same lengths)."""
    return list(column) if column.dtype == object else column


def _concatenate(rows: list[np.ndarray] | np.ndarray) -> np.ndarray:
    return np.concatenate(rows) if len(rows) else np.zeros(0, dtype=np.int64)


def make_collate_fn(
    masking: MaskingConfig | None, max_seq_length: int, pad_token_id: int = 0
) -> PadAndCollate:
    """collate_fn for `iter_torch_batches`: int64 input_ids, token_type_ids, attention_mask, mlm_labels [B, S]
    and next_sentence_label [B], padded per `masking.pad_to` (labels -100 and attention 0 on padding)."""
    masking = masking or MaskingConfig()
    masking.validate()
    return PadAndCollate(masking, max_seq_length, pad_token_id)
