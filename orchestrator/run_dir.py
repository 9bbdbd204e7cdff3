"""The run directory's `run.json`: one JSON object that several writers (driver, tracker) merge keys into.

The run directory is a local folder or a bucket URI (`<checkpoint.storage_path>/<run_name>`)."""

from __future__ import annotations

import json
from pathlib import Path

from data import storage
from data.redact import redact

RUN_JSON = "run.json"


def read_run_json(run_dir: str | Path) -> dict:
    """The contents of `<run_dir>/run.json`, or {} when there is none yet."""
    path = storage.join(run_dir, RUN_JSON)
    if not storage.is_file(path):
        return {}
    return json.loads(storage.read_text(path))


def update_run_json(run_dir: str | Path, **fields) -> None:
    """Merge `fields` into `<run_dir>/run.json`, creating the folder and file as needed (written whole, so a
    reader never sees half a file). Secrets (URI credentials, secret-named keys) are written redacted."""
    contents = read_run_json(run_dir) | redact(fields)
    storage.write_text(storage.join(run_dir, RUN_JSON), json.dumps(contents, indent=2, sort_keys=True) + "\n")
