"""The run directory, `<checkpoint.storage_path>/<run_name>/`: the one owner of every path inside it.

    run.json             MLflow run id, resolved config, plan, final model (several writers merge keys)
    checkpoint_<step>/   a training checkpoint, step in 9 digits (its files: orchestrator.train.checkpoints)
    final/               the final model in HF format, with its tokenizer
    mlflow_unsent/       what MLflow did not get (orchestrator.tracking.unsent)
    damaged_checkpoint_<step>/  a checkpoint whose bytes no longer match its checksums, set aside
    run.lock             which process runs the run now (`RunLock`)
    injected_fault.json  the fault-injection marker of the tests (orchestrator.train.faults)

It is a local folder or a bucket URI. Ray Train stores the reported checkpoints in the same folder
(`RunConfig(storage_path, name)` come from here), but the run does not resume from Ray Train's own list of
them (`checkpoint_manager_snapshot.json`, `ray.train.get_checkpoint()`): a worker failure or an interrupt
can come after rank 0 has written a checkpoint in full and before Ray Train has taken in its report, and a
checkpoint in that list can be damaged. The run directory itself is the record: a run resumes from its newest
complete and intact checkpoint (`orchestrator.train.checkpoints.find_resume_checkpoint`), and Ray Train's list
is deleted before each fit, so that Ray does not load it.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from common import storage
from common.errors import UserError
from common.redact import redact

RUN_JSON = "run.json"
FINAL_DIR = "final"
UNSENT_DIR = "mlflow_unsent"
FAULT_MARKER_FILE = "injected_fault.json"
RAY_CHECKPOINT_LIST_FILE = "checkpoint_manager_snapshot.json"
CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")
DAMAGED_PREFIX = "damaged_"


@dataclass(frozen=True)
class RunDir:
    storage_path: str
    """Where runs live: a local or shared folder, or a bucket URI."""
    name: str
    """The run's name: its folder under storage_path."""

    @classmethod
    def at(cls, path: str) -> RunDir:
        """The run directory at `path` (`STORAGE_PATH/RUN_NAME`, as the command line takes it)."""
        path = str(path).rstrip("/")
        return cls(posixpath.dirname(path), posixpath.basename(path))

    @property
    def path(self) -> str:
        return storage.join(self.storage_path, self.name)

    def __str__(self) -> str:
        return self.path

    @property
    def final(self) -> str:
        return storage.join(self.path, FINAL_DIR)

    @property
    def unsent(self) -> str:
        return storage.join(self.path, UNSENT_DIR)

    @property
    def fault_marker(self) -> str:
        return storage.join(self.path, FAULT_MARKER_FILE)

    def join(self, *parts: str) -> str:
        return storage.join(self.path, *parts)

    def checkpoint(self, step: int) -> str:
        return storage.join(self.path, checkpoint_name(step))

    def set_aside(self, name: str) -> str:
        """Move checkpoint folder `name` out of the run's checkpoints (a damaged one, kept for a look);
        return its new name."""
        new_name = f"{DAMAGED_PREFIX}{name}"
        storage.move_dir(self.join(name), self.join(new_name))
        return new_name

    def checkpoint_files(self) -> dict[str, dict[str, int]]:
        """{checkpoint folder name: {file name: size}} of every checkpoint folder (complete or not)."""
        found: dict[str, dict[str, int]] = {}
        for path, size in storage.file_sizes(self.path).items():
            folder, _, file = path.partition("/")
            if CHECKPOINT_NAME.fullmatch(folder) and file and "/" not in file:
                found.setdefault(folder, {})[file] = size
        return found

    def read_run_json(self) -> dict[str, Any]:
        """The contents of run.json, or {} when there is none yet."""
        path = storage.join(self.path, RUN_JSON)
        if not storage.is_file(path):
            return {}
        return json.loads(storage.read_text(path))

    def update_run_json(self, **fields: Any) -> None:
        """Merge `fields` into run.json, creating the folder and file as needed (written whole, so a reader
        never sees half a file). Secrets (URI credentials, secret-named keys) are written redacted."""
        contents = self.read_run_json() | redact(fields)
        text = json.dumps(contents, indent=2, sort_keys=True) + "\n"
        storage.write_text(storage.join(self.path, RUN_JSON), text)

    def forget_ray_checkpoint_list(self) -> None:
        """Delete Ray Train's own list of the run's checkpoints before a fit (see the module docstring)."""
        list_file = storage.join(self.path, RAY_CHECKPOINT_LIST_FILE)
        if storage.is_file(list_file):
            storage.remove_file(list_file)


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of `step` (also what Ray Train is told to call it)."""
    return f"checkpoint_{step:09d}"


def checkpoint_step(name: str) -> int:
    """The step of checkpoint folder `name`."""
    return int(CHECKPOINT_NAME.fullmatch(name).group(1))


LOCK_FILE = "run.lock"
LOCK_HEARTBEAT_S = 30.0
"""How often a running run renews its lock; a lock not renewed for 4 heartbeats is a crashed run's."""


class RunLock:
    """One process at a time runs a run: `run.lock` in the run directory names it (host, pid) and is renewed
    every LOCK_HEARTBEAT_S while it runs. A second start is refused at once; a lock that a crash left behind
    (its process gone from this host, or not renewed for 4 heartbeats on another) is taken over."""

    def __init__(self, run_dir: RunDir):
        self.path = run_dir.join(LOCK_FILE)
        self.run_dir = run_dir
        self._owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._made_dirs: list[str] = []  # made for the lock alone: removed with it when left empty

    def __enter__(self) -> RunLock:
        self._owner["started"] = time.time()
        while not self._create():
            holder = self._holder()
            if holder is not None:
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
                raise UserError(
                    f"run {self.run_dir} is in use: process {holder.get('pid')} on {holder.get('host')} "
                    f"runs it since {since}. Wait for it to end, or stop it; a lock that a crash left behind "
                    f"({self.path}) is taken over by the next start"
                )
            storage.remove_file(self.path)  # a crashed run's
        self._heartbeat = threading.Thread(target=self._renew, name="run-lock", daemon=True)
        self._heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with contextlib.suppress(Exception):  # never hide how the run ended
            storage.remove_file(self.path)
        for directory in reversed(self._made_dirs):  # a run refused before it wrote anything leaves nothing
            with contextlib.suppress(OSError):
                os.rmdir(directory)

    def _holder(self) -> dict[str, Any] | None:
        """The live process that holds the lock, if any."""
        if not storage.is_file(self.path):
            return None
        try:
            holder = json.loads(storage.read_text(self.path))
        except ValueError:  # half written by a crash
            return None
        if holder.get("host") == self._owner["host"]:
            return holder if _process_alive(holder.get("pid")) else None
        fresh = time.time() - holder.get("renewed", 0) < 4 * LOCK_HEARTBEAT_S
        return holder if fresh else None

    def _create(self) -> bool:
        """Write the lock unless there is one: atomically on a local filesystem (a bucket offers no such
        write, so two starts in the same second may both pass there)."""
        if storage.is_uri(self.path):
            if storage.is_file(self.path):
                return False
            self._write()
            return True
        self._make_dirs(self.run_dir.path)
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as file:
            file.write(json.dumps({**self._owner, "renewed": time.time()}))
        return True

    def _make_dirs(self, path: str) -> None:
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for directory in reversed(missing):
            os.makedirs(directory, exist_ok=True)
            self._made_dirs.append(directory)

    def _write(self) -> None:
        storage.write_text(self.path, json.dumps({**self._owner, "renewed": time.time()}))

    def _renew(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a bucket that does not answer now may answer next time
                self._write()


def _process_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
