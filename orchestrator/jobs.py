"""Training runs as Ray jobs on a cluster: find the cluster, submit a run, watch, stop and list jobs.

A thin layer over Ray's `JobSubmissionClient` that adds what the tool needs: the address comes from
`--address`, then `RAY_API_SERVER_ADDRESS`, then `RAY_ADDRESS` (as in Ray's CLI); Ray's token authentication
works without turning it off (the token from `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token`
is sent as a bearer header); an unreachable address or a refused token is a clear error within seconds.
A submitted run carries the code (`model`, `data`, `orchestrator` as `py_modules`) and its resolved config
(an environment variable); its submission id is the run name, so a resubmission resumes the run. The driver
runs `bert-pretrain train` in the head node's home folder: relative paths in the config resolve there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from common import storage
from common.console import say
from common.errors import UserError
from orchestrator.config import JobConfig
from orchestrator.run import plan_batches
from orchestrator.tracking.client import resolve_tracking_uri, run_link

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # where `ray dashboard cluster.yaml` forwards the head's dashboard
CONNECT_TIMEOUT_S = 10.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CODE_PACKAGES = ("model", "data", "orchestrator")
CONFIG_ENV = "BERT_PRETRAIN_JOB_CONFIG"  # the resolved config, as YAML, in the job's environment
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
TOKEN_FIX = (
    "set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it, or copy the head node's "
    "~/.ray/auth_token to this machine (`ray get-auth-token` on the head prints it)"
)


def resolve_address(address: str | None) -> str:
    """The dashboard (job API) URL: --address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else local."""
    address = (
        address
        or os.environ.get("RAY_API_SERVER_ADDRESS")
        or os.environ.get("RAY_ADDRESS")
        or DEFAULT_ADDRESS
    )
    address = address.rstrip("/")
    if address.startswith(("http://", "https://")):
        return address
    # A cluster address (host:6379, auto, ray://...): Ray looks the dashboard up in the cluster's GCS.
    from ray.dashboard.utils import get_address_for_submission_client

    try:
        with _environ(RAY_API_SERVER_ADDRESS=None, RAY_ADDRESS=None):
            return get_address_for_submission_client(address)
    except Exception as error:
        raise UserError(
            f"cannot find the Ray dashboard of the cluster at {address!r}: {error}. "
            "Give the dashboard address instead, e.g. --address http://HEAD:8265"
        ) from None


def auth_headers() -> dict[str, str]:
    """A bearer header with the Ray auth token when one is configured; none when RAY_AUTH_MODE=disabled."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        if path.is_file():
            token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def connect(address: str | None = None):
    """A `JobSubmissionClient` for the cluster, after a bounded check that it answers and accepts us."""
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    headers = auth_headers()
    _check_reachable(url, headers)
    # The client lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override its argument; ours is already resolved.
    with _environ(RAY_API_SERVER_ADDRESS=url, RAY_ADDRESS=None):
        return JobSubmissionClient(url, headers=headers)


def _check_reachable(url: str, headers: dict[str, str]) -> None:
    """Ask the job API for its job list (an endpoint that needs the token) with a timeout."""
    request = urllib.request.Request(f"{url}/api/jobs/", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S):
            return
    except urllib.error.HTTPError as error:
        if error.code == 401:
            problem = "requires an auth token and none was found"
        elif error.code == 403:
            problem = "refused the auth token (a token of another cluster?)"
        else:
            problem = f"answered HTTP {error.code} (is this the Ray dashboard's address?)"
            raise UserError(f"the Ray job API at {url} {problem}") from None
        raise UserError(f"the Ray cluster at {url} {problem}: {TOKEN_FIX}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"cannot reach the Ray dashboard at {url} ({reason}; waited up to {CONNECT_TIMEOUT_S:g} s). "
            "Give the head's dashboard with --address http://HEAD:8265 or RAY_ADDRESS; for a `ray up` "
            "cluster run `ray dashboard cluster.yaml` and use http://127.0.0.1:8265"
        ) from None


@contextlib.contextmanager
def _environ(**values: str | None) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for the duration of the block."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_submittable(config: JobConfig) -> list[str]:
    """Refuse what can be checked before anything reaches the cluster (the batch split); return the settings
    that name relative paths, worth a warning."""
    plan_batches(
        config.train.global_batch_size,
        config.train.micro_batch_size,
        config.scaling.num_workers,
        uneven=config.scaling.elastic,
        base_batch_size=config.train.batch_size_warmup.start,
    )
    return local_paths(config)


def local_paths(config: JobConfig) -> list[str]:
    """Settings that name relative paths: on a cluster they resolve in the head node's home folder."""
    paths = {
        "checkpoint.storage_path": config.checkpoint.storage_path,
        "data.tokenizer_dir": config.data.tokenizer_dir,
        "data.prepared_dir": config.data.prepared_dir,
        "checkpoint.init_from": config.checkpoint.init_from or "",
    }
    return [
        f"{key}={path}"
        for key, path in paths.items()
        if path and not storage.is_uri(path) and not os.path.isabs(path)
    ]


def submit_run(client, config: JobConfig) -> str:
    """Submit the resolved `config` as a Ray job whose submission id is the run name; return that id.

    A finished job of the same name is replaced (the run itself resumes from its checkpoints); a job of
    that name still running is refused.
    """
    run_name = config.checkpoint.run_name
    previous = job_status(client, run_name, missing_ok=True)
    if previous is not None and previous not in TERMINAL_STATUSES:
        raise UserError(
            f"run {run_name!r} is already a {previous} job on this cluster: watch it with `bert-pretrain "
            f"jobs logs {run_name} --follow` or stop it with `bert-pretrain jobs stop {run_name}`"
        )
    if previous is not None:
        say(f"Replacing the {previous} job record {run_name!r}; the run resumes from its last checkpoint.")
        client.delete_job(run_name)
    # The config travels in an environment variable that the entrypoint pipes to `train --config -`: no file
    # on the cluster holds its secrets. Not a working_dir: Ray unpacks a job's working_dir again for each new
    # worker process, deleting the driver's cwd under it.
    entrypoint = f"cd ~ && printf '%s\\n' \"${CONFIG_ENV}\" | bert-pretrain train --config -"
    return client.submit_job(
        submission_id=run_name,
        entrypoint=entrypoint,
        runtime_env={
            "py_modules": [str(PROJECT_ROOT / package) for package in CODE_PACKAGES],
            "excludes": ["__pycache__", "*.pyc"],
            "env_vars": {CONFIG_ENV: yaml.safe_dump(config.to_dict(), sort_keys=False)},
        },
        metadata={"bert_pretrain_run": run_name, "model_preset": config.model.preset},
    )


def job_status(client, job_id: str, missing_ok: bool = False) -> str | None:
    """The job's status name (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    try:
        return str(client.get_job_status(job_id).value)
    except RuntimeError as error:
        if "404" not in str(error) and "does not exist" not in str(error):
            raise
        if missing_ok:
            return None
        raise UserError(f"no job {job_id!r} on this cluster: `bert-pretrain jobs list` shows them") from None


def stop_job(client, job_id: str, timeout_s: float = 120.0) -> str:
    """Stop the job (SIGTERM to its driver, which ends the run) and wait for its final status."""
    job_status(client, job_id)
    client.stop_job(job_id)
    return wait_for_end(client, job_id, timeout_s)


def wait_for_end(client, job_id: str, timeout_s: float) -> str:
    """Poll until the job is in a terminal status; return it (or the last status seen at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while (status := job_status(client, job_id)) not in TERMINAL_STATUSES and time.monotonic() < deadline:
        time.sleep(1.0)
    return status


def follow_logs(client, job_id: str, on_chunk=None) -> str:
    """Print the job's logs as they come until it ends; return its final status.

    `on_chunk()` is called after each piece of log (used to print the MLflow link once the run exists).
    """

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            say(chunk, end="")
            if on_chunk is not None:
                on_chunk()

    job_status(client, job_id)
    asyncio.run(tail())
    return wait_for_end(client, job_id, timeout_s=60.0)


@dataclass
class MlflowRunFinder:
    """Finds the MLflow run of a training run by its name, to print a link to it; never raises."""

    config: JobConfig
    run_id: str = ""
    experiment_id: str = ""
    _last_try: float = 0.0

    @property
    def tracking_uri(self) -> str:
        """The run's tracking URI as this machine can reach it; "" when only the cluster knows it (its own
        MLFLOW_TRACKING_URI) or when it is a SQLite file that is not on this machine."""
        if not (self.config.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
            return ""
        uri = resolve_tracking_uri(self.config.mlflow)
        if uri.startswith("sqlite:///") and not os.path.exists(uri.removeprefix("sqlite:///")):
            return ""  # opening it would create an empty store here
        return uri

    def find(self, min_interval_s: float = 0.0) -> str:
        """The run id once the run exists in the tracking store, else "" (tries at most every interval)."""
        too_soon = time.monotonic() - self._last_try < min_interval_s
        if self.run_id or not self.config.mlflow.enabled or too_soon or not self.tracking_uri:
            return self.run_id
        self._last_try = time.monotonic()
        # A lookup must not hold up the job's logs: no retries, a short timeout.
        with (
            contextlib.suppress(Exception),
            _environ(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5"),
        ):
            from mlflow import MlflowClient

            client = MlflowClient(self.tracking_uri)
            experiment = client.get_experiment_by_name(self.config.mlflow.experiment_name)
            if experiment is not None:
                runs = client.search_runs(
                    [experiment.experiment_id],
                    filter_string=f"attributes.run_name = '{self.config.checkpoint.run_name}'",
                    order_by=["attributes.start_time DESC"],
                    max_results=1,
                )
                self.run_id = runs[0].info.run_id if runs else ""
                self.experiment_id = experiment.experiment_id
        return self.run_id

    def link(self) -> str:
        """A browser link for a tracking server, else the store and run id."""
        return run_link(self.tracking_uri, self.experiment_id, self.run_id)
