"""Several nodes: a 2-node `ray.cluster_utils.Cluster`, with the two workers placed on different nodes,
computes exactly what one worker accumulating two micro-batches computes on the same data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.train.driver import train
from tests.orchestrator.conftest import exact_batch_job
from tests.orchestrator.reports import ReportRecorder, read_reports

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_two_workers_on_two_nodes_equal_one_worker_accumulating_two(tmp_path, prepared_corpus):
    two_nodes = tmp_path / "two-nodes"
    two_nodes.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.orchestrator.train.two_nodes",
            json.dumps(prepared_corpus),
            str(two_nodes),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["nodes"] == 2
    assert outcome["workers"] == 2 and outcome["worker_nodes"] == 2
    assert outcome["steps"] == 3
    assert (Path(outcome["final"]) / "model.safetensors").is_file()

    # One worker on the session's Ray: micro-batches of half the batch, 2 accumulations.
    train(
        exact_batch_job(tmp_path, prepared_corpus, num_workers=1),
        callbacks=[ReportRecorder(tmp_path / "one")],
    )
    one = [r["metrics"][0] for r in read_reports(tmp_path / "one")]
    two = [r["metrics"][0] for r in read_reports(two_nodes / "reports.jsonl")]
    assert [m["step"] for m in one] == [m["step"] for m in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        for key in ("train/loss", "train/mlm_loss", "train/nsp_loss", "optim/grad_norm", "optim/param_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (a["step"], key)
        assert a["train/mlm_accuracy"] == b["train/mlm_accuracy"]
