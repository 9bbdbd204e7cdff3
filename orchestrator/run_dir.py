"""The run directory's `run.json`: one JSON object that several writers (driver, tracker) merge keys into."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

RUN_JSON = "run.json"


def read_run_json(run_dir: str | Path) -> dict:
    """The contents of `<run_dir>/run.json`, or {} when there is none yet."""
    path = Path(run_dir) / RUN_JSON
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def update_run_json(run_dir: str | Path, **fields) -> None:
    """Merge `fields` into `<run_dir>/run.json`, creating the folder and file as needed.

    Written to a temporary file and renamed into place, so a reader never sees half a file.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    contents = read_run_json(run_dir) | fields
    with tempfile.NamedTemporaryFile("w", dir=run_dir, prefix=f".{RUN_JSON}.", delete=False) as tmp:
        json.dump(contents, tmp, indent=2, sort_keys=True)
        tmp.write("\n")
    os.replace(tmp.name, run_dir / RUN_JSON)
