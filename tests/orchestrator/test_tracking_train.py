"""End to end: a tiny training run recorded in MLflow (SQLite store), with a worker fault and a resume."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from model import BertForPreTraining
from orchestrator.run_dir import read_run_json
from orchestrator.trainer import train
from tests.orchestrator.conftest import make_job

FIRST_STEPS, FAIL_AT, RESUMED_STEPS = 4, 3, 6


def test_training_run_is_one_complete_mlflow_run(tmp_path, prepared_corpus):
    mlflow_section = {"enabled": True, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    first = make_job(
        tmp_path,
        prepared_corpus["data"],
        train={"max_steps": FIRST_STEPS, "fail_at_step": FAIL_AT},
        checkpoint={"every": 2, "max_failures": 1},
        mlflow=mlflow_section,
    )
    result = train(first)
    run_id = read_run_json(result.run_dir)["mlflow_run_id"]
    resumed = make_job(
        tmp_path, prepared_corpus["data"], train={"max_steps": RESUMED_STEPS}, mlflow=mlflow_section
    )
    train(resumed)

    client = MlflowClient(mlflow_section["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("bert-pretrain").experiment_id])
    assert run.info.run_id == run_id == read_run_json(result.run_dir)["mlflow_run_id"]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.preset"] == "tiny"
    assert run.data.params["train.global_batch_size"] == "16"
    # The fault at step 3 replays step 3 from the checkpoint of step 2; the resume continues at step 5.
    loss_steps = sorted(metric.step for metric in client.get_metric_history(run_id, "loss"))
    assert loss_steps == list(range(1, RESUMED_STEPS + 1))
    assert run.data.tags["checkpoint_uri"].endswith(f"checkpoint_{RESUMED_STEPS:09d}")

    downloaded = Path(
        download_artifacts(
            run_id=run_id,
            tracking_uri=mlflow_section["tracking_uri"],
            artifact_path="",
            dst_path=str(tmp_path / "downloaded"),
        )
    )
    assert json.loads((downloaded / "resolved_config.json").read_text())["model"]["preset"] == "tiny"
    assert (downloaded / "data_manifest" / "manifest.json").exists()
    ours = BertForPreTraining.from_hf(downloaded / "model").eval()
    theirs = transformers.BertForPreTraining.from_pretrained(downloaded / "model").eval()
    input_ids = torch.randint(0, 100, (2, 16))
    torch.testing.assert_close(ours.bert(input_ids)[0], theirs.bert(input_ids).last_hidden_state)
