"""Reading corpora: every input format, byte ranges, huge one-line documents, invalid UTF-8, bad paths."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data import DataError, readers
from data.readers import iter_range_documents, plan_units, read_documents, read_unit, resolve_corpus
from data.sentences import document_sentences, split_sentences

from .conftest import small_units

TEXTS = ["First document. It has two sentences.", "Second one!\nWith a second paragraph.", "Third."]


def _read_all(corpus, input_format="auto", text_field="text"):
    dataset = read_documents(resolve_corpus(corpus, input_format), text_field)
    return sorted(row["text"].strip() for row in dataset.take_all())


@pytest.mark.parametrize("input_format", ["bert", "text", "jsonl", "parquet", "hf"])
def test_each_input_format_is_read(ray_session, tmp_path, input_format):
    if input_format in ("bert", "text"):
        (tmp_path / "c.txt").write_text("\n\n".join(TEXTS) + "\n")
        corpus = [str(tmp_path / "c.txt")]
    elif input_format == "jsonl":
        (tmp_path / "c.jsonl").write_text(
            "".join(json.dumps({"body": t, "id": i}) + "\n" for i, t in enumerate(TEXTS))
        )
        corpus = [str(tmp_path / "c.jsonl")]
    elif input_format == "parquet":
        pq.write_table(pa.table({"body": TEXTS}), tmp_path / "c.parquet")
        corpus = [str(tmp_path)]  # a directory
    else:
        import datasets

        datasets.Dataset.from_dict({"body": TEXTS}).save_to_disk(str(tmp_path / "hf"))
        corpus = [str(tmp_path / "hf")]
    text_field = "text" if input_format in ("bert", "text") else "body"
    assert resolve_corpus(corpus).input_format == ("text" if input_format == "bert" else input_format)
    assert _read_all(corpus, input_format, text_field) == sorted(TEXTS)


def test_missing_text_field_names_the_fix(ray_session, tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match="--text-field"):
        read_documents(resolve_corpus([str(tmp_path / "c.jsonl")]), "text")


def test_globs_and_directories_expand_in_sorted_order(tmp_path):
    for name in ("b.txt", "a.txt", ".hidden.txt"):
        (tmp_path / name).write_text("x\n")
    assert resolve_corpus([str(tmp_path / "*.txt")]).paths == (
        str(tmp_path / "a.txt"),
        str(tmp_path / "b.txt"),
    )
    assert resolve_corpus([str(tmp_path)]).paths == (str(tmp_path / "a.txt"), str(tmp_path / "b.txt"))


@pytest.mark.parametrize("corpus", [[], ["/no/such/corpus.txt"], ["/no/such/*.txt"]])
def test_bad_paths_are_clear_errors(corpus):
    with pytest.raises(DataError, match="no corpus given|does not exist"):
        resolve_corpus(corpus)


def test_any_byte_ranges_give_the_same_documents(tmp_path):
    documents = [f"doc {i} line one\nline two of {i}" * (1 + i % 3) for i in range(50)]
    path = tmp_path / "c.txt"
    path.write_text("\n\n  \n".join(documents) + "\n\n")
    size = path.stat().st_size
    whole = list(iter_range_documents(str(path), 0, size))
    assert [d.decode().strip() for d in whole] == documents
    for range_bytes in (1, 7, 100, 999):
        pieces = [
            document
            for start in range(0, size, range_bytes)
            for document in iter_range_documents(str(path), start, min(start + range_bytes, size))
        ]
        assert pieces == whole


def test_a_huge_one_line_document_streams_in_bounded_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_DOCUMENT_BYTES", 64 * 1024)
    words = [f"word{i % 977}" for i in range(600_000)]  # ~5 MB, no newline
    path = tmp_path / "huge.txt"
    path.write_text(" ".join(words))
    pieces = list(iter_range_documents(str(path), 0, path.stat().st_size))
    assert len(pieces) > 50
    assert max(len(piece) for piece in pieces) <= 64 * 1024
    assert b"".join(pieces).decode().split() == words  # cut at spaces: no word split or lost


def test_invalid_utf8_is_replaced_and_counted(ray_session, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text\n\nbad \xff\xfe bytes and a real \xef\xbf\xbd\n")
    rows = read_documents(resolve_corpus([str(path)])).take_all()
    assert sorted(row["replaced"] for row in rows) == [0, 2]
    assert any("\ufffd" in row["text"] for row in rows)


def test_sentence_splitter_keeps_abbreviations_and_initials():
    text = "Dr. Smith met J. R. Jones at 5 p.m. on Main St. today. It rained! Did it? Yes (mostly)."
    assert split_sentences(text) == [
        "Dr. Smith met J. R. Jones at 5 p.m. on Main St. today.",
        "It rained!",
        "Did it?",
        "Yes (mostly).",
    ]
    assert document_sentences("One. Two.\nThree", one_sentence_per_line=True) == ["One. Two.", "Three"]
    assert document_sentences("One. Two.\nThree", one_sentence_per_line=False) == ["One.", "Two.", "Three"]


def test_units_pack_small_files_and_cut_large_ones_into_parts_that_tile_them(tmp_path):
    small = [tmp_path / f"a{i}.txt" for i in range(6)]
    for i, path in enumerate(small):
        path.write_text(f"Small file {i}.\n\nIt has two paragraphs.\n" * 50)
    lines = "".join(
        f"Line {i} of a long file, wrapped at eighty columns as people write.\n" for i in range(800)
    )
    (tmp_path / "b.txt").write_text(lines)
    (tmp_path / "c.txt").write_text(" ".join(f"word{i}" for i in range(20000)))  # one line, no newline
    with small_units(16 << 10):
        units = plan_units(resolve_corpus([str(tmp_path)]))
    assert [part.path for part in units[0].parts] == [str(p) for p in small]  # 6 files of 2 KiB
    by_file: dict[str, list[str]] = {}
    for unit in units:
        text = read_unit(unit, "text", "file")
        for part, document in zip(unit.parts, text.texts, strict=True):
            by_file.setdefault(part.path, []).append(document)
        assert len(unit.parts) == len(text.texts)
    assert len(by_file[str(tmp_path / "b.txt")]) == 4 and len(by_file[str(tmp_path / "c.txt")]) >= 8
    for path, documents in by_file.items():
        assert "".join(documents) == Path(path).read_text()  # the parts tile the file, cut at whitespace
    assert all(d[-1] in " \n" for d in by_file[str(tmp_path / "c.txt")][:-1])


def test_a_binary_file_is_skipped_and_named_by_the_reader(tmp_path):
    (tmp_path / "a.txt").write_text("Some text.\n")
    (tmp_path / "b.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8)
    (unit,) = plan_units(resolve_corpus([str(tmp_path)]))
    text = read_unit(unit, "text", "file")
    assert text.texts == ["Some text.\n"] and text.binary_files == [str(tmp_path / "b.gz")]


@pytest.mark.parametrize("documents", ["file", "blank-line"])
def test_empty_files_are_skipped_and_named_by_the_reader(tmp_path, documents):
    (tmp_path / "a.txt").write_text("Some text.\n")
    (tmp_path / "b.txt").write_bytes(b"")
    (tmp_path / "c.txt").write_text(" \n\n\t\n")
    (unit,) = plan_units(resolve_corpus([str(tmp_path)]))
    text = read_unit(unit, "text", documents)
    assert text.texts == ["Some text.\n"]
    assert text.empty_files == [str(tmp_path / "b.txt"), str(tmp_path / "c.txt")] and not text.binary_files


def test_an_empty_jsonl_file_is_skipped_and_named_by_the_reader(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "Some text."}) + "\n")
    (tmp_path / "b.jsonl").write_text("\n \n")
    (unit,) = plan_units(resolve_corpus([str(tmp_path)]))
    text = read_unit(unit, "jsonl")
    assert text.texts == ["Some text."] and text.empty_files == [str(tmp_path / "b.jsonl")]


def test_wrapped_paragraphs_keep_their_sentences_whole():
    text = "The first sentence is wrapped\nover two lines. A second one.\n\n  \nA new paragraph\nhere."
    assert document_sentences(text, one_sentence_per_line=False) == [
        "The first sentence is wrapped over two lines.",
        "A second one.",
        "A new paragraph here.",
    ]
