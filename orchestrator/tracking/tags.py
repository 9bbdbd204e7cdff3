"""Tags that say where a run comes from: the entry point and the code's commit (the runs table's Source and
Version columns), and the Ray job."""

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


ENTRY_POINT = "bert-pretrain train"


def source_tags() -> dict[str, str]:
    """MLflow's source tags: the entry point, how it was started (a submitted Ray job, or by hand) and the
    commit of this checkout (also as `git_commit`, the tag runs have carried before)."""
    from mlflow.entities import SourceType
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

    submitted = "ray_submission_id" in ray_job_tags(ray_initialized=False)
    tags = {
        MLFLOW_SOURCE_NAME: ENTRY_POINT,
        MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.JOB if submitted else SourceType.LOCAL),
    }
    if commit := git_commit():
        tags |= {MLFLOW_GIT_COMMIT: commit, "git_commit": commit}
    return tags


def ray_job_tags(ray_initialized: bool = True) -> dict[str, str]:
    """The Ray job's id once Ray is initialised, and the submission id under `ray job submit`."""
    import ray

    tags = {}
    if ray_initialized and ray.is_initialized():
        tags["ray_job_id"] = ray.get_runtime_context().get_job_id()
    # `ray job submit` hands the job's metadata to the entrypoint in this variable.
    job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    if submission_id := job_config.get("metadata", {}).get("job_submission_id"):
        tags["ray_submission_id"] = submission_id
    return tags
