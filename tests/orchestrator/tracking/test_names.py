"""How runs read in MLflow (a real SQLite store): the experiment marked as model training, and a run from
before the sectioned names that resumes under them."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from ray.train.v2._internal.execution.training_report import _TrainingReport

from orchestrator.config import MlflowConfig
from orchestrator.run_dir import RunDir
from orchestrator.tracking.names import EXPERIMENT_KIND_TAG, MODEL_TRAINING, mlflow_metric_key
from orchestrator.tracking.run import RunTracker
from orchestrator.tracking.ui import ui_address


@pytest.fixture
def config(sqlite_uri, request) -> MlflowConfig:
    return MlflowConfig(tracking_uri=sqlite_uri, experiment_name=request.node.name)


def report(callback, step: int, **values: float) -> None:
    """What the Ray Train controller hands the callback after one worker reports."""
    metrics = {"step": step, **values}
    callback.after_report(_TrainingReport(None, metrics, validation=False), [metrics])


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, key))


def test_the_experiment_is_marked_as_model_training(tmp_path, config):
    tracker = RunTracker.open(config, RunDir.at(tmp_path / "run"))
    tracker.end("FINISHED")
    client = MlflowClient(tracker.tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment_name)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING == "custom_model_development"

    client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, "genai_development_inferred")
    RunTracker.open(config, RunDir.at(tmp_path / "another")).end("FINISHED")  # a guess of the UI is replaced
    assert client.get_experiment(experiment.experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, "finetuning")
    RunTracker.open(config, RunDir.at(tmp_path / "a third")).end("FINISHED")  # a person's choice is kept
    assert client.get_experiment(experiment.experiment_id).tags[EXPERIMENT_KIND_TAG] == "finetuning"


def test_a_run_from_before_the_sectioned_names_resumes_under_them(tmp_path, config):
    run_dir = tmp_path / "run"
    first = RunTracker.open(config, RunDir.at(run_dir))
    callback = first.callback()
    for step in (1, 2, 3, 4):  # logged by the version before the sections
        report(callback, step, loss=float(step), eval_mlm_loss=10.0 - step, consumed_samples=8.0 * step)
    callback.close()
    first.end("KILLED")

    second = RunTracker.open(config, RunDir.at(run_dir))
    assert second.run_id == first.run_id
    callback = second.callback()
    for step in (3, 4, 5, 6):  # resumed from the checkpoint at step 2: steps 3 and 4 come again
        report(callback, step, **{"train/loss": 100.0 + step, "data/consumed_samples": 8.0 * step})
    callback.close()
    second.end("FINISHED")

    client = MlflowClient(second.tracking_uri)
    expected = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 105), (6, 106)]
    assert history(client, first.run_id, "1-train/loss") == expected
    assert history(client, first.run_id, "2-eval/mlm_loss") == [(1, 9), (2, 8), (3, 7), (4, 6)]
    consumed = history(client, first.run_id, "5-data/consumed_samples")
    assert [step for step, _ in consumed] == [1, 2, 3, 4, 5, 6]
    assert history(client, first.run_id, "loss") == [(1, 1), (2, 2), (3, 3), (4, 4)]  # kept as it was

    RunTracker.open(config, RunDir.at(run_dir)).end("FINISHED")  # resuming again copies nothing twice
    assert len(history(client, first.run_id, "1-train/loss")) == 6


def test_a_run_logged_under_the_bare_sections_resumes_under_the_numbered_ones(tmp_path, config):
    """A run of the version before the numbered sections (`train/loss` in MLflow) goes on under them."""
    run_dir = tmp_path / "run"
    first = RunTracker.open(config, RunDir.at(run_dir))
    client = MlflowClient(first.tracking_uri)
    for step in (1, 2, 3):  # as that version sent them
        client.log_metric(first.run_id, "train/loss", float(step), step=step)
        client.log_metric(first.run_id, "optim/learning_rate", 0.1 * step, step=step)
    first.end("KILLED")

    second = RunTracker.open(config, RunDir.at(run_dir))
    callback = second.callback()
    for step in (3, 4):  # the reports keep the bare sections; MLflow gets the numbered ones
        report(callback, step, **{"train/loss": 10.0 + step, "optim/learning_rate": 0.01})
    callback.close()
    second.end("FINISHED")

    assert history(client, first.run_id, "1-train/loss") == [(1, 1), (2, 2), (3, 3), (4, 14)]
    assert [step for step, _ in history(client, first.run_id, "3-optim/learning_rate")] == [1, 2, 3, 4]
    assert history(client, first.run_id, "train/loss") == [(1, 1), (2, 2), (3, 3)]  # kept as it was


def test_sections_are_numbered_so_the_training_loss_sorts_first():
    reported = ["data/epoch", "perf/tokens_per_s", "optim/learning_rate", "eval/perplexity", "train/loss"]
    keys = sorted(mlflow_metric_key(name) for name in reported)
    assert keys == [
        "1-train/loss",
        "2-eval/perplexity",
        "3-optim/learning_rate",
        "4-perf/tokens_per_s",
        "5-data/epoch",
    ]
    assert mlflow_metric_key("loss") == "loss"
    system = "system/127.0.0.1-0dad2e/cpu_utilization_percentage"
    assert mlflow_metric_key(system) == system


def test_the_ui_address_opens_the_model_training_view():
    assert (
        ui_address("127.0.0.1", 5000) == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    )
