"""Where a finetune call is recorded in MLflow (no fit): the pretraining run's experiment, or a named one,
linked to the pretraining run either way; with a nested run per seed."""

from __future__ import annotations

from mlflow import MlflowClient

from orchestrator.config import MlflowConfig
from orchestrator.finetune.tracking import FinetuneTracker, pretraining_run_id
from orchestrator.run_dir import RunDir
from orchestrator.tracking.client import RUN_ID_KEY


def test_parent_goes_to_the_pretraining_experiment_or_a_named_one(tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    pretraining_experiment = client.create_experiment("pretraining")
    pretraining = client.create_run(pretraining_experiment).info.run_id
    run_dir = RunDir(str(tmp_path / "runs"), "pre")
    run_dir.update_run_json(**{RUN_ID_KEY: pretraining})
    assert pretraining_run_id(run_dir.final) == pretraining
    assert pretraining_run_id(str(tmp_path / "elsewhere" / "model")) is None

    default = FinetuneTracker.open(MlflowConfig(tracking_uri=tracking_uri), run_dir.final, "finetune a")
    named = FinetuneTracker.open(MlflowConfig(tracking_uri=tracking_uri), run_dir.final, "finetune b", "glue")
    unlinked = FinetuneTracker.open(
        MlflowConfig(tracking_uri=tracking_uri), str(tmp_path / "m"), "finetune c"
    )
    assert default.experiment_id == pretraining_experiment
    assert named.experiment_id == client.get_experiment_by_name("glue").experiment_id
    assert unlinked.experiment_id == client.get_experiment_by_name("bert-pretrain").experiment_id
    for tracker in (default, named):
        assert client.get_run(tracker.run_id).data.tags["pretraining_run_id"] == pretraining
    assert "pretraining_run_id" not in client.get_run(unlinked.run_id).data.tags

    child_id, _ = default.child(3, RunDir(str(tmp_path / "out"), "seed_3"))
    child = client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == default.run_id
    assert child.data.tags["seed"] == "3"
    assert child.info.experiment_id == pretraining_experiment


def test_disabled_tracking_records_nothing(tmp_path):
    tracker = FinetuneTracker.open(MlflowConfig(enabled=False), str(tmp_path), "finetune")
    assert tracker.run_id == "" and tracker.link == ""
    child_id, _ = tracker.child(0, RunDir(str(tmp_path), "seed_0"))
    assert child_id == ""
    tracker.log(tracker.run_id, metrics={"eval/accuracy": 1.0})
    tracker.end(tracker.run_id, "FINISHED")
    assert not (tmp_path / "mlflow.db").exists()
