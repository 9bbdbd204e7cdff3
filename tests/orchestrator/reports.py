"""Ray Train callbacks for tests: append every report (all ranks' metrics, the checkpoint path), or every
failure, to a file.

They run in the Ray Train controller, another process, so they write to a file the test reads afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import ray.train


class ReportRecorder(ray.train.UserCallback):
    def __init__(self, path: str | Path):
        self.path = str(path)

    def after_report(self, run_context, metrics, checkpoint):
        with open(self.path, "a") as file:
            file.write(json.dumps({"metrics": metrics, "checkpoint": checkpoint and checkpoint.path}) + "\n")


def read_reports(path: str | Path) -> list[dict]:
    """One entry per `ray.train.report`: {"metrics": [rank 0's, rank 1's, ...], "checkpoint": path|None}."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


class FailureRecorder(ray.train.UserCallback):
    """Appends one line per failure of the workers: {rank: the exception's text}."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def after_exception(self, run_context, worker_exceptions):
        with open(self.path, "a") as file:
            file.write(json.dumps({rank: str(error) for rank, error in worker_exceptions.items()}) + "\n")
