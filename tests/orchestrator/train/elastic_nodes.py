"""An elastic run on a 3-node `ray.cluster_utils.Cluster` that loses a node mid-run and later gets one back;
prints what happened as JSON.

Run as `python -m tests.orchestrator.train.elastic_nodes PREPARED_CORPUS_JSON ROOT` from a test: the cluster
needs its own Ray instance, apart from the test session's. A worker takes 3 (logical) CPUs: the head has 5
and the 2 other nodes 4, so there is one worker per node, and CPUs left on each for Ray Data. The run is
`conftest.same_batches_job` with 2-3 workers: once a 3-worker checkpoint is in, a node that holds a worker is
removed (its raylet killed, its worker with it), and once 2 workers report, a node is added. Every report
and failure goes to ROOT/reports.jsonl.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from orchestrator.train.driver import train
from tests.orchestrator.reports import ReportRecorder, read_reports
from tests.orchestrator.train.conftest import same_batches_job

TIMEOUT_S = 240
CHECKPOINT_EVERY = 2


def wait_for(condition, what: str, run: threading.Thread) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if not run.is_alive():
            raise RuntimeError(f"the run ended before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {TIMEOUT_S} s for {what}")
        time.sleep(0.2)


def worker_node_ids() -> set[str]:
    """The nodes of the workers: those of the bundles of Ray Train's placement group (one per worker)."""
    groups = ray.util.placement_group_table().values()
    return {
        node
        for group in groups
        if group["state"] == "CREATED"
        for node in group["bundles_to_node_id"].values()
    }


def main(prepared_corpus_json: str, root: str) -> None:
    # Ray notices a lost or added node at its autoscaling coordinator's next tick (every 20 s). Until then
    # a restart may ask for the lost node's worker too and wait for it (60 s by default, 10 here); and the
    # 2 workers must go on long enough to see the added node: Ray Train reads a report a second here, so
    # with a report every step the 60 steps take a minute.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "10"
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "1"
    started = time.time()
    # The node's death is seen in about 2 s instead of Ray's 30.
    health_checks = {"health_check_period_ms": 1000, "health_check_failure_threshold": 2}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 5, "include_dashboard": False, "_system_config": health_checks},
    )
    nodes = [cluster.add_node(num_cpus=4) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    reports_file = Path(root) / "reports.jsonl"
    try:
        job = same_batches_job(
            Path(root),
            json.loads(prepared_corpus_json),
            (2, 3),
            scaling={"cpus_per_worker": 3, "data_cpus": 2, "elastic_check_s": 1},
            checkpoint={"every": CHECKPOINT_EVERY, "max_failures": 5, "run_name": "elastic"},
        )
        outcome: dict = {}
        run = threading.Thread(
            target=lambda: outcome.update(result=train(job, [ReportRecorder(reports_file)]))
        )
        run.start()

        def workers_reporting(count: int, with_checkpoint: bool = False) -> bool:
            return any(
                len(r["metrics"]) == count and (r["checkpoint"] or not with_checkpoint)
                for r in read_reports(reports_file)
            )

        wait_for(lambda: workers_reporting(3, with_checkpoint=True), "a checkpoint of 3 workers", run)
        lost = next(node for node in nodes if node.node_id in worker_node_ids())
        cluster.remove_node(lost, allow_graceful=False)
        lost_after = read_reports(reports_file)[-1]["metrics"][0]["step"]
        wait_for(lambda: workers_reporting(2), "2 workers to go on", run)
        cluster.add_node(num_cpus=4)
        run.join(TIMEOUT_S)
        assert "result" in outcome, "the run did not finish"
        print(
            json.dumps(
                {
                    "steps": outcome["result"].steps,
                    "lost_after_step": lost_after,
                    "started": started,
                    "final": str(outcome["result"].final_dir),
                }
            )
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
