"""`prepare`: the Ray Data pipeline from corpus files to Parquet shards of examples and manifest.json.

Stages: read documents -> normalise, split sentences, tokenize (batched, in Ray Data tasks) -> assign each
document to train or eval by a hash -> plan the examples of each document -> fetch the random Bs (a second
pass: requests and their donor documents meet in a sort on the donor's key) -> sort by (document,
example) -> even shards. Every random choice is seeded by (seed, document key, ...), documents are keyed by a
hash of their text, and the random B's document is drawn by index over the sorted table of keys, so the
output does not depend on blocks, CPUs or the order in which tasks finish.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import posixpath
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data import storage
from data.config import PrepareConfig
from data.errors import DataError
from data.examples import (
    NSP_CONTINUATION,
    NSP_RANDOM,
    assemble_pair,
    pack_sentences,
    plan_pair_examples,
    take_random_b,
    truncate_pair,
)
from data.hashing import combine, stream_key, text_key, to_unit_float
from data.manifest import MANIFEST_FILE, TOKENIZER_DIR, Manifest
from data.readers import read_documents, resolve_corpus
from data.sentences import document_sentences, normalize_text
from data.shards import write_shards
from data.tokenizer import copy_tokenizer, load_tokenizer, special_token_ids, tokenizer_hash

_TOKENIZE_BATCH_DOCUMENTS = 128
_PLAN_COLUMNS = {
    "doc_key": pa.uint64(),
    "example_index": pa.int32(),
    "next_sentence_label": pa.int8(),
    "tokens_a": pa.list_(pa.int32()),
    "tokens_b": pa.list_(pa.int32()),
    "donor_key": pa.uint64(),
    "donor_start_share": pa.float64(),
    "target_b_length": pa.int32(),
}
_PLAN_SCHEMA = pa.schema(_PLAN_COLUMNS)
_GROUP_SCHEMA = pa.schema(
    {
        **_PLAN_COLUMNS,
        "group_key": pa.uint64(),
        "is_donor": pa.bool_(),
        "sentence_lengths": pa.list_(pa.int32()),
    }
)
EXAMPLE_SCHEMA = pa.schema(
    {
        "doc_key": pa.uint64(),
        "example_index": pa.int32(),
        "input_ids": pa.list_(pa.int32()),
        "token_type_ids": pa.list_(pa.int8()),
        "next_sentence_label": pa.int8(),
        "truncated": pa.bool_(),
    }
)


def prepare(
    corpus: list[str], tokenizer_dir: str, out_dir: str, config: PrepareConfig | None = None
) -> Manifest:
    """Prepare `corpus` with the tokenizer at `tokenizer_dir` into `out_dir` (see the module docstring).

    Writes out_dir/train/*.parquet, out_dir/eval/*.parquet (when eval_fraction > 0), out_dir/tokenizer/ and
    out_dir/manifest.json, built in a staging directory and moved into place once complete. `out_dir` may be
    a bucket URI (s3://...), which every node of a cluster can read.
    """
    config = config or PrepareConfig()
    config.validate()
    started = time.perf_counter()
    files = resolve_corpus(corpus, config.input_format)
    tokenizer = load_tokenizer(tokenizer_dir)
    special_ids = special_token_ids(tokenizer)
    _check_out_dir(out_dir)
    _ensure_ray()
    with _sort_based_shuffles():
        manifest = _prepare_into(
            corpus, files, tokenizer_dir, tokenizer, special_ids, out_dir, config, started
        )
    print(format_summary(manifest, out_dir))
    return manifest


def _prepare_into(corpus, files, tokenizer_dir, tokenizer, special_ids, out_dir, config, started) -> Manifest:
    base = out_dir if storage.is_uri(out_dir) else os.path.abspath(out_dir)
    staging = f"{base.rstrip('/')}.partial-{uuid.uuid4().hex[:8]}"
    try:
        copy_tokenizer(tokenizer_dir, storage.join(staging, TOKENIZER_DIR))
        documents = tokenize_documents(
            read_documents(files, config.text_field, config.num_blocks),
            tokenizer.to_str(),
            one_sentence_per_line=files.input_format == "bert",
        ).materialize()
        table = DocumentTable.collect(documents, config)
        counts = table.counts()
        counts["input_bytes"] = files.total_bytes
        counts["examples"] = {}
        shards: dict[str, list[str]] = {}
        for split in table.splits():
            examples = build_examples(documents, table, split, config, special_ids)
            written = write_shards(examples, staging, split, config.examples_per_shard)
            counts["examples"][split] = written.examples
            counts["tokens"] = counts.get("tokens", 0) + written.tokens
            counts["truncated"] = counts.get("truncated", 0) + written.truncated
            shards[split] = written.paths
        manifest = Manifest(
            vocab_size=tokenizer.get_vocab_size(),
            tokenizer_hash=tokenizer_hash(storage.join(staging, TOKENIZER_DIR)),
            settings=config,
            special_token_ids=special_ids,
            counts=counts,
            shards=shards,
            corpus=list(corpus),
            elapsed_seconds=round(time.perf_counter() - started, 3),
        )
        storage.write_text(storage.join(staging, MANIFEST_FILE), manifest.to_json())
        _publish(staging, out_dir)
    finally:
        storage.remove_dir(staging)
    return manifest


@contextlib.contextmanager
def _sort_based_shuffles():
    """Sorts by sort-based shuffle tasks: on a small cluster Ray's default hash shuffle (with
    its aggregator actors) costs seconds per stage, ten times the work here."""
    from ray.data.context import DataContext, ShuffleStrategy

    context = DataContext.get_current()
    previous = context.shuffle_strategy
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        context.shuffle_strategy = previous


def format_summary(manifest: Manifest, out_dir: str) -> str:
    counts = manifest.counts
    examples = ", ".join(f"{split} {n:,}" for split, n in counts["examples"].items())
    seconds = max(manifest.elapsed_seconds, 1e-9)
    return (
        f"prepared {out_dir}: documents {counts['documents']:,}, sentences {counts['sentences']:,}, "
        f"examples {examples}, tokens {counts['tokens']:,}, truncated {counts['truncated']:,}, "
        f"dropped {counts['dropped']:,}, replaced {counts['replaced']:,}; "
        f"{manifest.elapsed_seconds:.1f} s, {counts['input_bytes'] / 1e6 / seconds:.2f} MB/s"
    )


def _check_out_dir(out_dir: str) -> None:
    files = storage.list_files(out_dir)
    if files and MANIFEST_FILE not in files:
        raise DataError(
            f"{out_dir} exists and is not a prepared directory; choose another --out or empty it "
            "(a prepared directory, with manifest.json, is replaced)"
        )


def _publish(staging: str, out_dir: str) -> None:
    """Move the finished staging directory into place; a previous prepared directory there is replaced."""
    if storage.is_uri(out_dir):
        _publish_to_bucket(staging, out_dir)
    elif os.path.isdir(out_dir):
        retired = f"{staging}.old"
        os.rename(out_dir, retired)
        os.rename(staging, out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
        os.rename(staging, out_dir)


def _publish_to_bucket(staging: str, out_dir: str) -> None:
    """A bucket has no rename: the old manifest goes first (no reader mixes old and new shards), then the
    new files move in (server-side copies) with the manifest last, then the old files that remain go."""
    filesystem, staging_inner = storage.resolve(staging)
    _, out_inner = storage.resolve(out_dir)
    old_files = storage.list_files(out_dir)
    if MANIFEST_FILE in old_files:
        filesystem.delete_file(posixpath.join(out_inner, MANIFEST_FILE))
    new_files = storage.list_files(staging)
    for relative in sorted(new_files, key=lambda path: path == MANIFEST_FILE):
        filesystem.move(posixpath.join(staging_inner, relative), posixpath.join(out_inner, relative))
    for relative in set(old_files) - set(new_files):
        filesystem.delete_file(posixpath.join(out_inner, relative))


def _ensure_ray() -> None:
    from data.local_ray import init_ray

    init_ray(include_dashboard=False)


# --- stage 1: documents -> tokenized sentences -------------------------------------------------------------

_TOKENIZER_CACHE: dict[int, object] = {}


def _cached_tokenizer(tokenizer_json: str):
    from tokenizers import Tokenizer

    key = hash(tokenizer_json)
    if key not in _TOKENIZER_CACHE:
        # Ray runs a task per CPU: the tokenizer's own thread pool would only oversubscribe the CPUs.
        os.environ.setdefault("RAYON_NUM_THREADS", "1")
        _TOKENIZER_CACHE[key] = Tokenizer.from_str(tokenizer_json)
    return _TOKENIZER_CACHE[key]


def tokenize_documents(documents, tokenizer_json: str, one_sentence_per_line: bool):
    """Ray Dataset of documents -> doc_key, token_ids (all sentences), sentence_lengths and counts."""
    # Whole blocks: with a batch size, Ray would fuse this stage with the reader's and hand one task several
    # read ranges at once, leaving the other CPUs idle.
    return documents.map_batches(
        _tokenize_block,
        batch_size=None,
        batch_format="pyarrow",
        fn_kwargs={"tokenizer_json": tokenizer_json, "one_sentence_per_line": one_sentence_per_line},
    )


def _tokenize_block(block: pa.Table, tokenizer_json: str, one_sentence_per_line: bool) -> Iterator[pa.Table]:
    """A few documents at a time: the tokenizer's encodings take far more memory than the text."""
    for start in range(0, block.num_rows, _TOKENIZE_BATCH_DOCUMENTS):
        batch = block.slice(start, _TOKENIZE_BATCH_DOCUMENTS)
        yield _tokenize_batch(batch, tokenizer_json, one_sentence_per_line)


def _tokenize_batch(batch: pa.Table, tokenizer_json: str, one_sentence_per_line: bool) -> pa.Table:
    tokenizer = _cached_tokenizer(tokenizer_json)
    texts = [normalize_text(text) for text in batch.column("text").to_pylist()]
    sentences_per_document = [document_sentences(text, one_sentence_per_line) for text in texts]
    flat_sentences = [sentence for sentences in sentences_per_document for sentence in sentences]
    encodings = tokenizer.encode_batch(flat_sentences, add_special_tokens=False) if flat_sentences else []
    token_ids, sentence_lengths, lengths_offsets, token_offsets = [], [], [0], [0]
    position = 0
    for sentences in sentences_per_document:
        for encoding in encodings[position : position + len(sentences)]:
            if encoding.ids:  # a sentence of only unknown control characters has no tokens
                token_ids.extend(encoding.ids)
                sentence_lengths.append(len(encoding.ids))
        position += len(sentences)
        lengths_offsets.append(len(sentence_lengths))
        token_offsets.append(len(token_ids))
    lengths_offsets_array = np.array(lengths_offsets, dtype=np.int32)
    token_offsets_array = np.array(token_offsets, dtype=np.int64)
    return pa.table(
        {
            "doc_key": pa.array([text_key(text) for text in texts], pa.uint64()),
            "token_ids": pa.LargeListArray.from_arrays(token_offsets_array, pa.array(token_ids, pa.int32())),
            "sentence_lengths": pa.ListArray.from_arrays(
                lengths_offsets_array, pa.array(sentence_lengths, pa.int32())
            ),
            "n_sentences": pa.array(np.diff(lengths_offsets_array), pa.int32()),
            "n_tokens": pa.array(np.diff(token_offsets_array), pa.int64()),
            "n_bytes": pa.array([len(text.encode("utf-8")) for text in texts], pa.int64()),
            "replaced": batch.column("replaced"),
        }
    )


# --- stage 2: the table of documents and the splits --------------------------------------------------------


def eval_mask(doc_keys: np.ndarray, seed: int, eval_fraction: float) -> np.ndarray:
    """Which documents are held out: a hash of (seed, document key) below `eval_fraction`."""
    return to_unit_float(combine(stream_key(seed, "eval-split"), doc_keys)) < eval_fraction


@dataclass
class DocumentTable:
    """The keys and counts of all documents, collected on the driver (8 bytes a document in the tables)."""

    doc_keys: np.ndarray
    n_sentences: np.ndarray
    n_tokens: np.ndarray
    replaced: np.ndarray
    is_eval: np.ndarray
    config: PrepareConfig

    @classmethod
    def collect(cls, documents, config: PrepareConfig) -> DocumentTable:
        columns = ["doc_key", "n_sentences", "n_tokens", "replaced"]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in columns}
        for batch in documents.select_columns(columns).iter_batches(batch_format="numpy", batch_size=1 << 16):
            for name in columns:
                parts[name].append(batch[name])
        values = {name: np.concatenate(parts[name]) if parts[name] else np.zeros(0) for name in columns}
        doc_keys = values["doc_key"].astype(np.uint64)
        return cls(
            doc_keys=doc_keys,
            n_sentences=values["n_sentences"].astype(np.int64),
            n_tokens=values["n_tokens"].astype(np.int64),
            replaced=values["replaced"].astype(np.int64),
            is_eval=eval_mask(doc_keys, config.seed, config.eval_fraction),
            config=config,
        )

    def counts(self) -> dict:
        kept = self.n_sentences > 0
        return {
            "documents": int(kept.sum()),
            "documents_per_split": {split: int(len(self.split_keys(split))) for split in self.splits()},
            "sentences": int(self.n_sentences.sum()),
            "dropped": int((~kept).sum()),
            "replaced": int(self.replaced.sum()),
        }

    def splits(self) -> list[str]:
        return ["train", "eval"] if self.config.eval_fraction > 0 else ["train"]

    def split_keys(self, split: str) -> np.ndarray:
        """The sorted keys of the split's non-empty documents (the table a random B is drawn from)."""
        in_split = self.is_eval if split == "eval" else ~self.is_eval
        return np.sort(self.doc_keys[in_split & (self.n_sentences > 0)])

    def check(self, split: str) -> np.ndarray:
        keys = self.split_keys(split)
        total = int((self.n_sentences > 0).sum())
        if total == 0:
            raise DataError(
                "the corpus holds no text (every document is empty); check --corpus and --format/--text-field"
            )
        if len(keys) == 0:
            raise DataError(
                f"--eval-fraction {self.config.eval_fraction} left the {split} split with no document of "
                f"{total}; change --eval-fraction (or add documents)"
            )
        if self.config.objective == "mlm+nsp" and len(keys) < 2:
            raise DataError(
                f"the {split} split has one document; next sentence prediction takes its random B from "
                "another document: add documents, lower --eval-fraction, or use --objective mlm"
            )
        return keys


# --- stage 3: examples -----------------------------------------------------------------------------------


def build_examples(documents, table: DocumentTable, split: str, config: PrepareConfig, special_ids: dict):
    """The split's examples as a Ray Dataset of EXAMPLE_SCHEMA rows, sorted by (document, example)."""

    keys = table.check(split)
    settings = {
        "seed": config.seed,
        "max_seq_length": config.max_seq_length,
        "cls_id": special_ids["cls"],
        "sep_id": special_ids["sep"],
    }
    split_documents = documents.map_batches(
        _select_split,
        batch_format="pyarrow",
        fn_kwargs={"seed": config.seed, "eval_fraction": config.eval_fraction, "want_eval": split == "eval"},
    )
    if config.objective == "mlm":
        examples = split_documents.map_batches(_packed_examples, batch_format="pyarrow", fn_kwargs=settings)
        return examples.sort(["doc_key", "example_index"])
    plans = split_documents.map_batches(
        _plan_batch,
        batch_format="pyarrow",
        fn_kwargs={
            "keys": keys,
            "seed": config.seed,
            "max_seq_length": config.max_seq_length,
            "short_seq_prob": config.short_seq_prob,
        },
    ).materialize()
    continuations = plans.map_batches(_finish_continuations, batch_format="pyarrow", fn_kwargs=settings)
    requests = plans.map_batches(_random_b_requests, batch_format="pyarrow")
    donors = split_documents.map_batches(_donor_rows, batch_format="pyarrow")
    # A sort, then one UDF call per block: what `groupby().map_groups()` does, without a call per group.
    randoms = (
        requests.union(donors)
        .sort("group_key")
        .map_batches(_resolve_random_bs, batch_size=None, batch_format="pyarrow", fn_kwargs=settings)
    )
    return continuations.union(randoms).sort(["doc_key", "example_index"])


def _select_split(batch: pa.Table, seed: int, eval_fraction: float, want_eval: bool) -> pa.Table:
    keys = batch.column("doc_key").to_numpy().astype(np.uint64)
    keep = eval_mask(keys, seed, eval_fraction) == want_eval
    keep &= batch.column("n_sentences").to_numpy() > 0
    return batch.filter(pa.array(keep))


def _document_sentences(token_ids: list[int], sentence_lengths: list[int]) -> list[list[int]]:
    bounds = [0, *itertools.accumulate(sentence_lengths)]
    return [token_ids[low:high] for low, high in itertools.pairwise(bounds)]


def _flat_lists(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (all values, offsets): row r is values[offsets[r]:offsets[r + 1]]."""
    array = column.combine_chunks()
    return array.values.to_numpy(), array.offsets.to_numpy()


def _iter_documents(batch: pa.Table):
    keys = batch.column("doc_key").to_numpy()
    token_values, token_offsets = _flat_lists(batch.column("token_ids"))
    length_values, length_offsets = _flat_lists(batch.column("sentence_lengths"))
    for row in range(batch.num_rows):
        doc_tokens = token_values[token_offsets[row] : token_offsets[row + 1]].tolist()
        doc_lengths = length_values[length_offsets[row] : length_offsets[row + 1]].tolist()
        yield int(keys[row]), _document_sentences(doc_tokens, doc_lengths)


def _plan_batch(batch: pa.Table, keys: np.ndarray, seed: int, max_seq_length: int, short_seq_prob: float):
    rows: dict[str, list] = {name: [] for name in _PLAN_COLUMNS}
    for doc_key, sentences in _iter_documents(batch):
        rng = random.Random(stream_key(seed, "document", doc_key))
        document_index = int(np.searchsorted(keys, np.uint64(doc_key)))
        plans = plan_pair_examples(
            sentences, document_index, len(keys), max_seq_length - 3, short_seq_prob, rng
        )
        for example_index, plan in enumerate(plans):
            rows["doc_key"].append(doc_key)
            rows["example_index"].append(example_index)
            rows["next_sentence_label"].append(plan.next_sentence_label)
            rows["tokens_a"].append(plan.tokens_a)
            rows["tokens_b"].append(plan.tokens_b)
            rows["donor_key"].append(int(keys[plan.donor_index]) if plan.donor_index >= 0 else 0)
            rows["donor_start_share"].append(plan.donor_start_share)
            rows["target_b_length"].append(plan.target_b_length)
    return pa.table(rows, schema=_PLAN_SCHEMA)


def _finished_example(
    doc_key: int, example_index: int, tokens_a: list[int], tokens_b: list[int], label: int, settings: dict
) -> dict:
    """Truncate (seeded by the example itself, so either pass gives the same result) and assemble."""
    rng = random.Random(stream_key(settings["seed"], "truncate", doc_key, example_index))
    tokens_a, tokens_b, truncated = truncate_pair(tokens_a, tokens_b, settings["max_seq_length"] - 3, rng)
    input_ids, token_type_ids = assemble_pair(tokens_a, tokens_b, settings["cls_id"], settings["sep_id"])
    return {
        "doc_key": doc_key,
        "example_index": example_index,
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "next_sentence_label": label,
        "truncated": truncated,
    }


def _examples_table(examples: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(examples, schema=EXAMPLE_SCHEMA)


def _finish_continuations(batch: pa.Table, **settings) -> pa.Table:
    rows = batch.filter(pc.equal(batch.column("next_sentence_label"), NSP_CONTINUATION)).to_pylist()
    return _examples_table(
        [
            _finished_example(
                row["doc_key"],
                row["example_index"],
                row["tokens_a"],
                row["tokens_b"],
                NSP_CONTINUATION,
                settings,
            )
            for row in rows
        ]
    )


def _random_b_requests(batch: pa.Table) -> pa.Table:
    requests = batch.filter(pc.equal(batch.column("next_sentence_label"), NSP_RANDOM))
    empty_lengths = pa.array([[]] * requests.num_rows, pa.list_(pa.int32()))
    return (
        requests.append_column("group_key", requests.column("donor_key"))
        .append_column("is_donor", pa.array([False] * requests.num_rows, pa.bool_()))
        .append_column("sentence_lengths", empty_lengths)
    )


def _donor_rows(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    return pa.table(
        {
            "doc_key": batch.column("doc_key"),
            "example_index": pa.array([0] * n, pa.int32()),
            "next_sentence_label": pa.array([0] * n, pa.int8()),
            "tokens_a": batch.column("token_ids").cast(pa.list_(pa.int32())),
            "tokens_b": pa.array([[]] * n, pa.list_(pa.int32())),
            "donor_key": pa.array([0] * n, pa.uint64()),
            "donor_start_share": pa.array([0.0] * n, pa.float64()),
            "target_b_length": pa.array([0] * n, pa.int32()),
            "group_key": batch.column("doc_key"),
            "is_donor": pa.array([True] * n, pa.bool_()),
            "sentence_lengths": batch.column("sentence_lengths"),
        },
        schema=_GROUP_SCHEMA,
    )


def _resolve_random_bs(block: pa.Table, **settings) -> pa.Table:
    """Donor documents, each followed by the requests for a random B from it (the block is sorted by
    `group_key`, and a sort keeps each key's rows in one block) -> the finished examples."""
    columns = ["group_key", "is_donor", "doc_key", "example_index", "tokens_a", "sentence_lengths"]
    rows = {name: block.column(name).to_pylist() for name in columns}
    shares = block.column("donor_start_share").to_pylist()
    lengths = block.column("target_b_length").to_pylist()
    donors = {
        rows["group_key"][i]: _document_sentences(rows["tokens_a"][i], rows["sentence_lengths"][i])
        for i in range(block.num_rows)
        if rows["is_donor"][i]
    }
    examples = []
    for i in range(block.num_rows):
        if rows["is_donor"][i]:
            continue
        tokens_b = take_random_b(donors[rows["group_key"][i]], shares[i], lengths[i])
        doc_key, example_index, tokens_a = rows["doc_key"][i], rows["example_index"][i], rows["tokens_a"][i]
        examples.append(_finished_example(doc_key, example_index, tokens_a, tokens_b, NSP_RANDOM, settings))
    return _examples_table(examples)


def _packed_examples(batch: pa.Table, seed: int, max_seq_length: int, cls_id: int, sep_id: int) -> pa.Table:
    """The "mlm" objective: `[CLS] sentences... [SEP]`, whole sentences of one document per example."""
    examples = []
    for doc_key, sentences in _iter_documents(batch):
        for example_index, (sequence, truncated) in enumerate(pack_sentences(sentences, max_seq_length - 2)):
            input_ids = np.array([cls_id, *sequence, sep_id], dtype=np.int32)
            examples.append(
                {
                    "doc_key": doc_key,
                    "example_index": example_index,
                    "input_ids": input_ids,
                    "token_type_ids": np.zeros(len(input_ids), dtype=np.int8),
                    "next_sentence_label": NSP_CONTINUATION,
                    "truncated": truncated,
                }
            )
    return _examples_table(examples)
