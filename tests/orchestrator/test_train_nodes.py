"""Several nodes: a 2-node `ray.cluster_utils.Cluster`, with the two workers placed on different nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_two_workers_train_on_two_nodes(tmp_path, prepared_corpus):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.orchestrator.two_nodes",
            json.dumps(prepared_corpus["data"]),
            str(tmp_path),
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
    assert outcome["steps"] == 4
    assert (Path(outcome["final"]) / "model.safetensors").is_file()
