"""The run directory, `<checkpoint.storage_path>/<run_name>/`: the one owner of every path inside it.

    run.json             MLflow run id, resolved config, plan, final model (several writers merge keys)
    checkpoint_<step>/   a training checkpoint, step in 9 digits (its files: orchestrator.train.checkpoints)
    final/               the final model in HF format, with its tokenizer
    mlflow_unsent/       what MLflow did not get (orchestrator.tracking.unsent)
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

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from common import storage
from common.redact import redact

RUN_JSON = "run.json"
FINAL_DIR = "final"
UNSENT_DIR = "mlflow_unsent"
FAULT_MARKER_FILE = "injected_fault.json"
RAY_CHECKPOINT_LIST_FILE = "checkpoint_manager_snapshot.json"
CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")


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

    def checkpoint(self, step: int) -> str:
        return storage.join(self.path, checkpoint_name(step))

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
