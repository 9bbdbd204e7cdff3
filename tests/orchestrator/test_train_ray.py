"""Training on real Ray Train (a local 2-CPU Ray, gloo DDP): equal weights on every rank, falling loss,
recovery from a failed worker, resume of a restarted run with another worker count, exact batch splitting,
and runs refused before they start. Each `fit` costs about half a minute here, so the fits are shared."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from orchestrator.checkpointing import read_train_state
from orchestrator.cli import UserError
from orchestrator.run_dir import read_run_json
from orchestrator.trainer import train
from tests.orchestrator.conftest import make_job
from tests.orchestrator.reports import ReportRecorder, read_reports

GLOBAL_BATCH = 16
FIRST_STEPS, FAIL_AT, RESUMED_STEPS = 8, 5, 12


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory, prepared_corpus):
    """2 workers for 8 steps; rank 1 fails at step 5, after the checkpoint of step 4."""
    root = tmp_path_factory.mktemp("two_workers")
    job = make_job(
        root,
        prepared_corpus["data"],
        train={"max_steps": FIRST_STEPS, "fail_at_step": FAIL_AT, "eval_every": 4},
        checkpoint={"every": 4, "max_failures": 1},
    )
    result = train(job, callbacks=[ReportRecorder(root / "reports.jsonl")])
    return {"root": root, "job": job, "result": result, "reports": read_reports(root / "reports.jsonl")}


def test_two_cpu_workers_hold_the_same_weights_and_the_loss_falls(two_worker_run):
    reports = two_worker_run["reports"]
    for report in reports:
        rank0, rank1 = report["metrics"]
        assert rank0["param_norm"] == rank1["param_norm"], f"ranks differ at step {rank0['step']}"
    losses = [report["metrics"][0]["loss"] for report in reports]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.5, losses
    evaluations = [r["metrics"][0] for r in reports if "eval_mlm_loss" in r["metrics"][0]]
    assert [m["step"] for m in evaluations] == [4, 8]
    assert evaluations[-1]["eval_mlm_loss"] < evaluations[0]["eval_mlm_loss"]
    assert 0 <= evaluations[-1]["eval_mlm_accuracy"] <= 1 and evaluations[-1]["eval_perplexity"] > 1


def test_a_failed_worker_resumes_from_the_last_checkpoint_and_counts_no_step_twice(two_worker_run):
    result, reports = two_worker_run["result"], two_worker_run["reports"]
    # Steps 1-4 before the failure at step 5; the restart restores step 4's checkpoint and reports 5-8.
    assert [r["metrics"][0]["step"] for r in reports] == list(range(1, FIRST_STEPS + 1))
    assert result.steps == FIRST_STEPS
    final_state = read_train_state(Path(reports[-1]["checkpoint"]))
    assert final_state["consumed_samples"] == FIRST_STEPS * GLOBAL_BATCH
    assert final_state["config"]["train"]["max_steps"] == FIRST_STEPS
    checkpoints = sorted(p.name for p in result.run_dir.glob("checkpoint_0*"))
    assert checkpoints == ["checkpoint_000000004", "checkpoint_000000008"]
    exported = {p.name for p in result.final_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= exported


def test_the_same_run_started_again_resumes_with_one_worker_and_the_same_global_batch(
    two_worker_run, prepared_corpus
):
    root, first = two_worker_run["root"], two_worker_run["reports"]
    job = make_job(
        root,
        prepared_corpus["data"],
        num_workers=1,
        train={"max_steps": RESUMED_STEPS},
        checkpoint={"every": 4},
    )
    result = train(job, callbacks=[ReportRecorder(root / "resumed.jsonl")])
    reports = read_reports(root / "resumed.jsonl")
    assert [r["metrics"][0]["step"] for r in reports] == list(range(FIRST_STEPS + 1, RESUMED_STEPS + 1))
    assert all(len(r["metrics"]) == 1 for r in reports)  # one worker now
    assert reports[0]["metrics"][0]["loss"] < first[0]["metrics"][0]["loss"] - 0.5  # trained weights, not new
    final_state = read_train_state(Path(reports[-1]["checkpoint"]))
    assert (final_state["step"], final_state["consumed_samples"]) == (12, RESUMED_STEPS * GLOBAL_BATCH)
    assert final_state["world_size"] == 1
    run_json = read_run_json(result.run_dir)
    assert run_json["config"] == json.loads(json.dumps(job.to_dict()))  # the resolved config of this start
    batch = run_json["plan"]["batch"]
    assert (batch["global_batch_size"], batch["num_workers"], batch["accumulation_steps"]) == (
        GLOBAL_BATCH,
        1,
        2,
    )


def run_exact_batch(root: Path, prepared_corpus: dict, num_workers: int) -> list[dict]:
    """3 steps whose global batch is the whole training set, so each step sees every example."""
    examples = prepared_corpus["train_examples"]
    job = make_job(
        root,
        prepared_corpus["data"],
        num_workers=num_workers,
        model={"dropout": 0.0},
        train={"global_batch_size": examples, "micro_batch_size": examples // 2, "max_steps": 3},
        checkpoint={"run_name": f"exact-{num_workers}"},
    )
    train(job, callbacks=[ReportRecorder(root / f"exact-{num_workers}.jsonl")])
    return [r["metrics"][0] for r in read_reports(root / f"exact-{num_workers}.jsonl")]


def test_one_worker_accumulating_two_equals_two_workers(tmp_path, prepared_corpus):
    assert prepared_corpus["train_examples"] % 2 == 0, "the test corpus must give an even number of examples"
    one = run_exact_batch(tmp_path, prepared_corpus, num_workers=1)  # micro-batch of half, 2 accumulations
    two = run_exact_batch(tmp_path, prepared_corpus, num_workers=2)  # micro-batch of half on each worker
    assert [m["step"] for m in one] == [m["step"] for m in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "mlm_loss", "nsp_loss", "grad_norm", "param_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (a["step"], key)
        assert a["mlm_accuracy"] == b["mlm_accuracy"]


@pytest.mark.parametrize(
    ("scaling", "missing"),
    [
        ({"num_workers": 2, "cpus_per_worker": 4}, "missing 9 CPU (the cluster has 2)"),
        ({"num_workers": 1, "use_gpu": True}, "missing 1 GPU (the cluster has 0)"),
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
