"""What a run records besides its metrics, against real MLflow (a SQLite store, a real `mlflow server`): the
final model as an MLflow Model of the transformers flavor, the prepared data as the dataset input, the source
tags, and a node's system metrics."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from data.config import PrepareConfig, TokenizerConfig
from data.manifest import MANIFEST_FILE, Manifest
from data.tokenizer import train_tokenizer
from model import BertConfig, BertForPreTraining
from orchestrator.config import MlflowConfig
from orchestrator.inference.loading import load_model
from orchestrator.inference.predict import fill_mask
from orchestrator.run_dir import RunDir
from orchestrator.tracking.dataset import TRAINING_CONTEXT, manifest_hash
from orchestrator.tracking.model import TASK
from orchestrator.tracking.run import MODEL_URI_TAG, REGISTERED_TAG, RunTracker
from orchestrator.tracking.system_metrics import NodeMonitor, SystemMetricsTarget
from orchestrator.tracking.unsent import Unsent, load_unsent
from tests.orchestrator.conftest import SUBJECTS, save_random_model, write_corpus

WAIT_S = 120  # the longest a test waits for metrics sampled every second (a loaded 2-core machine)


@pytest.fixture(scope="module")
def final_dir(tmp_path_factory) -> Path:
    """A random tiny model in the final/ layout, with a WordPiece tokenizer trained on a small corpus."""
    root = tmp_path_factory.mktemp("final")
    corpus = write_corpus(root / "corpus.txt", documents=40)
    settings = TokenizerConfig(vocab_size=200, min_frequency=1)
    tokenizer = train_tokenizer([str(corpus)], str(root / "tokenizer"), settings)
    return save_random_model(root / "final", tokenizer, seed=3)


def prepared_dir(root: Path, tokenizer_hash: str = "0123abcd") -> Path:
    """A prepared directory's manifest.json (the dataset input is made of it alone)."""
    manifest = Manifest(
        vocab_size=200,
        tokenizer_hash=tokenizer_hash,
        settings=PrepareConfig(max_seq_length=32),
        special_token_ids={"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4},
        counts={"documents": 64, "tokens": 5000, "examples": {"train": 172, "eval": 18}},
        shards={"train": ["train/shard-00000.parquet"], "eval": ["eval/shard-00000.parquet"]},
    )
    root.mkdir(parents=True)
    (root / MANIFEST_FILE).write_text(manifest.to_json())
    return root


def test_the_final_model_is_a_fill_mask_model_that_mlflow_loads_and_registers(
    tmp_path, server, final_dir, monkeypatch
):
    config = MlflowConfig(tracking_uri=server.url, registered_model_name="bert-tiny-test")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"examples": 10}))
    tracker = RunTracker.open(config, RunDir.at(tmp_path / "run"))
    tracker.log_final(final_dir, {"data_manifest": manifest}, step=7)
    tracker.end("FINISHED")

    client = MlflowClient(server.url)
    run = client.get_run(tracker.run_id)
    (output,) = run.outputs.model_outputs  # the run's Models column
    assert output.step == 7
    logged = client.get_logged_model(output.model_id)
    assert (logged.name, logged.source_run_id) == ("model", tracker.run_id)
    assert run.data.tags[MODEL_URI_TAG] == f"models:/{output.model_id}"
    name, version = run.data.tags[REGISTERED_TAG].split("/")
    assert name == "bert-tiny-test"
    assert client.get_model_version(name, version).source == f"models:/{output.model_id}"
    manifest_copy = mlflow.artifacts.download_artifacts(
        run_id=tracker.run_id, artifact_path="data_manifest/manifest.json", tracking_uri=server.url
    )
    assert json.loads(Path(manifest_copy).read_text()) == {"examples": 10}

    text = f"{SUBJECTS[0].capitalize()} [MASK] the ball in the park."
    ours = fill_mask(load_model(final_dir), text, top_k=3)[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)  # where models:/ URIs are looked up
    for uri in (run.data.tags[MODEL_URI_TAG], f"models:/bert-tiny-test/{version}"):
        pipeline = mlflow.transformers.load_model(uri)
        assert pipeline.task == TASK
        predicted = pipeline(text, top_k=3)
        assert [p["token"] for p in predicted] == [p.token_id for p in ours]
        assert predicted[0]["score"] == pytest.approx(ours[0].probability, rel=1e-4)
    answer = mlflow.pyfunc.load_model(f"models:/bert-tiny-test/{version}").predict([text])
    assert list(answer) == [ours[0].token]


def test_the_prepared_data_is_the_runs_dataset_input_shared_by_runs_on_it(tmp_path, sqlite_config):
    data_dir = prepared_dir(tmp_path / "prepared-seq32")
    manifest = load_manifest_of(data_dir)
    digests = []
    for name in ("first", "second"):
        tracker = RunTracker.open(sqlite_config, RunDir.at(tmp_path / name))
        tracker.log_dataset(str(data_dir), manifest)
        tracker.log_dataset(str(data_dir), manifest)  # a resumed start logs it again: recorded once
        tracker.end("FINISHED")
        (dataset_input,) = MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).inputs.dataset_inputs
        dataset = dataset_input.dataset
        context = {(tag.key, tag.value) for tag in dataset_input.tags}
        assert context == {("mlflow.data.context", TRAINING_CONTEXT)}
        assert dataset.name == "prepared-seq32"
        assert json.loads(dataset.source) == {"uri": str(data_dir)}
        assert json.loads(dataset.profile)["examples"] == {"train": 172, "eval": 18}
        columns = [column["name"] for column in json.loads(dataset.schema)["mlflow_colspec"]]
        assert columns == ["input_ids", "token_type_ids", "next_sentence_label"]
        digests.append(dataset.digest)
    assert digests[0] == digests[1] == manifest_hash(str(data_dir))

    other_dir = prepared_dir(tmp_path / "other", tokenizer_hash="ffff0000")
    assert manifest_hash(str(other_dir)) != digests[0]


def load_manifest_of(directory: Path) -> Manifest:
    from data.manifest import load_manifest

    return load_manifest(str(directory))


def test_the_source_is_the_entry_point_and_the_commit(tmp_path, sqlite_config):
    tracker = RunTracker.open(sqlite_config, RunDir.at(tmp_path / "run"))
    tracker.end("FINISHED")
    tags = MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).data.tags
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
    ).stdout.strip()
    assert tags["mlflow.source.name"] == "bert-pretrain train"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == tags["git_commit"] == commit


def test_a_node_monitor_sends_cpu_and_memory_under_the_node_name(tmp_path, sqlite_config):
    tracker = RunTracker.open(sqlite_config, RunDir.at(tmp_path / "run"))
    target = SystemMetricsTarget(tracker.tracking_uri, tracker.run_id, interval_s=1, flush_timeout_s=5)
    defaults = SystemMetricsTarget(tracker.tracking_uri, tracker.run_id, 10, 60)
    assert tracker.system_metrics_target() == defaults
    monitor = NodeMonitor(target, "10.0.0.7-abc123").start()
    client = MlflowClient(tracker.tracking_uri)
    wanted = {
        "system/10.0.0.7-abc123/cpu_utilization_percentage",
        "system/10.0.0.7-abc123/system_memory_usage_megabytes",
    }
    deadline = time.monotonic() + WAIT_S
    while not wanted <= set(client.get_run(tracker.run_id).data.metrics) and time.monotonic() < deadline:
        time.sleep(0.5)
    monitor.stop()
    tracker.end("FINISHED")
    metrics = client.get_run(tracker.run_id).data.metrics
    assert wanted <= set(metrics)
    assert all(key.startswith("system/10.0.0.7-abc123/") for key in metrics)
    assert 0 <= metrics["system/10.0.0.7-abc123/cpu_utilization_percentage"] <= 100
    assert metrics["system/10.0.0.7-abc123/system_memory_usage_megabytes"] > 0


def test_system_metrics_are_off_with_one_setting(tmp_path, sqlite_config):
    config = MlflowConfig(**{**sqlite_config.__dict__, "log_system_metrics": False})
    tracker = RunTracker.open(config, RunDir.at(tmp_path / "run"))
    assert tracker.system_metrics_target() is None
    tracker.end("FINISHED")


def test_logging_the_model_leaves_the_process_tracking_settings_as_they_were(
    tmp_path, sqlite_config, final_dir
):
    tracker = RunTracker.open(sqlite_config, RunDir.at(tmp_path / "run"))
    tracker.log_final(final_dir, {})
    tracker.end("FINISHED")
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ
    assert not mlflow.tracking._tracking_service.utils.is_tracking_uri_set()
    client = MlflowClient(tracker.tracking_uri)
    run = client.get_run(tracker.run_id)
    (output,) = run.outputs.model_outputs
    assert client.get_logged_model(output.model_id).experiment_id == run.info.experiment_id


def test_a_final_folder_that_is_no_pipeline_is_a_warning_not_an_outage(tmp_path, sqlite_config, caplog):
    final = tmp_path / "final"
    BertForPreTraining(BertConfig.from_preset("tiny", vocab_size=64)).save_hf(final)  # no tokenizer
    tracker = RunTracker.open(sqlite_config, RunDir.at(tmp_path / "run"))
    with caplog.at_level(logging.WARNING):
        tracker.log_final(final, {})
    assert not tracker.offline
    tracker.end("FINISHED")
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "bert_pretrain"]
    assert warning.startswith(f"MLflow: could not log the final model (it is in {final})")
    assert MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).info.status == "FINISHED"
    assert load_unsent(RunDir.at(tmp_path / "run")) == (Unsent(), [])
