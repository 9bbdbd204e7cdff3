"""`bert-pretrain submit` and `jobs` against a real local Ray cluster with token authentication on.

The cluster is started by `ray start` (a head with the dashboard and a second node, on 127.0.0.1 and free
ports, in a temporary folder of its own) with a token of its own, and stopped by killing exactly its own
processes, so that other Ray instances on the machine are left alone. The CLI runs as a subprocess, as a
user runs it; the runs record to a SQLite MLflow store in a temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.run_dir import RunDir
from tests.orchestrator.tracking_helpers import free_port

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
CLI = [str(VENV_BIN / "bert-pretrain")]
CLUSTER_START_TIMEOUT_S = 180
JOB_TIMEOUT_S = 900  # a generous "does not hang" bound for a debug run on a loaded 2-core machine


class LocalCluster:
    """A head node (2 CPUs, dashboard) and a worker node (1 CPU) started with `ray start`."""

    def __init__(self):
        # Short: Ray's socket paths under the temp dir must stay within the 107-character limit.
        self.temp_dir = tempfile.mkdtemp(prefix="rjobs")
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.dashboard = f"http://127.0.0.1:{(dashboard_port := free_port())}"
        self.env = os.environ | {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",  # jobs run `python` from this venv
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_JOB_STOP_WAIT_TIME_S": "60",  # time for a stopped driver to end its MLflow run
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_ADDRESS", None)
        self._ray_start(
            "--head",
            "--port",
            str(self.port),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard_port),
            "--num-cpus",
            "2",
            "--temp-dir",
            self.temp_dir,
        )
        self._ray_start("--address", f"127.0.0.1:{self.port}", "--num-cpus", "1")

    def _ray_start(self, *args: str) -> None:
        command = [
            RAY,
            "start",
            "--node-ip-address",
            "127.0.0.1",
            "--ray-client-server-port",
            str(free_port()),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--disable-usage-stats",
            *args,
        ]
        subprocess.run(
            command, env=self.env, check=True, timeout=CLUSTER_START_TIMEOUT_S, capture_output=True
        )

    def cli(self, *args: str, env: dict | None = None, timeout: float = JOB_TIMEOUT_S):
        """Run `bert-pretrain ARGS` as a user with the cluster's address and token in the environment."""
        user_env = {k: v for k, v in self.env.items() if k not in ("RAY_AUTH_MODE",)}
        user_env["RAY_ADDRESS"] = self.dashboard
        return subprocess.run(
            [*CLI, *args], env=user_env | (env or {}), capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> None:
        """Kill this cluster's processes (found by its temp dir) and all they started; nothing else."""
        processes = _processes()
        doomed = {pid for pid, (_, cmdline) in processes.items() if self.temp_dir in cmdline}
        while grown := {pid for pid, (ppid, _) in processes.items() if ppid in doomed} - doomed:
            doomed |= grown
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of the machine's processes, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found[int(entry.name)] = (parent, cmdline)
    return found


@pytest.fixture(scope="module")
def cluster():
    started = LocalCluster()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict:
    """Folders shared by the tests' runs: the prepared data is built once, the MLflow store is one."""
    root = tmp_path_factory.mktemp("jobs")
    return {
        "root": root,
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "sets": [
            f"data.tokenizer_dir={root / 'tokenizer'}",
            f"data.prepared_dir={root / 'prepared'}",
            f"checkpoint.storage_path={root / 'runs'}",
            f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        ],
    }


def submit_args(shared: dict, run_name: str, *sets: str) -> list[str]:
    args = ["submit", "--config", "debug", "--set", f"checkpoint.run_name={run_name}"]
    for setting in [*shared["sets"], *sets]:
        args += ["--set", setting]
    return args


def mlflow_run(shared: dict, run_name: str):
    run_id = RunDir.at(shared["root"] / "runs" / run_name).read_run_json()["mlflow_run_id"]
    client = MlflowClient(shared["tracking_uri"])
    return client, client.get_run(run_id)


def test_a_bad_config_is_refused_before_anything_is_submitted(cluster, shared):
    done = cluster.cli(*submit_args(shared, "bad", "optim.lr=-1"), timeout=120)
    assert done.returncode == 2
    assert "optim.lr must be >= 0, got -1" in done.stderr
    listing = cluster.cli("jobs", "list", timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "bad" not in listing.stdout.split()
    unknown = cluster.cli("jobs", "status", "no-such-job", timeout=120)
    assert unknown.returncode == 2
    assert "no job 'no-such-job' on this cluster" in unknown.stderr


def test_a_wrong_address_is_a_clear_error_not_a_hang(cluster):
    done = cluster.cli("jobs", "list", "--address", f"http://127.0.0.1:{free_port()}", timeout=120)
    assert done.returncode == 2
    assert "cannot reach the Ray dashboard at http://127.0.0.1:" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_or_wrong_token_is_a_clear_error(cluster, tmp_path):
    # HOME without ~/.ray/auth_token and no RAY_AUTH_TOKEN: nothing to send.
    missing = cluster.cli("jobs", "list", env={"RAY_AUTH_TOKEN": "", "HOME": str(tmp_path)}, timeout=120)
    assert missing.returncode == 2
    assert "requires an auth token and none was found" in missing.stderr
    assert "RAY_AUTH_TOKEN" in missing.stderr
    wrong = cluster.cli("jobs", "list", env={"RAY_AUTH_TOKEN": "not-the-token"}, timeout=120)
    assert wrong.returncode == 2
    assert "refused the auth token" in wrong.stderr
    assert cluster.token not in missing.stderr + wrong.stderr + missing.stdout + wrong.stdout


def test_a_stopped_run_keeps_its_checkpoints_and_resumes_to_success_when_submitted_again(cluster, shared):
    run_dir = shared["root"] / "runs" / "jobs-debug"
    sets = ("train.max_steps=100000", "checkpoint.every=10", "train.eval_every=0")
    done = cluster.cli(*submit_args(shared, "jobs-debug", *sets), "--no-wait", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Submitted job jobs-debug: 2 workers, tiny model" in done.stdout
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not list(run_dir.glob("checkpoint_*/train_state.json")):
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(2)

    stopped = cluster.cli("jobs", "stop", "jobs-debug", timeout=300)
    assert "Job jobs-debug STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    checkpoints = sorted(run_dir.glob("checkpoint_*/train_state.json"))
    assert checkpoints, "the checkpoints were removed"
    last_step = json.loads(checkpoints[-1].read_text())["step"]
    client, run = mlflow_run(shared, "jobs-debug")
    first_run_id, status_after_stop = run.info.run_id, run.info.status
    # `ray job stop` sends SIGTERM; the driver ends its MLflow run KILLED before it exits.
    assert status_after_stop == "KILLED"

    # Submitted again under the same name and followed to the end: the same MLflow run, continued from the
    # last checkpoint.
    again = cluster.cli(*submit_args(shared, "jobs-debug", f"train.max_steps={last_step + 10}", *sets[1:]))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Job jobs-debug SUCCEEDED" in again.stdout
    assert f"Trained {last_step + 10} steps" in again.stdout
    run_page = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{first_run_id}?"
    assert f"MLflow run: {run_page}" in again.stdout
    client, run = mlflow_run(shared, "jobs-debug")
    assert run.info.run_id == first_run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["ray_submission_id"] == "jobs-debug"
    steps = sorted(metric.step for metric in client.get_metric_history(first_run_id, "1-train/loss"))
    # log_every 5; every step once across the two jobs (those the stop kept from MLflow sent by the second)
    assert steps == list(range(5, last_step + 11, 5))

    status = cluster.cli("jobs", "status", "jobs-debug", timeout=120)
    assert status.stdout.startswith("jobs-debug: SUCCEEDED"), status.stdout + status.stderr
    listing = cluster.cli("jobs", "list", timeout=120)
    assert any(line.split()[:2] == ["jobs-debug", "SUCCEEDED"] for line in listing.stdout.splitlines())
    logs = cluster.cli("jobs", "logs", "jobs-debug", timeout=120)
    assert f"Trained {last_step + 10} steps" in logs.stdout
