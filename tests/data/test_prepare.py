"""`prepare` on corpora of real shapes: documents, fill, balanced NSP, shuffled even shards, determinism."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from common import storage
from data import (
    DataError,
    PrepareConfig,
    build_train_dataset,
    load_manifest,
    load_tokenizer,
    prepare,
    tokenizer_hash,
)
from data.hashing import stream_key
from data.readers import plan_units, resolve_corpus
from data.shards import ROW_GROUP_ROWS, permuted_positions, write_shard

from .conftest import (
    LICENSE,
    TEST_PREPARE,
    make_documents,
    small_units,
    write_bert_corpus,
    write_one_line_document,
    write_text_files,
)

MARKER = re.compile(r"doc(\d+) sent(\d+)")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _split_table(prepared_dir, split="train") -> pa.Table:
    manifest = load_manifest(prepared_dir)
    return pa.concat_tables(
        [pq.read_table(storage.join(prepared_dir, path)) for path in manifest.shards[split]]
    )


def _in_built_order(prepared_dir, split="train") -> pa.Table:
    """The split's examples in the order the units built them (undoing the seeded shuffle)."""
    table = _split_table(prepared_dir, split)
    seed = stream_key(load_manifest(prepared_dir).settings.seed, "shuffle", split)
    positions = permuted_positions(np.arange(table.num_rows), table.num_rows, seed)
    return table.take(pa.array(positions))


def _masked_epoch(prepared_dir) -> pa.Table:
    dataset = build_train_dataset(prepared_dir, seed=3, epoch=1)
    return pa.concat_tables(ray.get(dataset.to_arrow_refs())).sort_by("example_id")


def _id_string(ids) -> str:
    return " " + " ".join(map(str, ids)) + " "


def _segments(input_ids, token_type_ids):
    """(A, B) token ids of `[CLS] A [SEP] B [SEP]`."""
    a_end = token_type_ids.index(1) - 1 if 1 in token_type_ids else len(input_ids) - 1
    return input_ids[1:a_end], input_ids[a_end + 1 : -1]


def _document_ids(tokenizer, documents) -> list[str]:
    return [
        _id_string([t for s in sentences for t in tokenizer.encode(s, add_special_tokens=False).ids])
        for sentences in documents
    ]


def _follows(a: list[int], b: list[int], document_ids: list[str], max_gap: int) -> bool:
    """Whether some document holds A and, at most `max_gap` tokens after it, B (truncation trims A's end
    and B's start)."""
    a_string, b_string = _id_string(a), _id_string(b)
    for text in document_ids:
        at = text.find(a_string)
        while at >= 0:
            rest = text[at + len(a_string) - 1 :]
            where = rest.find(b_string)
            if where >= 0 and rest[: where + 1].count(" ") - 1 <= max_gap:
                return True
            at = text.find(a_string, at + 1)
    return False


def _check_pairs(rows, document_ids, max_seq_length: int) -> dict[int, int]:
    """Every A and B is a span of a document; a label-0 B follows its A there, a label-1 B does not (but for
    chance repeats of short spans). Returns {label: count}."""
    labels, random_but_follows = {0: 0, 1: 0}, 0
    for row in rows:
        a, b = _segments(row["input_ids"], row["token_type_ids"])
        assert a and b
        assert any(_id_string(a) in text for text in document_ids), "A is not a span of any document"
        assert any(_id_string(b) in text for text in document_ids), "B is not a span of any document"
        full = len(a) + len(b) == max_seq_length - 3  # maybe truncated: a gap between A and B
        follows = _follows(a, b, document_ids, max_seq_length if full else 0)
        if row["next_sentence_label"] == 0:
            assert follows, "a label-0 B does not continue its A"
        random_but_follows += row["next_sentence_label"] == 1 and follows
        labels[row["next_sentence_label"]] += 1
    assert random_but_follows <= 0.01 * len(rows)
    return labels


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
        table = _split_table(prepared_dir, split)
        assert table.column("example_id").to_pylist() == list(range(table.num_rows))
        assert sum(table.column("next_sentence_label").to_pylist()) == counts["random_next_sentence"][split]
    assert len(manifest.shards["train"]) >= 2
    tokens = sum(
        len(ids)
        for split in ("train", "eval")
        for ids in _split_table(prepared_dir, split).column("input_ids").to_pylist()
    )
    assert counts["tokens"] == tokens
    examples = sum(counts["examples"].values())
    assert manifest.statistics["mean_fill"] == round(tokens / (examples * 64), 4)
    assert os.path.exists(os.path.join(prepared_dir, "tokenizer", "tokenizer.json"))
    assert not [name for name in os.listdir(os.path.dirname(prepared_dir)) if "partial" in name]


def test_examples_are_bert_sentence_pairs_with_balanced_nsp(prepared_dir, documents, tokenizer_dir):
    rows = _split_table(prepared_dir).to_pylist()
    assert all(len(row["input_ids"]) <= 64 and row["input_ids"][0] == 2 for row in rows)
    assert all(row["input_ids"][-1] == 3 and row["token_type_ids"].count(1) > 1 for row in rows)
    labels = _check_pairs(rows, _document_ids(load_tokenizer(tokenizer_dir), documents), 64)
    assert labels[0] > 400 and abs(labels[1] / len(rows) - 0.5) <= 0.02


def test_eval_documents_never_appear_in_training(prepared_dir, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)

    def documents_of(split):
        texts = tokenizer.decode_batch(_split_table(prepared_dir, split).column("input_ids").to_pylist())
        return {int(match.group(1)) for text in texts for match in MARKER.finditer(text)}

    train, held_out = documents_of("train"), documents_of("eval")
    assert held_out and train and not train & held_out


def test_neighbours_in_shards_are_no_more_alike_than_random_pairs(prepared_dir, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    texts = tokenizer.decode_batch(_split_table(prepared_dir).column("input_ids").to_pylist())
    homes = np.array([int(MARKER.search(text).group(1)) for text in texts])
    neighbours_alike = float(np.mean(homes[1:] == homes[:-1]))
    random_pairs_alike = float(np.sum((np.bincount(homes) / len(homes)) ** 2))
    built = tokenizer.decode_batch(_in_built_order(prepared_dir).column("input_ids").to_pylist())
    built_homes = np.array([int(MARKER.search(text).group(1)) for text in built])
    assert np.mean(built_homes[1:] == built_homes[:-1]) > 0.5  # what an unshuffled order looks like
    assert neighbours_alike <= 2 * random_pairs_alike + 0.005


def test_output_is_the_same_for_any_grouping_of_units(prepared_dir, corpus_file, tokenizer_dir, tmp_path):
    reference = load_manifest(prepared_dir)
    for num_blocks in (2, 5):
        out = str(tmp_path / f"blocks{num_blocks}")
        with small_units():
            prepare(
                [corpus_file], tokenizer_dir, out, dataclasses.replace(TEST_PREPARE, num_blocks=num_blocks)
            )
        assert _split_table(out).equals(_split_table(prepared_dir))
        assert _split_table(out, "eval").equals(_split_table(prepared_dir, "eval"))
        assert load_manifest(out).counts == reference.counts


def test_plain_text_files_are_documents_that_fill_their_sequences(ray_session, tokenizer_dir, tmp_path):
    documents = make_documents(300, seed=1, low=40, high=80)  # each spans several sequences of 128
    corpus = write_text_files(tmp_path / "files", documents, boilerplate=True)
    tokenizer = load_tokenizer(tokenizer_dir)
    encodings = tokenizer.encode_batch([" ".join(d) for d in documents], add_special_tokens=False)
    corpus_tokens = sum(len(encoding.ids) for encoding in encodings)
    pairs = prepare([corpus], tokenizer_dir, str(tmp_path / "pairs"), PrepareConfig(max_seq_length=128))
    assert pairs.counts["documents"] == 300  # not one per paragraph
    assert pairs.statistics["mean_sentences_per_document"] > 40  # paragraphs and their wrapped lines joined
    assert pairs.statistics["mean_fill"] >= 0.85
    assert abs(pairs.statistics["nsp_random_share"] - 0.5) <= 0.02
    for length in (128, 512):
        packed = prepare(
            [corpus],
            tokenizer_dir,
            str(tmp_path / f"mlm{length}"),
            PrepareConfig(max_seq_length=length, objective="mlm"),
        )
        assert packed.statistics["mean_fill"] >= 0.97
        rows = _in_built_order(str(tmp_path / f"mlm{length}")).to_pylist()
        assert all(set(row["token_type_ids"]) == {0} and row["next_sentence_label"] == 0 for row in rows)
        stream = [t for row in rows for t in row["input_ids"][1:-1]]
        separators = 300 - len(plan_units(resolve_corpus([corpus])))  # between documents of a unit
        assert stream.count(3) == separators
        license_tokens = 60 * len(tokenizer.encode(LICENSE, add_special_tokens=False).ids)
        assert len(stream) - separators == corpus_tokens + license_tokens  # every token, once


def test_blank_lines_separate_documents_when_asked(ray_session, tokenizer_dir, tmp_path):
    corpus = write_text_files(tmp_path / "files", make_documents(30, seed=2, low=8, high=12))
    paragraphs = sum(path.read_text().count("\n\n") + 1 for path in (tmp_path / "files").iterdir())
    config = PrepareConfig(max_seq_length=64, documents="blank-line")
    manifest = prepare([corpus], tokenizer_dir, str(tmp_path / "out"), config)
    assert manifest.counts["documents"] == paragraphs


def test_documents_of_one_or_two_sentences_balance_nsp(ray_session, tokenizer_dir, tmp_path):
    documents = make_documents(3000, seed=3, low=1, high=2)
    corpus = tmp_path / "short.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(d)}) + "\n" for d in documents))
    out = str(tmp_path / "out")
    manifest = prepare([str(corpus)], tokenizer_dir, out, PrepareConfig(max_seq_length=64))
    assert manifest.counts["documents"] == 3000
    assert abs(manifest.statistics["nsp_random_share"] - 0.5) <= 0.02  # BERT's own rule: 0.75 here
    rows = _split_table(out).to_pylist()[:600]
    _check_pairs(rows, _document_ids(load_tokenizer(tokenizer_dir), documents), 64)


def test_a_huge_one_line_document_is_read_whole_in_parts(ray_session, tokenizer_dir, tmp_path):
    corpus = write_one_line_document(tmp_path / "huge.txt", num_words=40_000)
    text = (tmp_path / "huge.txt").read_text()
    expected = load_tokenizer(tokenizer_dir).encode(text, add_special_tokens=False).ids
    with small_units(64 << 10):  # ~5 parts of one document
        packed = prepare([corpus], tokenizer_dir, str(tmp_path / "mlm"), PrepareConfig(objective="mlm"))
        pairs = prepare([corpus], tokenizer_dir, str(tmp_path / "pairs"), PrepareConfig(max_seq_length=64))
    assert packed.counts["documents"] == pairs.counts["documents"] == 1
    rows = _in_built_order(str(tmp_path / "mlm")).to_pylist()
    stream = [t for row in rows for t in row["input_ids"][1:-1] if t != 3]
    assert stream == expected  # cut at spaces: no word split or lost
    assert abs(pairs.statistics["nsp_random_share"] - 0.5) <= 0.03
    assert pairs.statistics["mean_fill"] > 0.9  # a sentence without punctuation is cut to fit, not truncated
    rows = _split_table(str(tmp_path / "pairs")).to_pylist()[:300]
    _check_pairs(rows, [_id_string(expected)], 64)  # random Bs come from far parts of the same document


def test_binary_and_empty_files_are_skipped_and_named(
    ray_session, corpus_file, tokenizer_dir, tmp_path, capsys
):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(corpus_file, corpus / "text.txt")
    (corpus / "image.bin").write_bytes(bytes(range(256)) * 64)
    for name in ("e1.txt", "e2.txt", "e3.txt", "e4.txt"):
        (corpus / name).write_text("\n \n" if name == "e4.txt" else "")
    config = dataclasses.replace(TEST_PREPARE, eval_fraction=0.0)
    manifest = prepare([str(corpus)], tokenizer_dir, str(tmp_path / "out"), config)
    assert manifest.counts["skipped_binary_files"] == [str(corpus / "image.bin")]
    assert manifest.counts["skipped_empty_files"] == [str(corpus / f"e{n}.txt") for n in (1, 2, 3, 4)]
    assert manifest.counts["documents"] == 400 and manifest.counts["replaced"] == 0
    printed = capsys.readouterr().err  # warnings, on standard error
    binary = f"skipped 1 binary file(s), which have a NUL byte in their first 8 KiB: {corpus / 'image.bin'}"
    assert f"warning: {binary}\n" in printed
    names = ", ".join(str(corpus / f"e{n}.txt") for n in (1, 2, 3))
    assert f"warning: skipped 4 empty file(s), with no text: {names} and 1 more\n" in printed
    with pytest.raises(DataError, match="no text .1 binary files were skipped"):
        prepare([str(tmp_path / "corpus" / "image.bin")], tokenizer_dir, str(tmp_path / "out2"), config)


@pytest.mark.parametrize("stage", ["read, tokenize, build", "shuffle and write train"])
def test_interrupting_leaves_the_previous_data_and_nothing_half_written(
    stage, prepared_dir, corpus_file, tokenizer_dir, tmp_path, monkeypatch
):
    """Ctrl-C as the stage's tasks start: they stop (those still queued return at once, without their work),
    the staging directory goes and the previous data stays."""
    prepare_module = importlib.import_module("data.prepare")  # `data.prepare` is also the function
    out = tmp_path / "out"
    prepare([corpus_file], tokenizer_dir, str(out), TEST_PREPARE)
    before = {path: (out / path).read_bytes() for path in storage.list_files(str(out))}
    wait, interrupted_tasks = prepare_module._Tasks.wait, []

    def interrupted(self, refs, label, *args):
        if label == stage:
            interrupted_tasks.extend(refs)
            raise KeyboardInterrupt
        return wait(self, refs, label, *args)

    monkeypatch.setattr(prepare_module._Tasks, "wait", interrupted)
    with small_units(), pytest.raises(KeyboardInterrupt):  # about 20 build tasks on 2 CPUs
        prepare([corpus_file], tokenizer_dir, str(out), dataclasses.replace(TEST_PREPARE, seed=1))
    assert None in ray.get(interrupted_tasks)  # stopped, not cancelled: that would raise here
    assert {path: (out / path).read_bytes() for path in storage.list_files(str(out))} == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_task_that_starts_after_the_stop_returns_at_once(ray_session, tmp_path):
    """prepare stops its tasks with a file in the staging directory, which each looks for before its work."""
    prepare_module = importlib.import_module("data.prepare")
    staging = tmp_path / "out.partial"
    tasks = prepare_module._Tasks(str(staging))
    write = tasks.remote(write_shard)
    table = pa.table({"example_id": [0], "input_ids": [[2, 3]], "token_type_ids": [[0, 0]]})
    table = table.append_column("next_sentence_label", pa.array([0], pa.int8()))
    assert ray.get(write.remote(str(staging / "before.parquet"), 0, table)) == 1
    tasks.stopped.signal()
    assert ray.get(write.remote(str(staging / "after.parquet"), 0, table)) is None
    assert sorted(os.listdir(staging)) == [".stop", "before.parquet"]


def _rows_missing_text(path) -> str:
    """700 JSONL rows, every 7th without `text`."""
    rows = [{"body": "No text."} if n % 7 == 0 else {"text": f"Row {n}. It has text."} for n in range(1, 701)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_jsonl_rows_without_the_text_field_are_counted_and_the_first_named(
    ray_session, tokenizer_dir, tmp_path
):
    """The error names the file, the line of the first row without `text` and how many rows of the file
    lack it: of the whole file, though each task reads a part of it."""
    path = _rows_missing_text(tmp_path / "rows2.jsonl")
    with small_units(4 << 10), pytest.raises(DataError) as refused:  # about 5 parts, one task each
        prepare([path], tokenizer_dir, str(tmp_path / "out"), PrepareConfig(max_seq_length=64))
    assert str(refused.value) == (
        f"{path}: 100 of its 700 rows have no field 'text', the first on line 7 (it has body); fix or remove "
        "those rows (or pass --text-field NAME)"
    )


def test_an_error_in_the_tasks_is_printed_once(tokenizer_dir, tmp_path):
    """Raised in the build tasks, the error leaves prepare once: Ray does not print it again, with its
    traceback, for each result of those tasks that nobody read. (Its own process: Ray prints those when the
    results are freed, at the latest when the process ends.)"""
    path = _rows_missing_text(tmp_path / "rows2.jsonl")
    script = (
        "import sys\n"
        "from data import DataError, PrepareConfig, prepare, readers\n"
        "readers.MIN_UNIT_BYTES = 4 << 10\n"
        "try:\n"
        f"    prepare([{path!r}], {tokenizer_dir!r}, {str(tmp_path / 'out')!r}, PrepareConfig())\n"
        "except DataError as error:\n"
        "    print('error:', error, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=_own_ray_env(),
        cwd=ROOT,
    )
    assert done.returncode == 0 and done.stderr.count("have no field 'text'") == 1, done.stderr[-3000:]


def test_the_command_stops_the_ray_it_started(tokenizer_dir, corpus_file, tmp_path):
    """`bert-pretrain prepare` in its own process, as a user runs it: it starts a local Ray and leaves none of
    its processes behind."""
    command = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "prepare", "--corpus", corpus_file, "--tokenizer"]
        + [tokenizer_dir, "--out", str(tmp_path / "out"), "--format", "bert"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_own_ray_env(),
        cwd=ROOT,
    )
    _, stderr = command.communicate(timeout=120)
    assert command.returncode == 0, stderr[-3000:]
    # Ray names the session's directory after the driver's pid; every process of it has files there open.
    (session,) = Path("/tmp/ray").glob(f"session_*_{command.pid}")
    deadline = time.monotonic() + 10
    while (left := _processes_using(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [process.info["cmdline"] for process in left]


def _processes_using(session: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            names = [*(process.info["cmdline"] or []), *(f.path for f in process.open_files())]
        except psutil.Error:
            continue
        if any(str(session) in name for name in names):
            found.append(process)
    return found


def _own_ray_env() -> dict[str, str]:
    """This environment, without the address of a running Ray: the process starts its own."""
    return {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}


def test_empty_corpus_is_a_clear_error(ray_session, tokenizer_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n   \n\n")
    with pytest.raises(DataError, match=r"no text \(1 empty files were skipped\)"):
        prepare([str(tmp_path / "empty.txt")], tokenizer_dir, str(tmp_path / "out"), PrepareConfig())
    assert not os.path.exists(tmp_path / "out")


def test_one_document_with_nsp_is_a_clear_error(ray_session, tokenizer_dir, tmp_path):
    corpus = write_bert_corpus(tmp_path / "one.txt", make_documents(1))
    with pytest.raises(DataError, match="--objective mlm"):
        prepare([corpus], tokenizer_dir, str(tmp_path / "out"), PrepareConfig(input_format="bert"))


def test_bad_arguments_are_clear_errors(ray_session, tokenizer_dir, corpus_file, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare([str(tmp_path / "missing.txt")], tokenizer_dir, str(tmp_path / "out"), PrepareConfig())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a prepared directory"):
        prepare([corpus_file], tokenizer_dir, str(tmp_path / "busy"), PrepareConfig())
    with pytest.raises(DataError, match="is a file; give the path of a directory"):
        prepare([corpus_file], tokenizer_dir, str(tmp_path / "busy" / "notes.txt"), PrepareConfig())
    with pytest.raises(DataError, match="objective"):
        prepare([corpus_file], tokenizer_dir, str(tmp_path / "out"), PrepareConfig(objective="nsp"))
    with pytest.raises(DataError, match="every model preset has 512 positions"):
        prepare([corpus_file], tokenizer_dir, str(tmp_path / "out"), PrepareConfig(max_seq_length=1024))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine" and not os.path.exists(tmp_path / "out")


def test_a_bucket_holds_the_same_prepared_data_and_a_second_prepare_replaces_it(
    prepared_dir, corpus_file, tokenizer_dir, bucket
):
    out = f"{bucket}/prepared"
    with small_units():
        prepare([corpus_file], tokenizer_dir, out, TEST_PREPARE)
    assert _split_table(out).equals(_split_table(prepared_dir))
    assert load_manifest(out).counts == load_manifest(prepared_dir).counts
    assert tokenizer_hash(f"{out}/tokenizer") == tokenizer_hash(tokenizer_dir)
    assert not [path for path in storage.list_files(bucket) if ".partial-" in path]
    assert _masked_epoch(out).equals(_masked_epoch(prepared_dir))

    fewer_shards = dataclasses.replace(TEST_PREPARE, examples_per_shard=10**6)
    with small_units():
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
    assert sorted(_split_table(out).column("input_ids").to_pylist()) == sorted(
        _split_table(prepared_dir).column("input_ids").to_pylist()
    )


def test_a_bucket_folder_that_is_not_prepared_data_is_refused(
    ray_session, corpus_file, tokenizer_dir, bucket
):
    storage.write_text(f"{bucket}/busy/notes.txt", "mine")
    with pytest.raises(DataError, match="not a prepared directory"):
        prepare([corpus_file], tokenizer_dir, f"{bucket}/busy", TEST_PREPARE)
    assert storage.read_text(f"{bucket}/busy/notes.txt") == "mine"


def test_a_shard_is_written_in_row_groups_that_a_stream_window_reads_alone(tmp_path):
    rows = 2 * ROW_GROUP_ROWS + 100
    table = pa.table(
        {
            "example_id": np.arange(rows),
            "input_ids": [[2, 5, 3]] * rows,
            "token_type_ids": [[0, 0, 0]] * rows,
            "next_sentence_label": np.zeros(rows, np.int8),
        }
    )
    assert write_shard(str(tmp_path / "shard.parquet"), 0, table.slice(0, 500), table.slice(500)) == rows
    shard = pq.ParquetFile(tmp_path / "shard.parquet")
    groups = [shard.metadata.row_group(g).num_rows for g in range(shard.num_row_groups)]
    assert groups == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 100]
    assert shard.read().column("example_id").to_pylist() == list(range(rows))
