"""Run a short training on a 2-node Ray cluster (`ray.cluster_utils.Cluster`) and print what happened as JSON.

Run as `python -m tests.orchestrator.train.two_nodes PREPARED_CORPUS_JSON ROOT` from a test: the cluster
needs its own Ray instance, apart from the test session's. The head has 3 CPUs and the second node 2; each
worker takes 2, so the two workers cannot share a node, and the head keeps 1 CPU for Ray Data. The run is the
exact-batch job of `conftest.exact_batch_job`; every report goes to ROOT/reports.jsonl.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from orchestrator.train.driver import train
from tests.orchestrator.conftest import exact_batch_job
from tests.orchestrator.reports import ReportRecorder


def main(prepared_corpus_json: str, root: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": True})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        job = exact_batch_job(
            Path(root),
            json.loads(prepared_corpus_json),
            num_workers=2,
            scaling={"cpus_per_worker": 2, "data_cpus": 1},
        )
        result = train(job, callbacks=[ReportRecorder(Path(root) / "reports.jsonl")])
        # This cluster's own address: other Ray instances on the machine would be "the latest" one.
        actors = list_actors(address=cluster.address, detail=True, limit=1000)
        workers = [a for a in actors if "TrainWorker" in a.class_name]
        print(
            json.dumps(
                {
                    "steps": result.steps,
                    "nodes": len([n for n in ray.nodes() if n["Alive"]]),
                    "worker_nodes": len({worker.node_id for worker in workers}),
                    "workers": len(workers),
                    "final": str(result.final_dir),
                }
            )
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
