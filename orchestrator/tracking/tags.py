"""Tags that say where a run comes from: the code's commit and the Ray job."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


def git_commit() -> str | None:
    """The commit of the checkout this code runs from, when it is one."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def ray_job_tags() -> dict[str, str]:
    """The Ray job's id once Ray is initialised, and the submission id under `ray job submit`."""
    import ray

    tags = {}
    if ray.is_initialized():
        tags["ray_job_id"] = ray.get_runtime_context().get_job_id()
    # `ray job submit` hands the job's metadata to the entrypoint in this variable.
    job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    if submission_id := job_config.get("metadata", {}).get("job_submission_id"):
        tags["ray_submission_id"] = submission_id
    return tags
