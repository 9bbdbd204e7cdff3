"""A Ray Train callback for tests: appends every report (all ranks' metrics, the checkpoint path) and every
worker failure to a file.

It runs in the Ray Train controller, another process, so it writes to a file the test reads afterwards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ray.train


class ReportRecorder(ray.train.UserCallback):
    def __init__(self, path: str | Path):
        self.path = str(path)

    def after_report(self, run_context, metrics, checkpoint):
        self._write({"metrics": metrics, "checkpoint": checkpoint and checkpoint.path})

    def after_exception(self, run_context, worker_exceptions):
        self._write({"failures": {rank: f"{type(e).__name__}: {e}" for rank, e in worker_exceptions.items()}})

    def _write(self, entry: dict) -> None:
        with open(self.path, "a") as file:
            file.write(json.dumps({**entry, "time": time.time()}) + "\n")


def read_reports(path: str | Path) -> list[dict]:
    """One entry per `ray.train.report`: {"metrics": [rank 0's, rank 1's, ...], "checkpoint": path|None}."""
    return [entry for entry in _entries(path) if "metrics" in entry]


def read_attempts(path: str | Path) -> list[list[dict]]:
    """The reports of each attempt of the run: a worker-group failure ends one, Ray Train's restart (from
    the last checkpoint it had read) begins the next."""
    attempts = [[]]
    for entry in _entries(path):
        if "failures" in entry:
            attempts.append([])
        else:
            attempts[-1].append(entry)
    return attempts


def read_failures(path: str | Path) -> list[dict[str, str]]:
    """One entry per worker-group failure Ray Train saw: {rank: "ErrorType: message"}."""
    return [entry["failures"] for entry in _entries(path) if "failures" in entry]


def _entries(path: str | Path) -> list[dict]:
    file = Path(path)
    return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []
