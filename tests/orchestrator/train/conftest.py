"""The shared run of the training tests and the job it and the others are made from.

Without dropout, with the same seed and global batches of 32 (5 steps an epoch of the prepared corpus's 172
examples), every run of `same_batches_job` computes the same loss at every step, on any worker count, across
worker faults, restarts and resizes: its global batches (examples and masks) depend on (seed, epoch, step)
alone. `fault_run` is the one the other runs are compared with.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import JobConfig
from orchestrator.train.driver import train
from tests.orchestrator.conftest import make_job
from tests.orchestrator.reports import ReportRecorder, read_attempts, read_failures, read_reports

GLOBAL_BATCH, STEPS_PER_EPOCH, STEPS, CHECKPOINT_EVERY = 32, 5, 60, 4
FAULT_AT = (
    6  # after the checkpoint of step 4 (and step 5's report, which ensures Ray Train has that checkpoint)
)
COMPARED = ("train/loss", "train/mlm_loss", "train/nsp_loss", "optim/grad_norm", "optim/param_norm")


def same_batches_job(root: Path, prepared_corpus: dict, num_workers, **sections: dict) -> JobConfig:
    """60 steps (12 epochs) without dropout, every step logged, a checkpoint every 4 steps."""
    defaults = {
        "model": {"dropout": 0.0},
        "train": {"global_batch_size": GLOBAL_BATCH, "max_steps": STEPS},
        "checkpoint": {"every": CHECKPOINT_EVERY},
    }
    for section, values in sections.items():
        defaults[section] = {**defaults.get(section, {}), **values}
    return make_job(root, prepared_corpus["data"], num_workers=num_workers, **defaults)


def last_checkpoint_reported(reports: list[dict]) -> int:
    """The step of the last checkpoint among these reports (0: none): the newest that Ray Train had read.
    A restart resumes from the run directory's newest intact checkpoint, this one or a newer one."""
    return max((r["metrics"][0]["step"] for r in reports if r["checkpoint"]), default=0)


def losses_by_step(reports: list[dict]) -> dict[int, dict]:
    """Rank 0's metrics of each step (the last report of a step that was run twice)."""
    return {report["metrics"][0]["step"]: report["metrics"][0] for report in reports}


@pytest.fixture(scope="session")
def fault_run(tmp_path_factory, prepared_corpus) -> dict:
    """2 workers; the process of rank 1 is killed (SIGKILL) at step 6, after the checkpoint of step 4, and
    Ray Train restarts both from it; evaluation every 10 steps."""
    root = tmp_path_factory.mktemp("fault")
    job = same_batches_job(
        root,
        prepared_corpus,
        2,
        train={"fail_at_step": FAULT_AT, "eval_every": 10},
        checkpoint={"max_failures": 1, "run_name": "fault"},
    )
    result = train(job, callbacks=[ReportRecorder(root / "reports.jsonl")])
    return {
        "root": root,
        "result": result,
        "reports": read_reports(root / "reports.jsonl"),
        "attempts": read_attempts(root / "reports.jsonl"),
        "failures": read_failures(root / "reports.jsonl"),
    }
