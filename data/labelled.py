"""Labelled sets (fine-tuning, probes): read, checked and tokenized once, on the driver.

A set is a CSV (or .tsv), JSONL, Parquet file or a saved HF `datasets` folder, local or in a bucket, with a
text field, an optional second text field (sentence pairs) and a label field. Every problem with them is a
`DataError` raised here, before any worker starts: a missing field (naming the file and the first row
without it), an empty set, an evaluation label that training never saw, a regression label that is not a
number. The texts are tokenized with the model's tokenizer in batches (`encode_batch`) and truncated to the
sequence length; the share truncated is counted for the summary.

The result is columnar (`TokenizedSplit`: one flat array of token ids and the row offsets), so the workers
cut their micro-batches from it with NumPy alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common import storage
from data.errors import DataError

TASKS = ("classification", "regression")
HF_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
# The split of a saved DatasetDict that each role takes, in order of preference.
DICT_SPLITS = {"train": ("train",), "eval": ("validation", "test", "eval", "dev")}


@dataclass(frozen=True)
class Fields:
    text: str = "text"
    pair: str | None = None
    """The second text of a pair (None: single texts)."""
    label: str = "label"

    def names(self) -> list[str]:
        return [self.text, *([self.pair] if self.pair else []), self.label]


@dataclass(frozen=True)
class LabelledRows:
    """A set as read: its texts and raw labels."""

    path: str
    texts: list[str]
    pairs: list[str] | None
    labels: pa.Array


@dataclass(frozen=True)
class TokenizedSplit:
    """Tokenized rows, columnar: row i's tokens are ids[offsets[i]:offsets[i + 1]]."""

    ids: np.ndarray
    """int32 (total tokens,)."""
    token_types: np.ndarray
    """int8 (total tokens,): 0 for the first text, 1 for the second of a pair."""
    offsets: np.ndarray
    """int64 (rows + 1,)."""
    labels: np.ndarray
    """int64 class ids, or float32 numbers (regression)."""
    truncated: int
    """Rows cut to the sequence length."""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, rows: np.ndarray, pad_token_id: int) -> dict[str, np.ndarray]:
        """The rows padded to the longest: input_ids, token_type_ids, attention_mask (B, S), labels (B,)."""
        starts, lengths = self.offsets[rows], self.lengths[rows]
        width = int(lengths.max()) if len(rows) else 1
        positions = np.arange(width)
        real = positions[None, :] < lengths[:, None]  # (B, S)
        gather = np.where(real, starts[:, None] + positions[None, :], 0)  # (B, S) flat token indices
        return {
            "input_ids": np.where(real, self.ids[gather], pad_token_id).astype(np.int64),
            "token_type_ids": np.where(real, self.token_types[gather], 0).astype(np.int64),
            "attention_mask": real.astype(np.int64),
            "labels": self.labels[rows],
        }


@dataclass(frozen=True)
class LabelledData:
    """The train and eval sets of a run, tokenized, and what their labels mean."""

    train: TokenizedSplit
    eval: TokenizedSplit
    task: str
    label_names: list[str] | None
    """Class id -> label as written in the data (classification); None for regression."""
    max_seq_length: int

    @property
    def num_labels(self) -> int:
        return 1 if self.task == "regression" else len(self.label_names)


def load_labelled_data(
    train_path: str, eval_path: str, fields: Fields, task: str, tokenizer, max_seq_length: int
) -> LabelledData:
    """Read, check and tokenize both sets (see the module docstring)."""
    if task not in TASKS:
        raise DataError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    train_rows = read_labelled(train_path, fields, "train")
    eval_rows = read_labelled(eval_path, fields, "eval")
    if task == "classification":
        label_names = class_names(train_rows)
        train_labels = class_ids(train_rows, label_names)
        eval_labels = class_ids(eval_rows, label_names)
    else:
        label_names = None
        train_labels, eval_labels = numbers(train_rows), numbers(eval_rows)
    return LabelledData(
        train=tokenize(train_rows, train_labels, tokenizer, max_seq_length),
        eval=tokenize(eval_rows, eval_labels, tokenizer, max_seq_length),
        task=task,
        label_names=label_names,
        max_seq_length=max_seq_length,
    )


def read_labelled(path: str, fields: Fields, role: str = "train") -> LabelledRows:
    """The texts and labels of the set at `path` (`role`: train or eval, for a DatasetDict's split)."""
    table = read_table(path, role)
    if table.num_rows == 0:
        raise DataError(f"{path} holds no rows: the {role} set must not be empty")
    for name in fields.names():
        if name not in table.column_names:
            flag = {fields.text: "--text-field", fields.pair: "--pair-field", fields.label: "--label-field"}
            raise DataError(
                f"{path}: row 1 has no field {name!r} (its fields: {', '.join(table.column_names)}); "
                f"pass {flag[name]} NAME"
            )
        column = table.column(name).combine_chunks()
        missing = column.is_null()
        if name == fields.label and pa.types.is_string(column.type):
            missing = pc.or_kleene(missing, pc.equal(column, ""))
        if pc.any(missing).as_py():
            row = pc.index(missing, True).as_py() + 1
            raise DataError(f"{path}: row {row} has no {name!r} (the first row without it)")
    texts = _strings(table.column(fields.text))
    pairs = _strings(table.column(fields.pair)) if fields.pair else None
    return LabelledRows(path, texts, pairs, table.column(fields.label).combine_chunks())


def read_table(path: str, role: str) -> pa.Table:
    """A CSV/TSV, JSONL, Parquet file or saved HF dataset folder (local or bucket) as an Arrow table."""
    if not storage.exists(path):
        raise DataError(f"{path} does not exist")
    if any(storage.is_file(storage.join(path, marker)) for marker in HF_DATASET_MARKERS):
        with storage.local_input(path) as local:
            return _read_hf_dataset(local, path, role)
    extension = os.path.splitext(path.rstrip("/"))[1].lower()
    filesystem, inner = storage.resolve(path)
    try:
        if extension in (".csv", ".tsv"):
            import pyarrow.csv as csv

            delimiter = "\t" if extension == ".tsv" else ","
            with filesystem.open_input_stream(inner) as stream:
                return csv.read_csv(stream, parse_options=csv.ParseOptions(delimiter=delimiter))
        if extension in (".jsonl", ".json"):
            import pyarrow.json as pajson

            try:
                with filesystem.open_input_stream(inner) as stream:
                    return pajson.read_json(stream)
            except pa.ArrowInvalid as error:
                if "changed from" not in str(error):
                    raise
                return _read_mixed_jsonl(filesystem, inner)  # a field of numbers and strings
        if extension == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(inner, filesystem=filesystem)
    except pa.ArrowInvalid as error:
        raise DataError(f"{path}: cannot read it as {extension[1:].upper()}: {error}") from None
    raise DataError(
        f"{path}: unknown format; give a .csv, .tsv, .jsonl, .json (one object a line) or .parquet file, or "
        "a folder saved by HF datasets (save_to_disk)"
    )


def _read_mixed_jsonl(filesystem, inner: str) -> pa.Table:
    """JSONL whose fields mix types from row to row (labels 1 and "2"): such a field is read as strings."""
    import json

    with filesystem.open_input_stream(inner) as stream:
        rows = [json.loads(line) for line in stream.read().decode("utf-8").splitlines() if line.strip()]
    names = list(dict.fromkeys(name for row in rows for name in row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.table(columns)


def _read_hf_dataset(local: str, path: str, role: str) -> pa.Table:
    import datasets

    loaded = datasets.load_from_disk(local)
    if isinstance(loaded, datasets.DatasetDict):
        split = next((name for name in DICT_SPLITS[role] if name in loaded), None)
        if split is None and len(loaded) == 1:
            split = next(iter(loaded))
        if split is None:
            raise DataError(
                f"{path} holds the splits {', '.join(loaded)}; the {role} set takes "
                f"{' or '.join(DICT_SPLITS[role])}: save the split you mean on its own"
            )
        loaded = loaded[split]
    return loaded.with_format("arrow")[:]


def _strings(column: pa.ChunkedArray) -> list[str]:
    return column.cast(pa.string()).to_pylist()


def class_names(rows: LabelledRows) -> list[str]:
    """The training set's labels in class-id order: integers in numeric order, strings sorted."""
    labels = _integer_labels(rows)
    unique = pc.unique(labels).to_pylist()
    if len(unique) < 2:
        raise DataError(
            f"{rows.path}: every row has the label {unique[0]!r}; classification needs two labels or more"
        )
    return [str(label) for label in sorted(unique)]


def class_ids(rows: LabelledRows, names: list[str]) -> np.ndarray:
    """Each row's class id; an error naming the first row whose label training never saw."""
    as_text = _integer_labels(rows).cast(pa.string())
    ids = pc.index_in(as_text, value_set=pa.array(names))
    if ids.null_count:
        row = pc.index(ids.is_null(), True).as_py()
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise DataError(
            f"{rows.path}: row {row + 1} has the label {as_text[row].as_py()!r}, which no training row has "
            f"(training labels: {shown})"
        )
    return ids.to_numpy(zero_copy_only=False).astype(np.int64)


def _integer_labels(rows: LabelledRows) -> pa.Array:
    """Class labels as strings or integers; whole floats (1.0, as some readers give) become integers."""
    labels = rows.labels
    if pa.types.is_floating(labels.type):
        values = labels.to_numpy(zero_copy_only=False)
        if not np.all(values == np.round(values)):
            raise DataError(
                f"{rows.path}: the labels are fractional numbers ({values[values != np.round(values)][0]}); "
                "for a numeric target pass --task regression"
            )
        return pa.array(values.astype(np.int64))
    if pa.types.is_integer(labels.type) or pa.types.is_string(labels.type):
        return labels
    return labels.cast(pa.string())


def numbers(rows: LabelledRows) -> np.ndarray:
    """Regression targets as float32; an error naming the first row whose label is not a number."""
    labels = rows.labels
    if pa.types.is_integer(labels.type) or pa.types.is_floating(labels.type):
        values = labels.to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        values = np.array([_number_or_nan(v) for v in labels.cast(pa.string()).to_pylist()])
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"{rows.path}: row {row + 1} has the label {labels[row].as_py()!r}, which is not a number "
            "(--task regression needs numeric labels)"
        )
    return values.astype(np.float32)


def _number_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def tokenize(rows: LabelledRows, labels: np.ndarray, tokenizer, max_seq_length: int) -> TokenizedSplit:
    """The rows' tokens with [CLS]/[SEP] (and segment ids for pairs), cut to `max_seq_length`."""
    tokenizer.enable_truncation(max_length=max_seq_length, strategy="longest_first")
    try:
        inputs = rows.texts if rows.pairs is None else list(zip(rows.texts, rows.pairs, strict=True))
        encodings = tokenizer.encode_batch(inputs)
    finally:
        tokenizer.no_truncation()
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    ids = np.concatenate([np.asarray(e.ids, dtype=np.int32) for e in encodings])
    types = np.concatenate([np.asarray(e.type_ids, dtype=np.int8) for e in encodings])
    truncated = sum(1 for e in encodings if e.overflowing)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedSplit(ids, types, offsets, labels, truncated)
