"""`bert-pretrain finetune` end to end, on the session's Ray and a real MLflow SQLite store: a tiny model
learns a separable labelled set, the exported folder predicts through transformers' pipeline what finetune
scored, 1 and 2 workers (dropout off, the same global batch) and the fit in process (`--num-workers 0`) train
alike, and MLflow holds a parent run in the pretraining run's experiment with a nested run per seed.

Three fits of the command (one with two seeds): three Ray Train fits on workers and one in process in all,
shared by the tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
import transformers
from mlflow import MlflowClient

from orchestrator.cli import main
from orchestrator.run_dir import RunDir
from orchestrator.tracking.client import RUN_ID_KEY
from orchestrator.tracking.names import mlflow_metric_key

PRETRAINING_EXPERIMENT = "pretraining-experiment"


def run_cli(argv: list[str]) -> tuple[int, list[str]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue().splitlines()


@pytest.fixture(scope="module")
def pretraining_run(tmp_path_factory, labelled_set) -> dict:
    """The random tiny model as the final/ of a pretraining run recorded in MLflow."""
    root = tmp_path_factory.mktemp("finetune")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(PRETRAINING_EXPERIMENT)
    pretraining = client.create_run(experiment, run_name="pre")
    run_dir = RunDir(str(root / "runs"), "pre")
    shutil.copytree(labelled_set["model"], run_dir.final)
    run_dir.update_run_json(**{RUN_ID_KEY: pretraining.info.run_id})
    return {
        "root": root,
        "tracking_uri": tracking_uri,
        "experiment_id": experiment,
        "run_id": pretraining.info.run_id,
        "final": run_dir.final,
    }


def finetune_cli(pretraining_run: dict, labelled_set: dict, name: str, *flags: str) -> dict:
    out = pretraining_run["root"] / name
    argv = [
        "finetune",
        pretraining_run["final"],
        "--train",
        labelled_set["train"],
        "--eval",
        labelled_set["eval"],
        "--out",
        str(out),
        "--epochs",
        "4",
        "--lr",
        "3e-3",
        "--batch-size",
        "16",
        "--dropout",
        "0",
        "--cpus-per-worker",
        "0.5",
        "--tracking-uri",
        pretraining_run["tracking_uri"],
        "--json",
        *flags,
    ]
    code, lines = run_cli(argv)
    assert code == 0, lines
    client = MlflowClient(pretraining_run["tracking_uri"])
    [parent] = client.search_runs(
        [pretraining_run["experiment_id"]], filter_string=f"attributes.run_name = 'finetune {name}'"
    )
    children = client.search_runs(
        [pretraining_run["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["tags.seed ASC"],
    )
    return {
        "out": out,
        "lines": lines,
        "json": json.loads(lines[-1]),
        "summary": json.loads((out / "finetune.json").read_text()),
        "parent": parent,
        "children": children,
    }


@pytest.fixture(scope="module")
def one_worker(ray_session, pretraining_run, labelled_set) -> dict:
    return finetune_cli(pretraining_run, labelled_set, "one")


@pytest.fixture(scope="module")
def two_workers(ray_session, pretraining_run, labelled_set) -> dict:
    return finetune_cli(pretraining_run, labelled_set, "two", "--num-workers", "2", "--seeds", "2")


@pytest.fixture(scope="module")
def in_process(pretraining_run, labelled_set) -> dict:
    return finetune_cli(pretraining_run, labelled_set, "in-process", "--num-workers", "0")


def assert_same_steps(client: MlflowClient, run_id: str, other_run_id: str) -> None:
    """The two runs' curves hold the same values at the same steps."""
    for key in ("train/loss", "optim/grad_norm", "eval/accuracy", "eval/f1_macro"):
        one = {m.step: m.value for m in client.get_metric_history(run_id, mlflow_metric_key(key))}
        other = {m.step: m.value for m in client.get_metric_history(other_run_id, mlflow_metric_key(key))}
        assert one and one.keys() == other.keys(), key
        for step, value in one.items():
            assert other[step] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, step)


def test_a_tiny_model_learns_a_separable_set(one_worker):
    scores = one_worker["json"]
    assert set(scores) == {"accuracy", "f1_macro", "matthews"}
    assert scores["accuracy"] >= 0.9
    assert scores["f1_macro"] >= 0.9
    assert scores["matthews"] >= 0.8
    assert any(line.startswith("eval (best epoch") for line in one_worker["lines"])
    assert "texts cut to the sequence length: 0.0% of train, 0.0% of eval" in one_worker["lines"]


def test_the_exported_folder_predicts_through_the_pipeline_what_finetune_scored(one_worker, labelled_set):
    final = one_worker["out"] / "final"
    classifier = transformers.pipeline("text-classification", model=str(final), device="cpu")
    texts = [row["text"] for row in labelled_set["eval_rows"]]
    predicted = [output["label"] for output in classifier(texts)]
    assert predicted == one_worker["summary"]["predictions"]
    truth = [row["label"] for row in labelled_set["eval_rows"]]
    accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    assert accuracy == pytest.approx(one_worker["json"]["accuracy"])
    assert classifier.model.config.id2label == {0: "animal", 1: "person"}
    assert classifier.model.config.label2id == {"animal": 0, "person": 1}


def test_one_and_two_workers_train_alike(one_worker, two_workers, pretraining_run):
    """The same global batches, split over 1 or 2 ranks, give the same steps: the same losses and the same
    eval scores at every epoch (seed 0 of both)."""
    one, two = one_worker["children"][0], two_workers["children"][0]
    assert one.data.tags["seed"] == two.data.tags["seed"] == "0"
    assert_same_steps(MlflowClient(pretraining_run["tracking_uri"]), one.info.run_id, two.info.run_id)
    first_seed = two_workers["json"]["seeds"][0]
    for key in ("accuracy", "f1_macro", "matthews"):
        assert first_seed[key] == one_worker["json"][key]


def test_in_process_trains_as_a_ray_train_worker(one_worker, in_process, pretraining_run):
    """`--num-workers 0`: Ray Train's local mode, the fit in the command's own process, with the same steps,
    the same curves in the seed's MLflow run, and the same best epoch exported."""
    assert any("steps of 16 examples in this process; AdamW" in line for line in in_process["lines"])
    [child] = in_process["children"]
    assert child.info.status == "FINISHED"
    client = MlflowClient(pretraining_run["tracking_uri"])
    assert_same_steps(client, one_worker["children"][0].info.run_id, child.info.run_id)
    assert in_process["json"] == pytest.approx(one_worker["json"])
    assert in_process["summary"]["predictions"] == one_worker["summary"]["predictions"]
    assert (in_process["out"] / "final" / "model.safetensors").is_file()
    assert (in_process["out"] / "seed_0" / "best" / "model.safetensors").is_file()


def test_several_seeds_report_each_and_the_median(two_workers):
    scores = two_workers["json"]
    seeds = scores["seeds"]
    assert [s["seed"] for s in seeds] == [0, 1]
    for key in ("accuracy", "f1_macro", "matthews"):
        values = sorted(s[key] for s in seeds)
        assert scores[key] == pytest.approx(sum(values) / 2)  # the median of two
        assert scores["spread"][key]["min"] == values[0]
        assert scores["spread"][key]["max"] == values[1]
    assert any(line.startswith("median over 2 seeds: accuracy") for line in two_workers["lines"])
    assert len(two_workers["children"]) == 2


def test_mlflow_parent_run_in_the_pretraining_experiment(one_worker, pretraining_run):
    client = MlflowClient(pretraining_run["tracking_uri"])
    parent = one_worker["parent"]
    assert parent.info.experiment_id == pretraining_run["experiment_id"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["pretraining_run_id"] == pretraining_run["run_id"]
    assert pretraining_run["run_id"] in parent.data.tags["pretraining_run_link"]
    assert parent.data.params["lr"] == "0.003"
    assert parent.data.metrics[mlflow_metric_key("eval/accuracy")] == pytest.approx(
        one_worker["json"]["accuracy"]
    )
    [child] = one_worker["children"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.status == "FINISHED"
    epochs = client.get_metric_history(child.info.run_id, mlflow_metric_key("eval/accuracy"))
    assert len(epochs) == 4  # one score an epoch
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "model")}
    assert {"model/config.json", "model/model.safetensors", "model/tokenizer.json"} <= artifacts


def test_in_process_writes_its_output_into_a_bucket(labelled_set, bucket):
    """`--out` in a bucket: the seed's best epoch and final/ are written there, as Ray Train's storage
    would hold them."""
    from common import storage

    out = f"{bucket}/finetuned"
    argv = [
        "finetune",
        labelled_set["model"],
        "--train",
        labelled_set["train"],
        "--eval",
        labelled_set["eval"],
    ]
    argv += ["--out", out, "--epochs", "1", "--num-workers", "0", "--no-mlflow", "--json"]
    code, lines = run_cli(argv)
    assert code == 0, lines
    for folder in ("final", "seed_0/best"):
        assert storage.is_file(f"{out}/{folder}/model.safetensors"), folder
    summary = json.loads(storage.read_text(f"{out}/finetune.json"))
    assert summary["scores"] == json.loads(lines[-1])
