"""Fault injection for tests (`train.fail_at_step`): one rank's process is killed as when its machine dies."""

from __future__ import annotations

import json
import os
import signal
import sys

from common import storage
from orchestrator.run_dir import RunDir


class FaultInjector:
    """At `fail_at_step` the failing rank (rank 1, or rank 0 alone) is killed with SIGKILL (no exception, no
    cleanup), once per run: a marker written to the run directory first records it, so that the restart
    (which may go back further than the last checkpoint reported, when Ray Train had not yet read that
    report) does not kill again."""

    def __init__(self, fail_at_step: int | None, run_dir: RunDir, rank: int, world_size: int):
        self.fail_at_step = fail_at_step
        self.marker = run_dir.fault_marker
        self.is_failing_rank = rank == (1 if world_size > 1 else 0)
        self.rank = rank

    def kill_if_due(self, step: int) -> None:
        """Before training `step` (1-based)."""
        if self.fail_at_step != step or not self.is_failing_rank or storage.is_file(self.marker):
            return
        storage.write_text(self.marker, json.dumps({"step": step, "rank": self.rank, "pid": os.getpid()}))
        sys.stderr.write(f"train.fail_at_step: killing rank {self.rank} (pid {os.getpid()}) at step {step}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
