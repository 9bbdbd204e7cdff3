"""The work of `prepare`'s tasks: work units -> documents -> sentences -> token ids -> examples.

A task reads its units one at a time, so its memory is one unit's (at most 16 MiB of text) plus the examples
it returns. Each unit's sentences go through one `encode_batch_fast` call on a single tokenizer thread (Ray
runs a task per CPU). Encoding whole paragraphs and mapping sentence boundaries through the character offsets
measured the same speed (1.34 s against 1.35 s on 3 MB of man pages: the tokenizer's cost is per token, and
its pre-tokenizer splits at the spaces between sentences anyway, so the ids are the same), so sentences are
encoded as they are.

Training examples are built right here, from the unit's training documents. Held-out documents are few per
unit (often one), too few to take random Bs from each other, so they come back tokenized and are built into
examples per *eval unit*: the held-out documents of consecutive units, about a unit's worth of text.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data.examples import TokenizedDocuments, packed_examples, pair_examples
from data.hashing import combine, stream_key, to_unit_float
from data.readers import WorkUnit, read_unit
from data.sentences import document_sentences, normalize_text


@dataclass(frozen=True)
class BuildSettings:
    """What a task needs to know (the tokenizer travels separately, once per task, as an object ref)."""

    input_format: str
    documents: str
    objective: str
    max_seq_length: int
    short_seq_prob: float
    seed: int
    eval_fraction: float
    cls_id: int
    sep_id: int


def eval_mask(document_keys: np.ndarray, seed: int, eval_fraction: float) -> np.ndarray:
    """Which documents are held out: a hash of (seed, document key) below `eval_fraction`."""
    return to_unit_float(combine(stream_key(seed, "eval-split"), document_keys)) < eval_fraction


def build_units(
    units: list[WorkUnit], settings: BuildSettings, tokenizer_json: str, stopped: Callable[[], bool]
):
    """Ray task body: (statistics, training examples of all `units` in order, [held-out documents of each
    unit]); (None, None, None) when `stopped()` (prepare is stopping), which is asked before each unit."""
    tokenizer = _cached_tokenizer(tokenizer_json)
    statistics = {"units": [], "train": empty_example_counts()}
    train_tables, held_out = [], []
    for unit in units:
        if stopped():
            return None, None, None
        documents, keys, new_document, unit_statistics = tokenize_unit(unit, settings, tokenizer)
        is_eval = eval_mask(keys, settings.seed, settings.eval_fraction)
        train = documents.select(~is_eval)
        held_out.append(documents.select(is_eval))
        table = make_examples(train, settings, stream_key(settings.seed, "train", unit.index))
        train_tables.append(table)
        add_example_counts(statistics["train"], table)
        unit_statistics["eval_documents"] = int((is_eval & new_document).sum())
        unit_statistics["eval_chars"] = int(held_out[-1].document_chars.sum())
        statistics["units"].append(unit_statistics)
    return statistics, pa.concat_tables(train_tables), held_out


def build_eval_unit(index: int, settings: BuildSettings, selection: list[tuple[int, int]], *held_out_lists):
    """Ray task body: the examples of eval unit `index`, from the held-out documents of the units that
    `selection` names as (which list, which unit in it); (statistics, examples)."""
    documents = TokenizedDocuments.concatenate([held_out_lists[i][j] for i, j in selection])
    table = make_examples(documents, settings, stream_key(settings.seed, "eval", index))
    statistics = empty_example_counts()
    add_example_counts(statistics, table)
    return statistics, table


def make_examples(documents: TokenizedDocuments, settings: BuildSettings, seed: int) -> pa.Table:
    if settings.objective == "mlm":
        return packed_examples(documents, settings.max_seq_length, settings.cls_id, settings.sep_id)
    return pair_examples(
        documents, settings.max_seq_length, settings.short_seq_prob, seed, settings.cls_id, settings.sep_id
    )


def tokenize_unit(unit: WorkUnit, settings: BuildSettings, tokenizer):
    """A unit's non-empty documents as token ids, their keys, whether each starts a document (rather than
    continuing a large file), and what was read (documents, sentences...)."""
    text = read_unit(unit, settings.input_format, settings.documents)
    one_sentence_per_line = settings.input_format == "bert"
    sentences = [document_sentences(normalize_text(t), one_sentence_per_line) for t in text.texts]
    flat = [sentence for document in sentences for sentence in document]
    ids = [encoding.ids for encoding in tokenizer.encode_batch_fast(flat, add_special_tokens=False)]
    sentence_lengths = np.fromiter(map(len, ids), np.int64, count=len(ids))
    tokens = np.fromiter(itertools.chain.from_iterable(ids), np.int32, count=int(sentence_lengths.sum()))
    sentence_document = np.repeat(np.arange(len(sentences)), [len(document) for document in sentences])
    kept_sentence = sentence_lengths > 0  # a sentence of unknown control characters has no tokens
    document_sentences_kept = np.bincount(sentence_document[kept_sentence], minlength=len(sentences))
    kept = document_sentences_kept > 0
    documents = TokenizedDocuments(
        tokens,
        sentence_lengths[kept_sentence],
        document_sentences_kept[kept].astype(np.int64),
        np.array([len(t) for t in text.texts], np.int64)[kept],
    )
    continued = np.array(text.continued, bool)
    statistics = {
        "documents": int((kept & ~continued).sum()),
        "sentences": int(kept_sentence.sum()),
        "dropped": int((~kept & ~continued).sum()),
        "replaced": int(sum(text.replaced)),
        "binary_files": text.binary_files,
        "empty_files": text.empty_files,
    }
    return documents, np.array(text.keys, np.uint64)[kept], ~continued[kept], statistics


def empty_example_counts() -> dict:
    return {"examples": 0, "tokens": 0, "truncated": 0, "random_next_sentence": 0}


def add_example_counts(counts: dict, table: pa.Table) -> None:
    counts["examples"] += table.num_rows
    counts["tokens"] += int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0)
    counts["truncated"] += int(pc.sum(table.column("truncated").cast(pa.int64())).as_py() or 0)
    counts["random_next_sentence"] += int(pc.sum(table.column("next_sentence_label")).as_py() or 0)


_TOKENIZERS: dict[int, object] = {}


def _cached_tokenizer(tokenizer_json: str):
    from tokenizers import Tokenizer

    key = hash(tokenizer_json)
    if key not in _TOKENIZERS:
        # One thread: Ray already runs a task per CPU, the tokenizer's own pool would oversubscribe them.
        os.environ["RAYON_NUM_THREADS"] = "1"
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        _TOKENIZERS[key] = Tokenizer.from_str(tokenizer_json)
    return _TOKENIZERS[key]
