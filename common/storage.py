"""Local folders and bucket URIs (s3://, gs://, abfs://) through one set of calls, on pyarrow's file systems.

Prepared data and runs may live in a bucket so that every node of a cluster sees them. Bucket credentials
and endpoints come from the environment as pyarrow reads them (an instance profile, AWS_* variables).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator

import pyarrow.fs as pafs

from common.errors import StorageError


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def join(base: str | os.PathLike, *parts: str) -> str:
    return posixpath.join(str(base), *parts) if is_uri(base) else os.path.join(base, *parts)


def basename(path: str | os.PathLike) -> str:
    """The last part of a local path or URI."""
    return posixpath.basename(str(path).rstrip("/"))


def absolute(path: str | None) -> str | None:
    """A local path made absolute (workers run in other folders); a URI as it is."""
    if path is None or is_uri(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The file system holding `path` and the path within it."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _clear_bucket_errors(function):
    """A bucket's OSError (unreachable, no credentials, no permission) becomes a StorageError naming the
    fix."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except OSError as error:
            uris = [str(a) for a in args if isinstance(a, str | os.PathLike) and is_uri(a)]
            if not uris:
                raise
            raise StorageError(
                f"{' -> '.join(uris)}: {error}. Check the URI, the network and the bucket's credentials "
                "(AWS_* environment variables or the node's instance profile)"
            ) from error

    return wrapper


@_clear_bucket_errors
def exists(path: str | os.PathLike) -> bool:
    filesystem, inner = resolve(path)
    return filesystem.get_file_info(inner).type != pafs.FileType.NotFound


@_clear_bucket_errors
def is_file(path: str | os.PathLike) -> bool:
    filesystem, inner = resolve(path)
    return filesystem.get_file_info(inner).type == pafs.FileType.File


def list_files(directory: str | os.PathLike) -> list[str]:
    """Paths of the files under `directory` (recursively), relative to it; [] when it does not exist."""
    return sorted(file_sizes(directory))


@_clear_bucket_errors
def file_sizes(directory: str | os.PathLike) -> dict[str, int]:
    """{path relative to `directory`: size in bytes} of the files under it; {} when it does not exist."""
    filesystem, inner = resolve(directory)
    selector = pafs.FileSelector(inner, recursive=True, allow_not_found=True)
    infos = filesystem.get_file_info(selector)
    return {posixpath.relpath(i.path, inner): i.size for i in infos if i.type == pafs.FileType.File}


@_clear_bucket_errors
def read_text(path: str | os.PathLike) -> str:
    filesystem, inner = resolve(path)
    with filesystem.open_input_stream(inner) as stream:
        return stream.read().decode("utf-8")


@_clear_bucket_errors
def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a whole file so that a reader sees the old or the new contents, never half: a local file is
    written beside and renamed into place; a bucket object appears whole when its upload completes."""
    filesystem, inner = resolve(path)
    filesystem.create_dir(posixpath.dirname(inner), recursive=True)
    if is_uri(path):
        with filesystem.open_output_stream(inner) as stream:
            stream.write(text.encode("utf-8"))
        return
    partial = f"{inner}.{uuid.uuid4().hex[:8]}.partial"  # open() honours the umask, unlike mkstemp's 0600
    with open(partial, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(partial, inner)


@_clear_bucket_errors
def copy_dir(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copy a folder's files (local or bucket, either way)."""
    source_fs, source_inner = resolve(source)
    destination_fs, destination_inner = resolve(destination)
    destination_fs.create_dir(destination_inner, recursive=True)
    pafs.copy_files(source_inner, destination_inner, source_fs, destination_fs)


@_clear_bucket_errors
def move_dir(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Move a folder within one storage: a rename on a local filesystem, a copy and delete in a bucket."""
    filesystem, source_inner = resolve(source)
    if isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.move(source_inner, resolve(destination)[1])
        return
    copy_dir(source, destination)  # a bucket renames no folders
    remove_dir(source)


@_clear_bucket_errors
def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (local or in a bucket), read in chunks."""
    digest = hashlib.sha256()
    filesystem, inner = resolve(path)
    with filesystem.open_input_stream(inner) as stream:
        while chunk := stream.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@_clear_bucket_errors
def remove_file(path: str | os.PathLike) -> None:
    filesystem, inner = resolve(path)
    filesystem.delete_file(inner)


@_clear_bucket_errors
def remove_dir(path: str | os.PathLike) -> None:
    """Delete a folder and everything under it; nothing when it does not exist."""
    filesystem, inner = resolve(path)
    if filesystem.get_file_info(inner).type != pafs.FileType.NotFound:
        filesystem.delete_dir(inner)


@contextlib.contextmanager
def local_input(path: str | os.PathLike) -> Iterator[str]:
    """A local path with the contents of file or folder `path`: `path` itself when local, else a download
    that is deleted on exit."""
    if not is_uri(path):
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="bert-pretrain-") as tmp:
        local = os.path.join(tmp, posixpath.basename(str(path).rstrip("/")) or "download")
        if is_file(path):
            filesystem, inner = resolve(path)
            pafs.copy_files(inner, local, filesystem, pafs.LocalFileSystem())
        else:
            copy_dir(path, local)
        yield local


@contextlib.contextmanager
def local_output(path: str | os.PathLike) -> Iterator[str]:
    """A local folder to write what belongs at folder `path`: `path` itself when local, else a temporary
    folder whose files replace those at `path` when the block ends without an error."""
    if not is_uri(path):
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="bert-pretrain-") as tmp:
        yield tmp
        remove_dir(path)
        copy_dir(tmp, path)
