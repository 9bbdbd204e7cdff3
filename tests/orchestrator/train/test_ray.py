"""Training on real Ray Train (a local 2-CPU Ray, gloo DDP): the run is the same at every step on 1 or 2
workers, through a killed worker and through a restart with another worker count; the whole run is one MLflow
run; runs refused before they start. Each `fit` costs about half a minute here, so the fits are shared."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
import torch
import transformers
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from common.errors import UserError
from model import BertForPreTraining
from orchestrator.run_dir import FAULT_MARKER_FILE, RunDir
from orchestrator.train.checkpoints import read_train_state
from orchestrator.train.driver import train
from tests.orchestrator.conftest import make_job
from tests.orchestrator.reports import ReportRecorder, read_failures, read_reports
from tests.orchestrator.train.conftest import (
    COMPARED,
    FAULT_AT,
    GLOBAL_BATCH,
    STEPS,
    STEPS_PER_EPOCH,
    last_checkpoint_reported,
    losses_by_step,
    same_batches_job,
)

STOPPED_AT = 10  # rank 1 is killed at step 10, after the checkpoints of steps 4 and 8


@pytest.fixture(scope="module")
def restarted_run(tmp_path_factory, prepared_corpus):
    """One run started twice, recorded in SQLite MLflow: with 2 workers until rank 1's process is killed at
    step 10 with no failure allowed (the run fails); then the same run again with 1 worker (4 micro-batches
    a step) from its last checkpoint to the end."""
    root = tmp_path_factory.mktemp("restarted")
    mlflow = {"enabled": True, "tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}
    first = same_batches_job(
        root,
        prepared_corpus,
        2,
        train={"fail_at_step": STOPPED_AT},
        checkpoint={"max_failures": 0},
        mlflow=mlflow,
    )
    with pytest.raises(Exception) as failed:
        train(first, callbacks=[ReportRecorder(root / "first.jsonl")])
    again = same_batches_job(root, prepared_corpus, 1, mlflow=mlflow)
    result = train(again, callbacks=[ReportRecorder(root / "again.jsonl")])
    return {
        "mlflow": mlflow,
        "job": again,
        "error": failed.value,
        "first": read_reports(root / "first.jsonl"),
        "first_failures": read_failures(root / "first.jsonl"),
        "again": read_reports(root / "again.jsonl"),
        "result": result,
    }


def test_one_and_two_workers_and_a_killed_worker_compute_the_same_loss_at_every_step(
    fault_run, restarted_run
):
    # The fault happened: rank 1's process died at step 6 (no exception raised in it), seen by Ray Train.
    (failure,) = fault_run["failures"]
    assert "died unexpectedly" in failure["1"] and "Traceback" not in failure["1"], failure
    marker = json.loads((Path(fault_run["result"].run_dir) / FAULT_MARKER_FILE).read_text())
    assert (marker["step"], marker["rank"]) == (FAULT_AT, 1)
    # Both ranks restarted from the last checkpoint before it (step 4) and ran on to the end.
    before, after = fault_run["attempts"]
    assert [r["metrics"][0]["step"] for r in before] == list(range(1, len(before) + 1))
    assert len(before) < FAULT_AT and last_checkpoint_reported(before) == 4
    assert [r["metrics"][0]["step"] for r in after] == list(range(5, STEPS + 1))
    reports = fault_run["reports"]
    assert all(len(r["metrics"]) == 2 for r in reports)

    # The restarted run: 2 workers up to step 9, then 1 worker from its last checkpoint, inside an epoch.
    first, again = restarted_run["first"], restarted_run["again"]
    assert [r["metrics"][0]["step"] for r in first] == list(range(1, len(first) + 1))
    assert len(first) < STOPPED_AT
    # From the newest checkpoint written before the kill, step 8 (epoch 1, step 3), read or not by Ray Train.
    assert [r["metrics"][0]["step"] for r in again] == list(range(9, STEPS + 1))
    assert all(len(r["metrics"]) == 1 for r in again)

    # Its steps, on 2 workers and then on 1, equal those of the 2 workers of the faulty run, at every step,
    # across the epoch boundaries after steps 5 and 10.
    faulty, restarted = losses_by_step(reports), losses_by_step(first + again)
    assert sorted(faulty) == sorted(restarted) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        for key in COMPARED:
            assert restarted[step][key] == pytest.approx(faulty[step][key], rel=1e-4), (step, key)
        assert restarted[step]["data/epoch"] == faulty[step]["data/epoch"] == step // STEPS_PER_EPOCH
    assert faulty[STEPS]["train/loss"] < faulty[1]["train/loss"] - 1.0


def test_a_killed_worker_resumes_from_the_last_checkpoint_and_evaluates(fault_run):
    result, reports = fault_run["result"], fault_run["reports"]
    assert result.steps == STEPS
    final_state = read_train_state(Path(reports[-1]["checkpoint"]))
    assert final_state["consumed_samples"] == STEPS * GLOBAL_BATCH
    position = (final_state["data_epoch"], final_state["data_step_in_epoch"], final_state["world_size"])
    assert position == (STEPS // STEPS_PER_EPOCH, STEPS % STEPS_PER_EPOCH, 2)
    checkpoints = sorted(p.name for p in Path(result.run_dir).glob("checkpoint_0*"))
    assert checkpoints == [f"checkpoint_{step:09d}" for step in (STEPS - 8, STEPS - 4, STEPS)]  # the last 3
    exported = {p.name for p in Path(result.final_dir).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= exported
    evaluations = [r["metrics"][0] for r in reports if "eval/mlm_loss" in r["metrics"][0]]
    assert [m["step"] for m in evaluations] == list(range(10, STEPS + 1, 10))
    assert evaluations[-1]["eval/mlm_loss"] < evaluations[0]["eval/mlm_loss"]
    # The last evaluation is what `eval` computes of the exported model, on the same masks.
    from data import MaskingConfig
    from orchestrator.inference.evaluate import evaluate
    from orchestrator.inference.loading import load_model

    config = RunDir.at(result.run_dir).read_run_json()["config"]
    masking, seed = MaskingConfig(**config["masking"]), config["train"]["seed"]
    model = load_model(result.final_dir)
    held_out = evaluate(model, config["data"]["prepared_dir"], seed=seed, masking=masking)
    assert evaluations[-1]["eval/mlm_accuracy"] == pytest.approx(held_out.mlm_accuracy, abs=1e-9)
    assert evaluations[-1]["eval/mlm_loss"] == pytest.approx(held_out.mlm_loss, rel=1e-5)
    assert evaluations[-1]["eval/perplexity"] == pytest.approx(held_out.perplexity, rel=1e-5)
    assert evaluations[-1]["eval/nsp_accuracy"] == pytest.approx(held_out.nsp_accuracy, abs=1e-9)
    same_weights = [
        r["metrics"][0]["optim/param_norm"] == r["metrics"][1]["optim/param_norm"] for r in reports
    ]
    assert all(same_weights)


def test_the_same_run_started_again_resumes_with_one_worker_and_the_same_global_batch(restarted_run):
    assert "died unexpectedly" in str(restarted_run["error"])
    (failure,) = restarted_run["first_failures"]
    assert "died unexpectedly" in failure["1"]
    reports, job = restarted_run["again"], restarted_run["job"]
    final_state = read_train_state(Path(reports[-1]["checkpoint"]))
    assert (final_state["step"], final_state["consumed_samples"]) == (STEPS, STEPS * GLOBAL_BATCH)
    assert final_state["world_size"] == 1
    run_json = RunDir.at(restarted_run["result"].run_dir).read_run_json()
    assert run_json["config"] == json.loads(json.dumps(job.to_dict()))  # the resolved config of this start
    batch = run_json["plan"]["batch"]
    assert (batch["global_batch_size"], batch["num_workers"], batch["accumulation_steps"]) == (
        GLOBAL_BATCH,
        1,
        4,
    )


def test_the_failed_and_restarted_run_is_one_complete_mlflow_run(restarted_run, tmp_path, monkeypatch):
    tracking_uri = restarted_run["mlflow"]["tracking_uri"]
    run_id = RunDir.at(restarted_run["result"].run_dir).read_run_json()["mlflow_run_id"]
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-pretrain").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["model.preset"] == "tiny"
    assert run.data.params["train.global_batch_size"] == str(GLOBAL_BATCH)
    # Every step once, with rank 0's value: step 9, run by both starts (after the checkpoint of step 8),
    # computed the same both times.
    reported = {
        step: m["train/loss"]
        for step, m in losses_by_step(restarted_run["first"] + restarted_run["again"]).items()
    }
    history = client.get_metric_history(run_id, "1-train/loss")
    assert sorted(metric.step for metric in history) == list(range(1, STEPS + 1))  # each once
    assert all(metric.value == pytest.approx(reported[metric.step]) for metric in history)
    assert run.data.tags["checkpoint_uri"].endswith(f"checkpoint_{STEPS:09d}")

    downloaded = Path(
        download_artifacts(
            run_id=run_id, tracking_uri=tracking_uri, artifact_path="", dst_path=str(tmp_path / "downloaded")
        )
    )
    assert json.loads((downloaded / "resolved_config.json").read_text())["model"]["preset"] == "tiny"
    assert (downloaded / "data_manifest" / "manifest.json").exists()
    # The final model is the run's MLflow Model: MLflow's transformers flavor loads the encoder of final/.
    (output,) = run.outputs.model_outputs
    assert run.data.tags["model_uri"] == f"models:/{output.model_id}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # where models:/ URIs are looked up
    theirs = mlflow.transformers.load_model(run.data.tags["model_uri"]).model.eval()
    assert isinstance(theirs, transformers.BertForMaskedLM)
    ours = BertForPreTraining.from_hf(restarted_run["result"].final_dir).eval()
    input_ids = torch.randint(0, 100, (2, 16))
    torch.testing.assert_close(ours.bert(input_ids)[0], theirs.bert(input_ids).last_hidden_state)


@pytest.mark.parametrize(
    ("scaling", "missing"),
    [
        ({"num_workers": 2, "cpus_per_worker": 4}, "missing 7 CPU (it needs 9, the cluster has 2)"),
        ({"num_workers": 1, "use_gpu": True}, "missing 1 GPU (it needs 1, the cluster has 0)"),
    ],
)
def test_resources_that_can_never_be_met_are_refused_quickly(tmp_path, prepared_corpus, scaling, missing):
    job = make_job(tmp_path, prepared_corpus["data"], scaling=scaling)
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        train(job)
    assert time.monotonic() - started < 60
    assert missing in str(error.value)
    assert not (tmp_path / "runs").exists()


def test_a_worker_count_that_does_not_divide_the_global_batch_is_refused(tmp_path, prepared_corpus):
    with pytest.raises(UserError, match="worker counts that do: 1, 2, 4, 8, 16"):
        train(make_job(tmp_path, prepared_corpus["data"], num_workers=3))
