"""Dynamic masking: rates and shares, what is never masked, reproducibility, whole words, torch batches."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data import (
    DataError,
    ExactBatches,
    MaskingConfig,
    build_train_dataset,
    check_tokenizer,
    load_tokenizer,
    make_collate_fn,
)
from data.masking import IGNORE_INDEX, MaskingVocab, mask_tokens


@pytest.fixture(scope="module")
def examples(prepared_dir):
    shards = sorted(os.listdir(os.path.join(prepared_dir, "train")))
    table = pa.concat_tables([pq.read_table(os.path.join(prepared_dir, "train", name)) for name in shards])
    input_ids = table.column("input_ids").combine_chunks()
    return {
        "ids": input_ids.values.to_numpy(),
        "offsets": input_ids.offsets.to_numpy().astype(np.int64),
        "example_ids": table.column("example_id").to_numpy(),
    }


@pytest.fixture(scope="module")
def vocab(prepared_dir):
    return MaskingVocab.from_tokenizer(load_tokenizer(os.path.join(prepared_dir, "tokenizer")))


def _mask(examples, vocab, config=None, epoch=0, seed=0, rows=None):
    offsets, ids, example_ids = examples["offsets"], examples["ids"], examples["example_ids"]
    if rows is not None:
        low, high = offsets[rows.start], offsets[rows.stop]
        ids, example_ids, offsets = (
            ids[low:high],
            example_ids[rows],
            offsets[rows.start : rows.stop + 1] - low,
        )
    return mask_tokens(ids, offsets, example_ids, seed, epoch, config or MaskingConfig(), vocab)


def test_rate_and_shares_match_the_settings(examples, vocab):
    for config in (
        MaskingConfig(),
        MaskingConfig(mlm_probability=0.3, mask_token_fraction=0.6, random_token_fraction=0.3),
    ):
        masked, labels = _mask(examples, vocab, config)
        ids = examples["ids"]
        maskable = ~vocab.is_special[ids]
        chosen = labels != IGNORE_INDEX
        assert abs(chosen.sum() / maskable.sum() - config.mlm_probability) < 0.01
        as_mask = (masked[chosen] == vocab.mask_id).mean()
        kept = (masked[chosen] == ids[chosen]).mean()
        assert abs(as_mask - config.mask_token_fraction) < 0.02
        assert abs(1 - as_mask - kept - config.random_token_fraction) < 0.02
        assert np.array_equal(labels[chosen], ids[chosen])
        assert np.array_equal(masked[~chosen], ids[~chosen])


def test_special_tokens_are_never_masked_nor_drawn(examples, vocab):
    masked, labels = _mask(
        examples,
        vocab,
        MaskingConfig(mlm_probability=0.9, mask_token_fraction=0.0, random_token_fraction=1.0),
    )
    special = vocab.is_special[examples["ids"]]
    assert special.sum() > 0 and (labels[special] == IGNORE_INDEX).all()
    assert np.array_equal(masked[special], examples["ids"][special])
    assert not vocab.is_special[masked[~special]].any()


def test_masks_change_with_the_epoch_and_repeat_for_the_same_epoch(examples, vocab):
    first, again, other_epoch = (_mask(examples, vocab, epoch=e)[1] for e in (0, 0, 1))
    assert np.array_equal(first, again)
    assert (first != other_epoch).mean() > 0.1
    assert not np.array_equal(first, _mask(examples, vocab, seed=1)[1])


def test_masks_do_not_depend_on_batch_boundaries(examples, vocab):
    whole = _mask(examples, vocab)[0]
    count = len(examples["example_ids"])
    parts = [_mask(examples, vocab, rows=slice(s, min(s + 37, count)))[0] for s in range(0, count, 37)]
    assert np.array_equal(np.concatenate(parts), whole)


def test_whole_word_masking_covers_every_piece(corpus_file, documents, tmp_path):
    from data import TokenizerConfig, train_tokenizer

    small = load_tokenizer(train_tokenizer([corpus_file], str(tmp_path), TokenizerConfig(vocab_size=120)))
    small_vocab = MaskingVocab.from_tokenizer(small)
    encodings = small.encode_batch([" ".join(sentences) for sentences in documents])
    ids = np.concatenate([np.array(e.ids, dtype=np.int32) for e in encodings])
    offsets = np.cumsum([0] + [len(e.ids) for e in encodings])
    example_ids = np.arange(len(encodings))
    _, labels = mask_tokens(
        ids, offsets, example_ids, 0, 0, MaskingConfig(whole_word_masking=True), small_vocab
    )
    continuation = small_vocab.is_continuation[ids]
    assert continuation.mean() > 0.2
    chosen = labels != IGNORE_INDEX
    assert np.array_equal(chosen[np.flatnonzero(continuation)], chosen[np.flatnonzero(continuation) - 1])
    words_chosen = chosen[~continuation & ~small_vocab.is_special[ids]].mean()
    assert abs(words_chosen - 0.15) < 0.01


def test_stream_rows_and_torch_batches(prepared_dir, examples, vocab):
    import torch

    dataset = build_train_dataset(prepared_dir, seed=3, epoch=2)
    rows = sorted(dataset.take_all(), key=lambda row: row["example_id"])
    masked, labels = _mask(examples, vocab, seed=3, epoch=2)
    assert np.array_equal(np.concatenate([row["input_ids"] for row in rows]), masked)
    assert np.array_equal(np.concatenate([row["mlm_labels"] for row in rows]), labels)
    # The same masks from a stream cut into other blocks.
    regrouped = build_train_dataset(prepared_dir, seed=3, epoch=2).repartition(7)
    assert sorted(map(_row_key, regrouped.take_all())) == sorted(map(_row_key, rows))

    collate = make_collate_fn(MaskingConfig(), 64)
    # Whole streams, read to their end: a stream left early has Ray Data cancel its tasks, and a task
    # cancelled as it completes can kill Ray 2.60's driver (here, pytest).
    batch = list(dataset.iter_torch_batches(batch_size=16, collate_fn=collate))[0]
    assert set(batch) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "mlm_labels",
        "next_sentence_label",
    }
    assert all(tensor.dtype == torch.int64 for tensor in batch.values())
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and batch["next_sentence_label"].shape == (16,)
    lengths = batch["attention_mask"].sum(1)
    assert width - 8 < lengths.max() <= width
    padding = batch["attention_mask"] == 0
    assert (batch["input_ids"][padding] == 0).all() and (batch["mlm_labels"][padding] == IGNORE_INDEX).all()
    full = make_collate_fn(MaskingConfig(pad_to="max_length"), 64)
    assert list(dataset.iter_torch_batches(batch_size=4, collate_fn=full))[0]["input_ids"].shape == (4, 64)


def test_a_shard_is_cut_into_exact_batches_that_pad_like_the_collate_fn(prepared_dir):
    import torch

    dataset = build_train_dataset(prepared_dir, seed=1).repartition(5)
    tables = list(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert len(tables) > 1
    rows = ExactBatches(iter(tables))
    sizes = [3, 1, tables[0].num_rows, 7]  # cuts across block boundaries
    cuts = [rows.take(size) for size in sizes]
    assert [cut.num_rows for cut in cuts] == sizes
    taken = pa.concat_tables(cuts).column("example_id").to_pylist()
    assert taken == pa.concat_tables(tables).column("example_id").to_pylist()[: sum(sizes)]
    collate = make_collate_fn(MaskingConfig(), 64)
    for cut in cuts:
        from_table = collate.collate_table(cut)
        from_numpy = collate(
            {name: cut.column(name).to_numpy(zero_copy_only=False) for name in cut.column_names}
        )
        assert from_table.keys() == from_numpy.keys()
        assert all(torch.equal(from_table[name], from_numpy[name]) for name in from_table)
    remaining = sum(table.num_rows for table in tables) - sum(sizes)
    with pytest.raises(DataError, match="ended 1 rows short"):
        rows.take(remaining + 1)


def _row_key(row):
    return int(row["example_id"]), tuple(row["input_ids"]), tuple(row["mlm_labels"])


def test_a_different_tokenizer_is_refused(prepared_dir, corpus_file, tmp_path):
    from data import TokenizerConfig, train_tokenizer

    other = train_tokenizer([corpus_file], str(tmp_path / "other"), TokenizerConfig(vocab_size=500))
    with pytest.raises(DataError, match="prepare again"):
        check_tokenizer(prepared_dir, other)
    tampered = shutil.copytree(prepared_dir, tmp_path / "tampered")
    shutil.rmtree(tampered / "tokenizer")
    shutil.copytree(other, tampered / "tokenizer")
    with pytest.raises(DataError, match="not the one"):
        build_train_dataset(str(tampered))
    with pytest.raises(DataError, match="no 'valid' split"):
        build_train_dataset(prepared_dir, split="valid")


def test_inspect_command_reports_masking_and_nsp(prepared_dir, capsys):
    from orchestrator.cli import main

    assert main(["data", "inspect", prepared_dir, "-n", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["examples"]) == 2 and "[MASK]->" in "".join(e["tokens"] for e in report["examples"])
    masking = report["masking"]
    assert abs(masking["mask_rate"] - 0.15) < 0.01
    assert abs(masking["mask_token_share"] - 0.8) < 0.03
    assert abs(masking["random_token_share"] - 0.1) < 0.03
    assert 0.45 < masking["nsp_random_share"] < 0.6
    assert masking["examples"] == report["counts"]["examples"]["train"]


def test_cli_trains_a_tokenizer(corpus_file, tmp_path):
    from transformers import BertTokenizerFast

    from orchestrator.cli import main

    out = str(tmp_path / "tok")
    assert main(["tokenizer", "train", "--corpus", corpus_file, "--vocab-size", "300", "--out", out]) == 0
    assert len(BertTokenizerFast.from_pretrained(out)) == 300
    with open(os.path.join(out, "tokenizer_config.json")) as file:
        config = json.load(file)
    assert config["do_lower_case"] is True
    assert dataclasses.asdict(MaskingConfig())["mlm_probability"] == 0.15
