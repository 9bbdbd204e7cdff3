"""With dropout on, a 2-worker run whose worker process is killed mid-run computes the loss of the
uninterrupted run at every step: every rank's RNG state travels in the checkpoints, and the restarted ranks
draw their dropout masks from where the checkpoint left them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.run_dir import RunDir
from orchestrator.train.driver import train
from tests.orchestrator.conftest import make_job
from tests.orchestrator.reports import ReportRecorder, read_attempts, read_failures, read_reports
from tests.orchestrator.train.conftest import losses_by_step

STEPS, EVERY, KILL_AT = 12, 4, 6


def test_with_dropout_on_a_killed_worker_resumes_to_the_same_loss_at_every_step(tmp_path, prepared_corpus):
    losses = {}
    for name, fail_at in (("whole", None), ("killed", KILL_AT)):
        job = make_job(
            tmp_path / name,
            prepared_corpus["data"],
            num_workers=2,
            model={"dropout": 0.1},
            train={"global_batch_size": 32, "max_steps": STEPS, "fail_at_step": fail_at},
            checkpoint={"every": EVERY, "max_failures": 1, "run_name": name},
        )
        result = train(job, callbacks=[ReportRecorder(tmp_path / f"{name}.jsonl")])
        assert result.steps == STEPS
        losses[name] = losses_by_step(read_reports(tmp_path / f"{name}.jsonl"))

    marker = json.loads(
        Path(RunDir.at(str(tmp_path / "killed" / "runs" / "killed")).fault_marker).read_text()
    )
    assert (marker["step"], marker["rank"]) == (KILL_AT, 1)  # the fault really happened
    assert len(read_failures(tmp_path / "killed.jsonl")) == 1
    assert sorted(losses["whole"]) == list(range(1, STEPS + 1))
    # The restart resumes from the checkpoint of step 4 and reports every step after it. (Reports still in
    # flight when the worker group dies may never reach Ray Train's controller, so the first attempt's
    # reports of steps 4 and 5 may be missing; those it has are compared too.)
    _, resumed = read_attempts(tmp_path / "killed.jsonl")
    assert [report["metrics"][0]["step"] for report in resumed] == list(range(EVERY + 1, STEPS + 1))
    for step in losses["killed"]:
        for key in ("train/loss", "train/mlm_loss", "optim/grad_norm"):
            assert losses["killed"][step][key] == pytest.approx(losses["whole"][step][key], rel=1e-6), (
                step,
                key,
            )
