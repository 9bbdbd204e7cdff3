"""Several nodes: an elastic run on a 3-node `ray.cluster_utils.Cluster` loses a node, goes on with 2 workers,
grows back to 3 when a node is added, and computes at every step what 2 workers on one node compute."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.orchestrator.reports import read_failures, read_reports
from tests.orchestrator.train.conftest import COMPARED, STEPS, last_checkpoint_reported, losses_by_step
from tests.orchestrator.train.elastic_nodes import CHECKPOINT_EVERY

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_an_elastic_run_loses_a_node_goes_on_with_the_same_batches_and_grows_back(
    tmp_path, prepared_corpus, fault_run
):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.orchestrator.train.elastic_nodes",
            json.dumps(prepared_corpus),
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["steps"] == STEPS and (Path(outcome["final"]) / "model.safetensors").is_file()

    # 3 workers; the node loss (a failure) ends them; 2 workers go on from the run directory's newest
    # intact checkpoint; the added node makes it regroup 3 workers from the 2 workers' last one (a resize).
    reports = read_reports(tmp_path / "reports.jsonl")
    (failure,) = read_failures(tmp_path / "reports.jsonl")  # the node loss; the resize is no failure
    # The lost node's worker vanished (a failed health check), rather than our code raising an error.
    assert any(m.startswith("WorkerHealthCheck") and "Traceback" not in m for m in failure.values()), failure
    groups = [list(group) for _, group in itertools.groupby(reports, key=lambda r: len(r["metrics"]))]
    assert [len(group[0]["metrics"]) for group in groups] == [3, 2, 3]
    attempts = groups
    # A worker that dies takes with it the reports Ray Train had not read (a report waits for the one
    # before), while the checkpoint rank 0 wrote is complete: the next attempt resumes past those steps.
    unreported = set()
    for before, after in zip(attempts, attempts[1:], strict=False):
        resumed = after[0]["metrics"][0]["step"] - 1
        assert resumed % CHECKPOINT_EVERY == 0 and resumed >= last_checkpoint_reported(before), resumed
        unreported |= set(range(before[-1]["metrics"][0]["step"] + 1, resumed + 1))
    assert attempts[-1][-1]["metrics"][0]["step"] == STEPS
    for attempt in attempts:  # the ranks of each attempt hold the same weights
        assert all(len({m["optim/param_norm"] for m in r["metrics"]}) == 1 for r in attempt)

    # The same global batches at every step as 2 workers on one node (shares 11/11/10, then 16/16).
    elastic, reference = (
        losses_by_step([r for a in attempts for r in a]),
        losses_by_step(fault_run["reports"]),
    )
    assert sorted(elastic) == sorted(set(range(1, STEPS + 1)) - unreported)
    assert len(unreported) <= 2 * CHECKPOINT_EVERY, unreported
    for step in sorted(elastic):
        for key in COMPARED:
            assert elastic[step][key] == pytest.approx(reference[step][key], rel=1e-4), (step, key)
