"""Training on real Ray Train (a local 2-CPU Ray, gloo DDP): an elastic run's workers hold equal weights
and its loss falls, it recovers from a failed worker, a restart resumes with another worker count, and the
whole run is one MLflow run; runs refused before they start. Each `fit` costs about
half a minute here, so the fits are shared."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import transformers
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from model import BertForPreTraining
from orchestrator.errors import UserError
from orchestrator.run_dir import read_run_json
from orchestrator.train.checkpoints import read_train_state
from orchestrator.train.driver import train
from tests.orchestrator.conftest import make_job
from tests.orchestrator.reports import ReportRecorder, read_reports

GLOBAL_BATCH = 16
FIRST_STEPS, FAIL_AT, RESUMED_STEPS = 8, 5, 12


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, prepared_corpus):
    """An elastic run of 2-3 workers for 8 steps (the 2-CPU Ray fits 3 of a quarter CPU, and 16 examples
    split 6/5/5); rank 1 fails at step 5, after the checkpoint of step 4. Recorded in SQLite MLflow."""
    root = tmp_path_factory.mktemp("elastic")
    mlflow = {"enabled": True, "tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}
    job = make_job(
        root,
        prepared_corpus["data"],
        num_workers=(2, 3),
        scaling={"cpus_per_worker": 0.25},
        train={"max_steps": FIRST_STEPS, "fail_at_step": FAIL_AT, "eval_every": 4},
        checkpoint={"every": 4, "max_failures": 1},
        mlflow=mlflow,
    )
    result = train(job, callbacks=[ReportRecorder(root / "reports.jsonl")])
    reports = read_reports(root / "reports.jsonl")
    return {"root": root, "mlflow": mlflow, "job": job, "result": result, "reports": reports}


@pytest.fixture(scope="module")
def resumed_run(first_run, prepared_corpus):
    """The same run started again with 1 worker (so 2 accumulation steps), up to step 12."""
    root = first_run["root"]
    job = make_job(
        root,
        prepared_corpus["data"],
        num_workers=1,
        train={"max_steps": RESUMED_STEPS},
        checkpoint={"every": 4},
        mlflow=first_run["mlflow"],
    )
    result = train(job, callbacks=[ReportRecorder(root / "resumed.jsonl")])
    return {"job": job, "result": result, "reports": read_reports(root / "resumed.jsonl")}


def test_an_elastic_run_gets_three_workers_that_hold_the_same_weights_and_the_loss_falls(first_run):
    reports = first_run["reports"]
    for report in reports:
        assert len(report["metrics"]) == 3, "Ray Train should have started the most workers that fit"
        rank0, *others = report["metrics"]
        norms = [rank["optim/param_norm"] for rank in others]
        assert all(norm == rank0["optim/param_norm"] for norm in norms), f"step {rank0['step']}"
    losses = [report["metrics"][0]["train/loss"] for report in reports]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.5, losses
    evaluations = [r["metrics"][0] for r in reports if "eval/mlm_loss" in r["metrics"][0]]
    assert [m["step"] for m in evaluations] == [4, 8]
    assert evaluations[-1]["eval/mlm_loss"] < evaluations[0]["eval/mlm_loss"]
    assert 0 <= evaluations[-1]["eval/mlm_accuracy"] <= 1 and evaluations[-1]["eval/perplexity"] > 1


def test_a_failed_worker_resumes_from_the_last_checkpoint_and_counts_no_step_twice(first_run):
    result, reports = first_run["result"], first_run["reports"]
    # Steps 1-4 before the failure at step 5; the restart restores step 4's checkpoint and reports 5-8.
    assert [r["metrics"][0]["step"] for r in reports] == list(range(1, FIRST_STEPS + 1))
    assert result.steps == FIRST_STEPS
    final_state = read_train_state(Path(reports[-1]["checkpoint"]))
    assert final_state["consumed_samples"] == FIRST_STEPS * GLOBAL_BATCH
    assert final_state["config"]["train"]["max_steps"] == FIRST_STEPS
    assert final_state["world_size"] == 3
    checkpoints = sorted(p.name for p in Path(result.run_dir).glob("checkpoint_0*"))
    assert checkpoints == ["checkpoint_000000004", "checkpoint_000000008"]
    exported = {p.name for p in Path(result.final_dir).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= exported


def test_the_same_run_started_again_resumes_with_one_worker_and_the_same_global_batch(first_run, resumed_run):
    first, reports, job = first_run["reports"], resumed_run["reports"], resumed_run["job"]
    assert [r["metrics"][0]["step"] for r in reports] == list(range(FIRST_STEPS + 1, RESUMED_STEPS + 1))
    assert all(len(r["metrics"]) == 1 for r in reports)  # one worker now
    # Trained weights, not new ones:
    assert reports[0]["metrics"][0]["train/loss"] < first[0]["metrics"][0]["train/loss"] - 0.5
    final_state = read_train_state(Path(reports[-1]["checkpoint"]))
    assert (final_state["step"], final_state["consumed_samples"]) == (12, RESUMED_STEPS * GLOBAL_BATCH)
    assert final_state["world_size"] == 1
    run_json = read_run_json(resumed_run["result"].run_dir)
    assert run_json["config"] == json.loads(json.dumps(job.to_dict()))  # the resolved config of this start
    batch = run_json["plan"]["batch"]
    assert (batch["global_batch_size"], batch["num_workers"], batch["accumulation_steps"]) == (
        GLOBAL_BATCH,
        1,
        2,
    )


def test_the_failed_and_restarted_run_is_one_complete_mlflow_run(first_run, resumed_run, tmp_path):
    tracking_uri = first_run["mlflow"]["tracking_uri"]
    run_id = read_run_json(resumed_run["result"].run_dir)["mlflow_run_id"]
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-pretrain").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.params["model.preset"] == "tiny"
    assert run.data.params["train.global_batch_size"] == str(GLOBAL_BATCH)
    # Every step once, with rank 0's value: the failure replays steps 5-8 from step 4's checkpoint, the
    # restart continues at step 9.
    reported = {
        r["metrics"][0]["step"]: r["metrics"][0]["train/loss"]
        for r in first_run["reports"] + resumed_run["reports"]
    }
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(metric.step for metric in history) == list(range(1, RESUMED_STEPS + 1))
    assert all(metric.value == pytest.approx(reported[metric.step]) for metric in history)
    assert run.data.tags["checkpoint_uri"].endswith(f"checkpoint_{RESUMED_STEPS:09d}")

    downloaded = Path(
        download_artifacts(
            run_id=run_id, tracking_uri=tracking_uri, artifact_path="", dst_path=str(tmp_path / "downloaded")
        )
    )
    assert json.loads((downloaded / "resolved_config.json").read_text())["model"]["preset"] == "tiny"
    assert (downloaded / "data_manifest" / "manifest.json").exists()
    ours = BertForPreTraining.from_hf(downloaded / "model").eval()
    theirs = transformers.BertForPreTraining.from_pretrained(downloaded / "model").eval()
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
