"""Corpus readers: paths, globs and URIs to a Ray Dataset of documents (`text`, `replaced`).

Text files (BERT format and plain text) are read in byte ranges by our own Ray Data tasks so that a file of
any size, and a document of any size, streams in bounded memory: a document belongs to the range its first
byte lies in, and a document longer than `MAX_DOCUMENT_BYTES` comes as consecutive pieces cut at whitespace.
JSONL, Parquet and saved HF datasets go through Ray Data's own readers, one row a document.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from data import storage
from data.errors import DataError

BUILTIN_CORPUS_WORD = "builtin"
MAX_DOCUMENT_BYTES = 1 << 20
"""A longer document (say 100 MB on one line) is processed as consecutive pieces of about this size."""
READ_RANGE_BYTES = 8 << 20
"""The most bytes of a text file one read task owns (when `num_blocks` does not say otherwise)."""
MIN_READ_RANGE_BYTES = 256 << 10
"""Smaller corpora are cut into ranges of at least this size, two per cluster CPU, so all CPUs get work."""
_READ_BYTES = 1 << 20
_EMIT_BATCH_BYTES = 16 << 20
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
    for entry in corpus:
        if entry == BUILTIN_CORPUS_WORD:
            from data.builtin_corpus import builtin_corpus_path

            entry = builtin_corpus_path()
        for path, size in _expand(entry):
            paths.append(path)
            sizes.append(size)
    formats = {_detect_format(path) for path in paths} if input_format == "auto" else {input_format}
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


def read_documents(files: CorpusFiles, text_field: str = "text", num_blocks: int | None = None):
    """A Ray Dataset of the corpus documents: `text` (str) and `replaced` (invalid UTF-8 bytes replaced)."""
    import ray.data

    if files.input_format in ("bert", "text"):
        ranges = _byte_ranges(files.paths, num_blocks)
        return ray.data.from_items(ranges, override_num_blocks=max(1, len(ranges))).map_batches(
            _read_range_documents, batch_size=1, batch_format="pyarrow"
        )
    if files.input_format == "jsonl":
        dataset = ray.data.read_json(
            list(files.paths), lines=True, file_extensions=None, override_num_blocks=num_blocks
        )
    elif files.input_format == "parquet":
        dataset = ray.data.read_parquet(list(files.paths), override_num_blocks=num_blocks)
    else:
        dataset = _read_hf_datasets(files.paths, num_blocks)
    columns = dataset.columns()
    if text_field not in columns:
        raise DataError(
            f"the {files.input_format} corpus has no field {text_field!r} (it has {', '.join(columns)}); "
            "pass --text-field NAME"
        )
    return dataset.select_columns([text_field]).map_batches(
        _as_documents, fn_kwargs={"text_field": text_field}, batch_format="pyarrow"
    )


def _read_hf_datasets(paths: tuple[str, ...], num_blocks: int | None):
    import datasets
    import ray.data

    parts = []
    for path in paths:
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise DataError(f"the HF dataset at {path} has no 'train' split (it has {list(loaded)})")
            loaded = loaded["train"]
        parts.append(ray.data.from_huggingface(loaded, override_num_blocks=num_blocks))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _as_documents(batch: pa.Table, text_field: str) -> pa.Table:
    texts = batch.column(text_field).cast(pa.string()).fill_null("")
    return pa.table({"text": texts, "replaced": pa.array([0] * len(texts), pa.int64())})


def _byte_ranges(paths: tuple[str, ...], num_blocks: int | None) -> list[dict]:
    sizes = [_file_size(path) for path in paths]
    total = sum(sizes)
    if num_blocks:
        range_bytes = max(1, math.ceil(total / num_blocks))
    else:
        per_cpu = math.ceil(total / (2 * cluster_cpus()))
        range_bytes = min(READ_RANGE_BYTES, max(MIN_READ_RANGE_BYTES, per_cpu))
    ranges = []
    for path, size in zip(paths, sizes, strict=True):
        for start in range(0, size, range_bytes):
            ranges.append({"path": path, "start": start, "end": min(start + range_bytes, size)})
    return ranges


def cluster_cpus() -> int:
    """The CPUs of the Ray cluster (at least 1): how many tasks a stage can run at once."""
    import ray

    from data.local_ray import init_ray

    init_ray()  # what Ray Data's first operation would do, on 127.0.0.1
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _file_size(path: str) -> int:
    filesystem, inner = storage.resolve(path)
    return filesystem.get_file_info(inner).size


def _read_range_documents(batch: pa.Table) -> Iterator[pa.Table]:
    """Ray Data UDF: the documents that start in one byte range of a text file, in tables of ~16 MB."""
    (item,) = batch.to_pylist()
    texts: list[str] = []
    replaced: list[int] = []
    pending_bytes = 0
    for document in iter_range_documents(item["path"], item["start"], item["end"]):
        text, count = decode_replacing(document)
        texts.append(text)
        replaced.append(count)
        pending_bytes += len(document)
        if pending_bytes >= _EMIT_BATCH_BYTES:
            yield pa.table({"text": texts, "replaced": pa.array(replaced, pa.int64())})
            texts, replaced, pending_bytes = [], [], 0
    yield pa.table({"text": pa.array(texts, pa.string()), "replaced": pa.array(replaced, pa.int64())})


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
    """Stream the corpus's text on this process (for tokenizer training): documents or pieces of them."""
    if files.input_format in ("bert", "text"):
        for path in files.paths:
            for document in iter_range_documents(path, 0, _file_size(path)):
                yield decode_replacing(document)[0]
        return
    if files.input_format == "hf":
        import datasets

        for path in files.paths:
            loaded = datasets.load_from_disk(path)
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded["train"]
            _require_field(text_field, loaded.column_names, path)
            for batch in loaded.iter(batch_size=1000):
                yield from (text for text in batch[text_field] if text)
        return
    import pyarrow.dataset as pads

    for path in files.paths:
        filesystem, inner = storage.resolve(path)
        source_format = pads.JsonFileFormat() if files.input_format == "jsonl" else "parquet"
        table_source = pads.dataset(inner, filesystem=filesystem, format=source_format)
        _require_field(text_field, table_source.schema.names, path)
        for batch in table_source.to_batches(columns=[text_field]):
            yield from (text for text in batch.column(0).to_pylist() if text)


def _require_field(text_field: str, names: list[str], path: str) -> None:
    if text_field not in names:
        raise DataError(
            f"{path} has no field {text_field!r} (it has {', '.join(names)}); pass --text-field NAME"
        )
