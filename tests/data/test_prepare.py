"""`prepare`: the examples BERT's builder would make, even shards, held-out documents, determinism, errors."""

from __future__ import annotations

import dataclasses
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from data import (
    DataError,
    PrepareConfig,
    build_train_dataset,
    load_manifest,
    load_tokenizer,
    prepare,
    storage,
    tokenizer_hash,
)

from .conftest import TEST_PREPARE, make_documents, write_bert_corpus

MARKER = re.compile(r"doc(\d+) sent(\d+)")


def _split_table(prepared_dir, split="train"):
    manifest = load_manifest(prepared_dir)
    return pa.concat_tables(
        [pq.read_table(storage.join(prepared_dir, path)) for path in manifest.shards[split]]
    )


def _masked_epoch(prepared_dir) -> pa.Table:
    dataset = build_train_dataset(prepared_dir, seed=3, epoch=1)
    return pa.concat_tables(ray.get(dataset.to_arrow_refs())).sort_by("example_id")


def _id_string(ids) -> str:
    return " " + " ".join(map(str, ids)) + " "


def _segments(input_ids, token_type_ids):
    """(A, B) token ids of `[CLS] A [SEP] B [SEP]`."""
    a_end = token_type_ids.index(1) - 1 if 1 in token_type_ids else len(input_ids) - 1
    return input_ids[1:a_end], input_ids[a_end + 1 : -1]


def test_manifest_and_shards(prepared_dir, tokenizer_dir):
    manifest = load_manifest(prepared_dir)
    assert manifest.tokenizer_hash == tokenizer_hash(tokenizer_dir)
    assert manifest.matches(TEST_PREPARE, tokenizer_hash(tokenizer_dir))
    assert not manifest.matches(dataclasses.replace(TEST_PREPARE, seed=8), tokenizer_hash(tokenizer_dir))
    assert manifest.special_token_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    counts = manifest.counts
    assert counts["documents"] == 400 and counts["dropped"] == 0 and counts["replaced"] == 0
    assert counts["documents_per_split"]["train"] + counts["documents_per_split"]["eval"] == 400
    for split in ("train", "eval"):
        sizes = [pq.read_metadata(os.path.join(prepared_dir, p)).num_rows for p in manifest.shards[split]]
        assert sum(sizes) == counts["examples"][split]
        assert max(sizes) - min(sizes) <= 1
        assert max(sizes) <= TEST_PREPARE.examples_per_shard
    train = _split_table(prepared_dir)
    assert train.column("example_id").to_pylist() == list(range(train.num_rows))
    assert len(manifest.shards["train"]) >= 2
    assert counts["tokens"] == sum(
        len(ids)
        for split in ("train", "eval")
        for ids in _split_table(prepared_dir, split).column("input_ids").to_pylist()
    )
    assert os.path.exists(os.path.join(prepared_dir, "tokenizer", "tokenizer.json"))
    assert not [name for name in os.listdir(os.path.dirname(prepared_dir)) if "partial" in name]


def test_examples_are_bert_sentence_pairs(prepared_dir, documents, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    document_ids = [
        _id_string([t for s in sentences for t in tokenizer.encode(s, add_special_tokens=False).ids])
        for sentences in documents
    ]
    rows = _split_table(prepared_dir).to_pylist()
    labels = [row["next_sentence_label"] for row in rows]
    # Half of the pairs, plus the segments of a single sentence (BERT's builder gives those a random B).
    assert 0.45 < sum(labels) / len(labels) < 0.6
    continuation_checked = 0
    for row in rows:
        ids, types = row["input_ids"], row["token_type_ids"]
        assert len(ids) <= TEST_PREPARE.max_seq_length and ids[0] == 2 and ids[-1] == 3
        a, b = _segments(ids, types)
        assert a and b and types.count(1) == len(b) + 1
        a_string, b_string = _id_string(a), _id_string(b)
        homes = [d for d, text in enumerate(document_ids) if a_string in text]
        assert homes, "A is not a span of any document"
        home_text = document_ids[homes[0]]
        if row["next_sentence_label"] == 0:
            # B is a later span of the same document.
            assert b_string in home_text[home_text.index(a_string) + len(a_string) - 1 :]
            continuation_checked += 1
        else:
            assert b_string not in home_text
            assert any(b_string in text for text in document_ids)
    assert continuation_checked > 100


def test_eval_documents_never_appear_in_training(prepared_dir, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)

    def documents_of(split):
        texts = tokenizer.decode_batch(_split_table(prepared_dir, split).column("input_ids").to_pylist())
        return {int(match.group(1)) for text in texts for match in MARKER.finditer(text)}

    train, held_out = documents_of("train"), documents_of("eval")
    assert held_out and train and not train & held_out


def test_output_is_the_same_on_1_2_and_4_blocks(prepared_dir, corpus_file, tokenizer_dir, tmp_path):
    reference = _split_table(prepared_dir)
    for num_blocks in (2, 4):
        out = str(tmp_path / f"blocks{num_blocks}")
        prepare([corpus_file], tokenizer_dir, out, dataclasses.replace(TEST_PREPARE, num_blocks=num_blocks))
        assert _split_table(out).equals(reference)
        assert _split_table(out, "eval").equals(_split_table(prepared_dir, "eval"))
        assert load_manifest(out).counts == load_manifest(prepared_dir).counts


def test_mlm_objective_packs_whole_sentences(ray_session, corpus_file, tokenizer_dir, documents, tmp_path):
    out = str(tmp_path / "mlm")
    config = PrepareConfig(max_seq_length=64, objective="mlm")
    manifest = prepare([corpus_file], tokenizer_dir, out, config)
    rows = _split_table(out).to_pylist()
    assert set(row["next_sentence_label"] for row in rows) == {0}
    assert all(set(row["token_type_ids"]) == {0} for row in rows)
    assert all(row["input_ids"][0] == 2 and row["input_ids"][-1] == 3 for row in rows)
    assert all(3 not in row["input_ids"][1:-1] for row in rows)
    tokens = sum(len(row["input_ids"]) - 2 for row in rows)
    tokenizer = load_tokenizer(tokenizer_dir)
    corpus_tokens = sum(len(tokenizer.encode(s, add_special_tokens=False).ids) for d in documents for s in d)
    assert tokens == corpus_tokens  # nothing lost: these sentences are all shorter than max_seq_length
    assert manifest.counts["truncated"] == 0


def test_empty_corpus_is_a_clear_error(ray_session, tokenizer_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n   \n\n")
    with pytest.raises(DataError, match="no text"):
        prepare([str(tmp_path / "empty.txt")], tokenizer_dir, str(tmp_path / "out"), PrepareConfig())
    assert not os.path.exists(tmp_path / "out")


def test_one_document_with_nsp_is_a_clear_error(ray_session, tokenizer_dir, tmp_path):
    corpus = write_bert_corpus(tmp_path / "one.txt", make_documents(1))
    with pytest.raises(DataError, match="--objective mlm"):
        prepare([corpus], tokenizer_dir, str(tmp_path / "out"), PrepareConfig())


def test_missing_corpus_and_foreign_out_dir(ray_session, tokenizer_dir, corpus_file, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare([str(tmp_path / "missing.txt")], tokenizer_dir, str(tmp_path / "out"), PrepareConfig())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a prepared directory"):
        prepare([corpus_file], tokenizer_dir, str(tmp_path / "busy"), PrepareConfig())
    with pytest.raises(DataError, match="objective"):
        prepare([corpus_file], tokenizer_dir, str(tmp_path / "out"), PrepareConfig(objective="nsp"))


def test_a_bucket_holds_the_same_prepared_data_and_a_second_prepare_replaces_it(
    prepared_dir, corpus_file, tokenizer_dir, bucket
):
    out = f"{bucket}/prepared"
    prepare([corpus_file], tokenizer_dir, out, TEST_PREPARE)
    assert _split_table(out).equals(_split_table(prepared_dir))
    assert load_manifest(out).counts == load_manifest(prepared_dir).counts
    assert tokenizer_hash(f"{out}/tokenizer") == tokenizer_hash(tokenizer_dir)
    assert not [path for path in storage.list_files(bucket) if ".partial-" in path]
    assert _masked_epoch(out).equals(_masked_epoch(prepared_dir))

    fewer_shards = dataclasses.replace(TEST_PREPARE, examples_per_shard=10**6)
    prepare([corpus_file], tokenizer_dir, out, fewer_shards)
    assert load_manifest(out).shards["train"] == ["train/shard-00000.parquet"]
    assert sorted(storage.list_files(out)) == [
        "eval/shard-00000.parquet",
        "manifest.json",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.txt",
        "train/shard-00000.parquet",
    ]
    assert _split_table(out).equals(_split_table(prepared_dir))


def test_a_bucket_folder_that_is_not_prepared_data_is_refused(
    ray_session, corpus_file, tokenizer_dir, bucket
):
    storage.write_text(f"{bucket}/busy/notes.txt", "mine")
    with pytest.raises(DataError, match="not a prepared directory"):
        prepare([corpus_file], tokenizer_dir, f"{bucket}/busy", TEST_PREPARE)
    assert storage.read_text(f"{bucket}/busy/notes.txt") == "mine"
