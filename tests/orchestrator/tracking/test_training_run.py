"""One real `bert-pretrain train` in a subprocess (its own local Ray, 2 workers, the embedded SQLite store in
its working folder, output to pipes as under a scheduler), then what it printed and what MLflow holds: the
console without Ray's start-up lines, worker prefixes or colour codes, the run's UI address once at the start
and once at the end; the final model as a fill-mask MLflow Model that MLflow's own tools load and serve
(registered too), the prepared data as the dataset input, the system metrics of the node under its name, the
source tags and the numbered sections."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from data.manifest import load_manifest
from orchestrator.inference.loading import load_model
from orchestrator.inference.predict import fill_mask
from orchestrator.run_dir import RunDir
from orchestrator.tracking.dataset import manifest_hash
from tests.orchestrator.conftest import corpus_data, make_job
from tests.orchestrator.tracking_helpers import (
    START_TIMEOUT_S,
    free_port,
    stop_process_group,
    wait_until_healthy,
)

REPO = Path(__file__).resolve().parents[3]
RUN_TIMEOUT_S = 900  # the data prepared, 12 steps and the model logged, on a loaded 2-core machine
REGISTERED = "bert-console-test"
TEXT = "The cat [MASK] the ball in the park."
NODE_KEY = re.compile(r"system/127\.0\.0\.1-[0-9a-f]{6}/(.+)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("console-run")
    data = corpus_data(root)
    job = make_job(
        root,
        data,
        train={"max_steps": 12, "log_every": 2, "eval_every": 6},
        checkpoint={"every": 6, "run_name": "console"},
        mlflow={"enabled": True, "registered_model_name": REGISTERED, "system_metrics_interval_s": 1},
    )
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(job.to_dict()))
    env = {key: os.environ[key] for key in os.environ if key != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    env["RAY_ADDRESS"] = "local"  # a new local Ray, as without RAY_ADDRESS, asked for as a user may ask
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "train", "--config", str(recipe)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-5000:]
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    run_dir = RunDir.at(str(root / "runs" / "console"))
    run = client.get_run(run_dir.read_run_json()["mlflow_run_id"])
    return {
        "root": root,
        "job": job,
        "console": done.stdout,
        "uri": tracking_uri,
        "client": client,
        "run": run,
    }


def test_the_console_has_our_lines_only_and_the_run_address_twice(trained):
    console, run = trained["console"], trained["run"]
    address = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert console.count(address) == 2, console
    lines = console.splitlines()
    assert lines[[i for i, line in enumerate(lines) if address in line][0]].startswith("MLflow run: ")
    assert lines[-1] == f"See the run in MLflow: {address}?workflowType=machine_learning  " + (
        "(start the UI with: bert-pretrain ui)"
    )
    assert "(RayTrainWorker pid=" not in console and not re.search(r"\(\w+ pid=\d+", console)
    assert "\x1b[" not in console  # no colour codes: the output is not a terminal
    assert "Traceback" not in console  # Ray Train's placement group cleaner finds this Ray among others
    for framework_line in ("Started a local Ray instance", "Token authentication", "View the dashboard"):
        assert framework_line not in console
    ray_core_line = r"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\]"  # Ray's C++ log format
    assert not re.search(ray_core_line, console, re.MULTILINE), console
    assert re.search(r"^step 12/12  \|  loss ", console, re.MULTILINE)


def test_the_final_model_loads_with_mlflow_and_predicts_what_fill_mask_predicts(trained, monkeypatch):
    run, client = trained["run"], trained["client"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    (output,) = run.outputs.model_outputs
    assert output.step == 12
    (version,) = client.search_model_versions(f"name='{REGISTERED}'")
    assert version.source == f"models:/{output.model_id}" == run.data.tags["model_uri"]
    ours = fill_mask(load_model(trained["root"] / "runs" / "console" / "final"), TEXT, top_k=1)[0][0]
    for uri in (f"models:/{output.model_id}", f"models:/{REGISTERED}/{version.version}"):
        (predicted,) = mlflow.transformers.load_model(uri)(TEXT, top_k=1)
        assert predicted["token"] == ours.token_id
        assert predicted["score"] == pytest.approx(ours.probability, rel=1e-4)


def test_mlflow_models_serve_answers_a_fill_mask_request(trained):
    ours = fill_mask(load_model(trained["root"] / "runs" / "console" / "final"), TEXT, top_k=1)[0][0]
    port = free_port()
    env = os.environ | {
        "MLFLOW_TRACKING_URI": trained["uri"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # its uvicorn
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{REGISTERED}/1"]
    server = subprocess.Popen(
        [*command, "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", START_TIMEOUT_S, server, path="/ping")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": [TEXT]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        stop_process_group(server)
    assert answer == {"predictions": [ours.token]}


def test_the_prepared_data_is_the_dataset_input(trained):
    run, prepared_dir = trained["run"], trained["job"].data.prepared_dir
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == manifest_hash(prepared_dir) == run.data.tags["data_manifest_hash"]
    profile = json.loads(dataset_input.dataset.profile)
    assert profile["examples"] == load_manifest(prepared_dir).counts["examples"]


def test_the_nodes_system_metrics_are_under_its_name(trained):
    metrics = trained["run"].data.metrics
    node_metrics = {match.group(1) for key in metrics if (match := NODE_KEY.fullmatch(key))}
    assert {"cpu_utilization_percentage", "system_memory_usage_megabytes"} <= node_metrics
    assert not [key for key in metrics if key.startswith("system/") and not NODE_KEY.fullmatch(key)]


def test_the_source_and_the_numbered_sections(trained):
    run = trained["run"]
    assert run.data.tags["mlflow.source.name"] == "bert-pretrain train"
    assert run.data.tags["mlflow.source.type"] == "LOCAL"
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    sections = {key.split("/")[0] for key in run.data.metrics if not key.startswith("system/")}
    assert sections == {"1-train", "2-eval", "3-optim", "4-perf", "5-data"}
    assert sorted(sections)[0] == "1-train"
