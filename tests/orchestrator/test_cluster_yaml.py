"""cluster.yaml: valid for the installed Ray's cluster launcher, and set up the way the cluster guide says."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_matches_the_schema_that_ships_with_ray():
    jsonschema.validate(load(), json.loads(SCHEMA.read_text()))


def test_the_head_runs_mlflow_and_ray_with_token_auth_on_localhost_only():
    config = load()
    head = " ".join(config["head_start_ray_commands"])
    assert "mlflow server --host 127.0.0.1 --port 5000" in head
    assert "--artifacts-destination s3://" in head
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in head
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_gpu_workers_autoscale_with_8_gpus_a_node_and_the_project_is_installed():
    config = load()
    gpu = config["available_node_types"]["gpu"]
    assert gpu["resources"]["GPU"] == 8
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] <= config["max_workers"]
    assert "GPU" not in config["available_node_types"][config["head_node_type"]]["resources"]
    assert config["file_mounts"]["~/bert-pretrain"] == "."
    setup = config["setup_commands"]
    assert any("pip install" in command and "-e ~/bert-pretrain" in command for command in setup)
    assert "FILL IN" in CLUSTER_YAML.read_text()
