"""Saving the run's checkpoints from the workers, through `ray.train.report` (the files: `checkpoints`).

Every rank reports on the same steps; on a checkpoint step the ranks' RNG states are gathered to rank 0, which
alone writes the checkpoint. Rank 0's checkpoints carry its reports since the previous one: reports that Ray
Train had not taken in when the run was interrupted still reach MLflow from the checkpoint the run resumes
from.
"""

from __future__ import annotations

import contextlib
import errno
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist

from common import storage
from common.errors import UserError
from orchestrator.run import Run
from orchestrator.run_dir import checkpoint_name
from orchestrator.train.checkpoints import (
    Trainables,
    TrainState,
    find_resume_checkpoint,
    rng_state,
    save_checkpoint,
)
from orchestrator.train.step import world_size

STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
"""Storage refusals that no restart cures: full, over quota, read-only, no permission."""


class Checkpointer:
    """`due(step)`: every `checkpoint.every` steps and at the last; `report(metrics, state)` reports the
    step's metrics, with a checkpoint when one is due."""

    def __init__(self, run: Run, trainables: Trainables, rank: int):
        self.run_dir = run.dir
        self.every = run.config.checkpoint.every
        self.total_steps = run.plan.total_steps
        self.resolved_config = run.config.to_dict()
        self.trainables = trainables
        self.rank = rank
        self.reports: list[dict[str, Any]] = []  # rank 0's reports since the last checkpoint

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total_steps

    def report(self, metrics: dict[str, Any], state: TrainState) -> None:
        """`ray.train.report` the step's metrics (all ranks), with the checkpoint of `state` when due."""
        if self.rank == 0:
            self.reports.append({"timestamp_ms": int(time.time() * 1000), "metrics": metrics})
        if not self.due(state.step):
            ray.train.report(metrics)
            return
        rng_states = _gather_rng_states()
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if self.rank == 0:
                save_checkpoint(
                    Path(directory), self.trainables, state, rng_states, self.resolved_config, self.reports
                )
                checkpoint = ray.train.Checkpoint.from_directory(directory)
                self.reports = []
            try:
                ray.train.report(
                    metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_name(state.step)
                )
            except OSError as error:
                if error.errno not in STORAGE_ERRNOS:
                    raise
                raise self._not_written(state.step, directory, error) from None

    def _not_written(self, step: int, directory: str, error: OSError) -> UserError:
        """A checkpoint that storage refused (full, read-only, no permission): its partial copy removed, and
        one line naming the path, the space it needs and the checkpoint kept. A restart would fail the same
        way, so the run ends (a UserError is not retried)."""
        target = self.run_dir.checkpoint(step)
        with contextlib.suppress(Exception):
            storage.remove_dir(target)
        needed = sum(f.stat().st_size for f in Path(directory).iterdir())
        kept = find_resume_checkpoint(self.run_dir)
        kept_line = f"the checkpoint of step {kept.step} is kept" if kept.path else "no checkpoint is kept"
        return UserError(
            f"checkpoint of step {step} could not be written to {target}: {error.strerror} (it needs "
            f"{needed / 2**20:,.1f} MiB); the partial copy was removed and {kept_line}. Free space there or "
            "set checkpoint.storage_path elsewhere, then run the same command to resume"
        )


def _gather_rng_states() -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG states, in rank order (a collective: all ranks call it)."""
    if world_size() == 1:
        return [rng_state()]
    states: list[Any] = [None] * world_size()
    dist.all_gather_object(states, rng_state())
    return states
