"""A global batch that grows from 8 to 32 over the first tokens, on real Ray Train: a 2-worker run killed
mid-warmup and resumed from its checkpoint inside the warmup computes, step by step, the losses of the same
run uninterrupted on 1 worker (other micro-batch counts at every batch size), logs the batch of every step,
and a resume with another warmup is refused before anything starts. Two fits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from common.errors import UserError
from data import BatchSchedule, load_manifest
from orchestrator.config import config_from_dict
from orchestrator.run_dir import FAULT_MARKER_FILE
from orchestrator.train.checkpoints import read_train_state
from orchestrator.train.driver import train
from tests.orchestrator.reports import ReportRecorder, read_attempts, read_failures, read_reports
from tests.orchestrator.train.conftest import (
    COMPARED,
    last_checkpoint_reported,
    losses_by_step,
    same_batches_job,
)

START, FULL, STEPS, EVERY, KILL_AT = 8, 32, 14, 3, 8  # killed at 8, after the checkpoint of step 6
WARMUP_EXAMPLES = 150


@pytest.fixture(scope="module")
def warmup_runs(tmp_path_factory, prepared_corpus) -> dict:
    root = tmp_path_factory.mktemp("batch_warmup")
    counts = load_manifest(prepared_corpus["data"]["prepared_dir"]).counts
    tokens_per_example = counts["tokens"] / sum(counts["examples"].values())
    warmup = {"start": START, "tokens": round(WARMUP_EXAMPLES * tokens_per_example)}
    runs = {}
    for name, workers, fail_at in (("whole", 1, None), ("killed", 2, KILL_AT)):
        job = same_batches_job(
            root,
            prepared_corpus,
            workers,
            train={"max_steps": STEPS, "batch_size_warmup": warmup, "fail_at_step": fail_at},
            checkpoint={"every": EVERY, "max_failures": 1, "run_name": name},
        )
        result = train(job, callbacks=[ReportRecorder(root / f"{name}.jsonl")])
        runs[name] = {"job": job, "result": result, "log": root / f"{name}.jsonl"}
    schedule = BatchSchedule(FULL, START, math.ceil(warmup["tokens"] / tokens_per_example))
    examples = prepared_corpus["train_examples"]
    return {"runs": runs, "schedule": schedule, "warmup": warmup, "examples": examples}


def test_a_killed_two_worker_run_with_a_growing_batch_equals_the_uninterrupted_one_worker_run(warmup_runs):
    schedule, runs = warmup_runs["schedule"], warmup_runs["runs"]
    sizes = [schedule.batch_size(step) for step in range(STEPS)]
    # The warmup spans the checkpoint the run resumes from and the kill; the batch grows after the resume.
    assert sizes[0] == START and sizes[-1] == FULL and schedule.growth_steps > KILL_AT
    assert sizes[EVERY * 2 - 1] < sizes[KILL_AT - 1] < FULL

    # The fault happened: rank 1's process died at step 8; both ranks went on from the checkpoint of step 6.
    killed_log = runs["killed"]["log"]
    (failure,) = read_failures(killed_log)
    assert "died unexpectedly" in failure["1"]
    marker = json.loads((Path(runs["killed"]["result"].run_dir) / FAULT_MARKER_FILE).read_text())
    assert (marker["step"], marker["rank"]) == (KILL_AT, 1)
    # The restart reports every step after the checkpoint of step 6. (Reports still in flight when the
    # worker group dies may never reach Ray Train's controller: the first attempt's may stop short of step 6,
    # and those it has are compared too.)
    before, after = read_attempts(killed_log)
    assert last_checkpoint_reported(before) <= 2 * EVERY
    assert [r["metrics"][0]["step"] for r in after] == list(range(2 * EVERY + 1, STEPS + 1))

    whole = losses_by_step(read_reports(runs["whole"]["log"]))
    killed = losses_by_step(read_reports(killed_log))
    assert sorted(whole) == list(range(1, STEPS + 1))
    for step in killed:
        for key in COMPARED:
            assert killed[step][key] == pytest.approx(whole[step][key], rel=1e-4), (step, key)
        for metrics in (whole[step], killed[step]):
            assert metrics["train/global_batch_size"] == sizes[step - 1]
            assert metrics["data/consumed_samples"] == sum(sizes[:step])
    assert whole[STEPS]["data/consumed_tokens"] > whole[1]["data/consumed_tokens"] > 0

    # The position in the order: base batches of 8 consumed, across the epoch boundary (21 an epoch).
    bases_per_epoch = warmup_runs["examples"] // START
    assert sum(sizes) > bases_per_epoch * START  # the run went into its second epoch
    final = read_train_state(Path(read_reports(killed_log)[-1]["checkpoint"]))
    assert final["consumed_samples"] == sum(sizes)
    position = (final["data_epoch"], final["data_step_in_epoch"])
    assert position == divmod(sum(sizes) // START, bases_per_epoch)
    assert final["data_order"]["batch_size_warmup"] == warmup_runs["warmup"]


@pytest.mark.parametrize("other", [{"start": 16}, {"tokens": 10_000}, {"start": 0, "tokens": 0}])
def test_a_resume_with_another_batch_warmup_is_refused(warmup_runs, other):
    job, warmup = warmup_runs["runs"]["killed"]["job"], warmup_runs["warmup"]
    changed = job.to_dict()
    changed["train"] |= {"batch_size_warmup": {**warmup, **other}, "fail_at_step": None}
    with pytest.raises(UserError) as refused:
        train(config_from_dict(changed))
    message = str(refused.value)
    before, after = f"train.batch_size_warmup={warmup!r}", f"train.batch_size_warmup={ {**warmup, **other}!r}"
    assert f"trained with {before}; with {after} it would read other examples" in message
    assert "--set checkpoint.run_name=NEW_NAME" in message
