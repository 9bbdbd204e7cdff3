"""Corpus readers: paths, globs and URIs -> work units -> the documents of a unit.

The corpus is cut into work units by its files alone (`plan_units`), so that every later choice, and so the
output, is the same on any cluster. A unit is read by one task (`read_unit`):
- plain text: a file is a document (`documents="file"`); a file larger than a unit comes as consecutive parts
  cut at whitespace, each its own document for pairing. With `documents="blank-line"`, and always in the BERT
  format, blank lines separate documents: a document belongs to the part its first byte lies in, and one
  longer than `MAX_DOCUMENT_BYTES` comes as consecutive pieces cut at whitespace.
- JSONL (lines that start in a byte range), Parquet (row groups), saved HF datasets (row ranges): a row is a
  document.
A text file with a NUL byte in its first 8 KiB is binary (as git and grep tell): it is skipped and named.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from common import storage
from data.errors import DataError
from data.hashing import text_key

BUILTIN_CORPUS_WORD = "builtin"
MAX_DOCUMENT_BYTES = 1 << 20
"""A longer blank-line document (say 100 MB on one line) is processed in consecutive pieces of this size."""
MIN_UNIT_BYTES = 1 << 20
MAX_UNIT_BYTES = 16 << 20
_READ_BYTES = 1 << 20
_KEY_BYTES = 64 << 10
_BINARY_SNIFF_BYTES = 8 << 10
_WHITESPACE = b" \t\n\r\f\v"
_EXTENSION_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class CorpusFiles:
    """The resolved corpus: one format, the files (or HF dataset directories) to read, their total size."""

    input_format: str
    paths: tuple[str, ...]
    total_bytes: int


def resolve_corpus(corpus: list[str], input_format: str = "auto") -> CorpusFiles:
    """Expand files, directories, globs and URIs (and the word `builtin`) into files of one format."""
    if not corpus:
        raise DataError("no corpus given: pass --corpus PATH (a file, directory, glob or URI, or `builtin`)")
    paths: list[str] = []
    sizes: list[int] = []
    formats: set[str] = set()
    for entry in corpus:
        if entry == BUILTIN_CORPUS_WORD:
            from data.builtin_corpus import builtin_corpus_path

            paths.append(builtin_corpus_path())
            sizes.append(os.path.getsize(paths[-1]))
            formats.add("bert")  # a sentence a line, a blank line between modules
            continue
        for path, size in _expand(entry):
            paths.append(path)
            sizes.append(size)
            formats.add(_detect_format(path))
    formats = formats if input_format == "auto" else {input_format}
    if len(formats) > 1:
        raise DataError(
            f"the corpus mixes formats ({', '.join(sorted(formats))}); prepare one format at a time or "
            "pass --format to read them all one way"
        )
    if not paths:
        raise DataError(f"the corpus {corpus} holds no files; check the paths (hidden files are skipped)")
    return CorpusFiles(formats.pop(), tuple(paths), sum(sizes))


def _expand(entry: str) -> list[tuple[str, int]]:
    if storage.is_uri(entry):
        filesystem, root = pafs.FileSystem.from_uri(entry)
        scheme = entry.split("://", 1)[0]
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"corpus path {entry} does not exist; check the URI and your credentials")
        if info.type == pafs.FileType.File:
            return [(entry, info.size)]
        listing = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
        return sorted(
            (f"{scheme}://{item.path}", item.size)
            for item in listing
            if item.type == pafs.FileType.File and not os.path.basename(item.path).startswith(".")
        )
    matches = sorted(glob.glob(entry, recursive=True)) if glob.has_magic(entry) else [entry]
    if not matches or not os.path.exists(matches[0]):
        raise DataError(f"corpus path {entry} does not exist; check the path (or the glob matches nothing)")
    files: list[tuple[str, int]] = []
    for match in matches:
        if os.path.isdir(match) and not _is_hf_dataset_dir(match):
            for root, dirs, names in os.walk(match):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(
                    (os.path.join(root, name), os.path.getsize(os.path.join(root, name)))
                    for name in sorted(names)
                    if not name.startswith(".")
                )
        elif os.path.isdir(match):
            files.append((match, _directory_bytes(match)))
        else:
            files.append((match, os.path.getsize(match)))
    return files


def _is_hf_dataset_dir(path: str) -> bool:
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    return any(os.path.exists(os.path.join(path, marker)) for marker in markers)


def _directory_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
    )


def _detect_format(path: str) -> str:
    if not storage.is_uri(path) and os.path.isdir(path):
        return "hf"
    return _EXTENSION_FORMATS.get(os.path.splitext(path)[1].lower(), "text")


def read_documents(files: CorpusFiles, text_field: str = "text", documents: str = "blank-line"):
    """A Ray Dataset of the corpus documents, one read task per work unit: `text` (str) and `replaced`
    (invalid UTF-8 bytes replaced with U+FFFD). Plain text is cut into documents by `documents`."""
    import ray.data

    units = plan_units(files, text_field)
    return ray.data.from_items(list(range(len(units))), override_num_blocks=max(1, len(units))).map_batches(
        _unit_documents_table,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"units": units, "input_format": files.input_format, "documents": documents},
    )


def _unit_documents_table(batch: pa.Table, units: list[WorkUnit], input_format: str, documents: str):
    (index,) = batch.column("item").to_pylist()
    unit = read_unit(units[index], input_format, documents)
    return pa.table(
        {"text": pa.array(unit.texts, pa.string()), "replaced": pa.array(unit.replaced, pa.int64())}
    )


# --- work units -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """A piece of one file: bytes [start, end) of a text or JSONL file, row groups [start, end) of a Parquet
    file, rows [start, end) of a saved HF dataset."""

    path: str
    start: int
    end: int


@dataclass(frozen=True)
class WorkUnit:
    """What one task reads: consecutive parts of the corpus, about `unit_bytes` in all."""

    index: int
    parts: tuple[Part, ...]
    nbytes: int
    """The corpus bytes it covers."""
    text_field: str = "text"


def unit_bytes(total_bytes: int) -> int:
    """The size of a work unit: 1 MiB (so that a small corpus still has units for every CPU), up to 16 MiB
    for corpora above 256 MiB (so that a large one has no more than a few hundred thousand task outputs)."""
    return min(MAX_UNIT_BYTES, max(MIN_UNIT_BYTES, total_bytes // 256))


def plan_units(files: CorpusFiles, text_field: str = "text") -> list[WorkUnit]:
    """Cut the corpus into work units by its files alone (their order and sizes), never by the cluster, so
    that the output is the same on any cluster: consecutive small files share a unit, a large file is cut
    into parts of about equal size (at whitespace, when read), and parts are packed in order up to the unit
    size."""
    size = unit_bytes(files.total_bytes)
    if files.input_format == "jsonl" and files.paths:  # a wrong --text-field fails here, not in a task
        _read_jsonl_part(Part(files.paths[0], 0, 1), text_field)
    pieces = [
        piece for path in files.paths for piece in _file_pieces(path, files.input_format, text_field, size)
    ]
    units: list[WorkUnit] = []
    current: list[Part] = []
    current_bytes = 0
    for part, nbytes in pieces:
        if current and current_bytes + nbytes > size:
            units.append(WorkUnit(len(units), tuple(current), current_bytes, text_field))
            current, current_bytes = [], 0
        if current and current[-1].path == part.path and current[-1].end == part.start:
            current[-1] = Part(part.path, current[-1].start, part.end)  # consecutive row groups or rows
        else:
            current.append(part)
        current_bytes += nbytes
    if current:
        units.append(WorkUnit(len(units), tuple(current), current_bytes, text_field))
    return units


def _file_pieces(path: str, input_format: str, text_field: str, size: int) -> list[tuple[Part, int]]:
    """The parts of one file that a unit may hold, each with its share of the file's bytes on disk."""
    if input_format == "parquet":
        import pyarrow.parquet as pq

        filesystem, inner = storage.resolve(path)
        metadata = pq.read_metadata(inner, filesystem=filesystem)
        _require_field(text_field, metadata.schema.to_arrow_schema().names, path)
        file_bytes, rows = _file_size(path), max(1, metadata.num_rows)
        return [
            (Part(path, group, group + 1), file_bytes * metadata.row_group(group).num_rows // rows)
            for group in range(metadata.num_row_groups)
        ]
    if input_format == "hf":
        dataset = _load_hf_dataset(path)
        _require_field(text_field, dataset.column_names, path)
        rows, nbytes = len(dataset), max(1, _directory_bytes(path))
        rows_per_piece = max(1, math.ceil(rows * MIN_UNIT_BYTES / nbytes))
        return [
            (
                Part(path, row, min(rows, row + rows_per_piece)),
                nbytes * min(rows_per_piece, rows - row) // rows,
            )
            for row in range(0, rows, rows_per_piece)
        ]
    file_bytes = _file_size(path)
    count = max(1, math.ceil(file_bytes / size))
    step = math.ceil(file_bytes / count)
    bounds = [min(file_bytes, k * step) for k in range(count + 1)]
    return [(Part(path, low, high), high - low) for low, high in zip(bounds, bounds[1:], strict=False)]


# --- reading a unit ---------------------------------------------------------------------------------------


@dataclass
class UnitText:
    """The documents of one work unit, in corpus order."""

    texts: list[str]
    keys: list[int]
    """Each document's key: which split it joins. For a file read as one document, a hash of the file's first
    64 KiB (every part of a large file gets the same one); else a hash of the document's text."""
    continued: list[bool]
    """Whether the document is a later part of a file read as one document (not counted as a new document)."""
    replaced: list[int]
    """Invalid UTF-8 bytes replaced with U+FFFD, per document."""
    binary_files: list[str]
    """Files skipped as binary (named by the part that starts them)."""
    empty_files: list[str]
    """Files skipped as empty: no bytes, or whitespace only (text up to 64 KiB; JSONL: no row)."""


def read_unit(unit: WorkUnit, input_format: str, documents: str = "file") -> UnitText:
    """Read the documents of `unit`."""
    out = UnitText([], [], [], [], [], [])
    for part in unit.parts:
        if input_format in ("text", "bert"):
            _read_text_part(part, documents == "file" and input_format == "text", out)
        else:
            texts = _read_rows(part, input_format, unit.text_field)
            no_row = not texts and input_format == "jsonl" and part.start == 0
            if no_row and part.end >= _file_size(part.path):  # in the whole file
                out.empty_files.append(part.path)
            for text in texts:
                _add(out, text, text_key(text), False, 0)
    return out


def _add(out: UnitText, text: str, key: int, continued: bool, replaced: int) -> None:
    out.texts.append(text)
    out.keys.append(key)
    out.continued.append(continued)
    out.replaced.append(replaced)


def _read_text_part(part: Part, whole_file_documents: bool, out: UnitText) -> None:
    filesystem, inner = storage.resolve(part.path)
    with filesystem.open_input_file(inner) as stream:
        head = stream.read(_KEY_BYTES)
        if b"\0" in head[:_BINARY_SNIFF_BYTES]:
            if part.start == 0:
                out.binary_files.append(part.path)
            return
        if not head.strip(_WHITESPACE) and len(head) == stream.size():
            if part.start == 0:
                out.empty_files.append(part.path)
            return
        if whole_file_documents:
            size = stream.size()
            start, end = _piece_boundary(stream, size, part.start), _piece_boundary(stream, size, part.end)
            stream.seek(start)
            text, replaced = decode_replacing(stream.read(end - start))
            _add(out, text, _bytes_key(head), start > 0, replaced)
            return
    for document in iter_range_documents(part.path, part.start, part.end):
        text, replaced = decode_replacing(document)
        _add(out, text, text_key(text), False, replaced)


def _bytes_key(raw: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


def _piece_boundary(stream, size: int, offset: int) -> int:
    """Where a part boundary at `offset` of a file read as one document really falls: after the first blank
    line, else newline, else space in the next 64 KiB, else at the next UTF-8 character. Both parts that meet
    there compute the same place, so the parts tile the file."""
    if offset <= 0 or offset >= size:
        return min(max(offset, 0), size)
    stream.seek(offset)
    window = stream.read(_KEY_BYTES)
    for separator in (b"\n\n", b"\n", b" ", b"\t"):
        found = window.find(separator)
        if found >= 0:
            return offset + found + len(separator)
    skip = 0
    while skip < len(window) and window[skip] & 0xC0 == 0x80:
        skip += 1
    return offset + skip


def _read_rows(part: Part, input_format: str, text_field: str) -> list[str]:
    """The texts of the rows in one part of a JSONL, Parquet or HF dataset file (a missing text is "")."""
    if input_format == "jsonl":
        return _read_jsonl_part(part, text_field)
    if input_format == "parquet":
        import pyarrow.parquet as pq

        filesystem, inner = storage.resolve(part.path)
        table = pq.ParquetFile(inner, filesystem=filesystem).read_row_groups(
            list(range(part.start, part.end)), columns=[text_field]
        )
        column = table.column(0)
    else:
        column = _load_hf_dataset(part.path).with_format("arrow")[part.start : part.end].column(text_field)
    return column.cast(pa.string()).fill_null("").to_pylist()


def _read_jsonl_part(part: Part, text_field: str) -> list[str]:
    """The rows of the lines that start in [start, end)."""
    filesystem, inner = storage.resolve(part.path)
    with filesystem.open_input_file(inner) as stream:
        size = stream.size()
        first = _first_line_start(stream, part.start)
        if first is None:
            return []
        last = size if part.end >= size else _first_line_start(stream, part.end)
        last = size if last is None else last
        stream.seek(first)
        raw = stream.read(max(0, last - first))
    texts = []
    for number, line in enumerate(raw.split(b"\n")):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise DataError(
                f"{part.path}: line {number + 1} after byte {first} is not JSON ({error}); fix the line or "
                "pass --format text to read the file as plain text"
            ) from None
        if not isinstance(row, dict) or text_field not in row:
            raise _missing_field_error(part.path, text_field)
        text = row[text_field]
        texts.append("" if text is None else str(text))
    return texts


def _missing_field_error(path: str, text_field: str) -> DataError:
    """The error for a JSONL file with rows that lack `text_field`: how many do, and the line of the first
    (the whole file is read again, on this error path only)."""
    filesystem, inner = storage.resolve(path)
    rows, missing, first, number, pending = 0, 0, None, 0, b""
    with filesystem.open_input_stream(inner) as stream:
        while True:
            chunk = stream.read(_READ_BYTES)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop() if chunk else b""
            for line in lines:
                number += 1
                try:
                    row = json.loads(line)
                except ValueError:  # blank or not JSON
                    continue
                rows += 1
                if not isinstance(row, dict) or text_field not in row:
                    missing += 1
                    if first is None:
                        first = (number, ", ".join(row) if isinstance(row, dict) else type(row).__name__)
            if not chunk:
                break
    line, names = first or (0, "")
    if missing == rows:
        return DataError(f"{path} has no field {text_field!r} (it has {names}); pass --text-field NAME")
    return DataError(
        f"{path}: {missing:,} of its {rows:,} rows have no field {text_field!r}, the first on line {line} "
        f"(it has {names}); fix or remove those rows (or pass --text-field NAME)"
    )


_HF_DATASETS: dict[str, object] = {}


def _load_hf_dataset(path: str):
    """The dataset saved at `path` (memory-mapped; loaded once per process); its "train" split if a dict."""
    if path not in _HF_DATASETS:
        import datasets

        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise DataError(f"the HF dataset at {path} has no 'train' split (it has {list(loaded)})")
            loaded = loaded["train"]
        _HF_DATASETS[path] = loaded
    return _HF_DATASETS[path]


def _file_size(path: str) -> int:
    filesystem, inner = storage.resolve(path)
    return filesystem.get_file_info(inner).size


def decode_replacing(raw: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing invalid bytes with U+FFFD; also return how many replacements were made."""
    text = raw.decode("utf-8", errors="replace")
    return text, text.count("\ufffd") - raw.count("\ufffd".encode())


def iter_range_documents(path: str, start: int, end: int) -> Iterator[bytes]:
    """The documents (blank-line separated) whose first byte is in [start, end), in pieces of bounded size."""
    filesystem, inner = storage.resolve(path)
    with filesystem.open_input_file(inner) as stream:
        line_start = _first_line_start(stream, start)
        if line_start is None or line_start >= end:
            return
        previous_line_blank = line_start == 0 or _line_before_is_blank(stream, line_start)
        stream.seek(line_start)
        document = bytearray()
        in_document = False
        at_line_start = True
        for offset, piece, line_complete in _iter_line_pieces(stream, line_start):
            blank = at_line_start and line_complete and not piece.strip(_WHITESPACE)
            if blank:
                if in_document:
                    yield bytes(document)
                    document.clear()
                    in_document = False
                previous_line_blank = True
            else:
                if not in_document and at_line_start and previous_line_blank:
                    if offset >= end:
                        break
                    in_document = True
                if in_document:
                    document += piece
                    while len(document) >= MAX_DOCUMENT_BYTES:
                        cut = _piece_cut(document)
                        yield bytes(document[:cut])
                        del document[:cut]
                previous_line_blank = False
            at_line_start = line_complete
            if blank and offset >= end:
                break
        if in_document and document.strip(_WHITESPACE):
            yield bytes(document)


def _first_line_start(stream, start: int) -> int | None:
    """The offset of the first line that starts at or after `start` (None at the end of the file)."""
    if start == 0:
        return 0
    stream.seek(start - 1)
    if stream.read(1) == b"\n":
        return start
    for offset, piece, line_complete in _iter_line_pieces(stream, start):
        if line_complete:
            return offset + len(piece)
    return None


def _line_before_is_blank(stream, line_start: int) -> bool:
    """Whether the line that ends just before `line_start` holds only whitespace (looked up to 4 KiB back)."""
    lookback = min(line_start, 4096)
    stream.seek(line_start - lookback)
    before = stream.read(lookback)[:-1]
    newline = before.rfind(b"\n")
    if newline < 0 and line_start - lookback > 0:
        return False
    return not before[newline + 1 :].strip(_WHITESPACE)


def _iter_line_pieces(stream, offset: int) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, bytes, line_complete) for each line from the stream's position; long lines come in pieces."""
    buffer = b""
    consumed = 0
    end_of_file = False
    while True:
        newline = buffer.find(b"\n", consumed)
        while newline < 0 and len(buffer) - consumed < MAX_DOCUMENT_BYTES and not end_of_file:
            more = stream.read(_READ_BYTES)
            if not more:
                end_of_file = True
                break
            buffer = buffer[consumed:] + more
            consumed = 0
            newline = buffer.find(b"\n")
        if consumed >= len(buffer):
            return
        if 0 <= newline < consumed + MAX_DOCUMENT_BYTES:
            piece_end, complete = newline + 1, True
        elif len(buffer) - consumed >= MAX_DOCUMENT_BYTES:
            piece_end, complete = consumed + MAX_DOCUMENT_BYTES, False
        else:
            piece_end, complete = len(buffer), True
        yield offset, buffer[consumed:piece_end], complete
        offset += piece_end - consumed
        consumed = piece_end


def _piece_cut(document: bytearray) -> int:
    """Where to cut an oversized document: after the last whitespace, else at a UTF-8 character boundary."""
    limit = MAX_DOCUMENT_BYTES
    for separator in (b"\n", b" ", b"\t"):
        cut = document.rfind(separator, limit // 2, limit)
        if cut >= 0:
            return cut + 1
    cut = limit
    while cut > 0 and document[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut


def iter_corpus_texts(files: CorpusFiles, text_field: str = "text") -> Iterator[str]:
    """Stream the corpus's text on this process (for tokenizer training), unit by unit: its documents (plain
    text by blank lines, so that no string is larger than a unit)."""
    for unit in plan_units(files, text_field):
        yield from (text for text in read_unit(unit, files.input_format, "blank-line").texts if text)


def _require_field(text_field: str, names: list[str], path: str) -> None:
    if text_field not in names:
        raise DataError(
            f"{path} has no field {text_field!r} (it has {', '.join(names)}); pass --text-field NAME"
        )
