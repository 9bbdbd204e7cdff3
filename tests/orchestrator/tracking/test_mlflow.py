"""Tracking against real MLflow: a SQLite store in a temporary folder and a real `mlflow server`."""

from __future__ import annotations

import json
import logging
import pickle
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities import Metric
from ray.train import Checkpoint, UserCallback
from ray.train.v2._internal.execution.training_report import _TrainingReport

from common.redact import is_secret_key
from orchestrator.cli import main
from orchestrator.config import JobConfig, MlflowConfig, TrainConfig
from orchestrator.run_dir import RunDir
from orchestrator.tracking.client import MlflowRun
from orchestrator.tracking.metrics import MetricsCallback
from orchestrator.tracking.run import RunTracker
from orchestrator.tracking.unsent import Unsent, load_unsent, save_unsent
from tests.orchestrator.tracking_helpers import free_port

DOES_NOT_HANG_S = 5.0  # a generous bound for calls that must not wait on the tracking server


def report(callback: MetricsCallback, step: int, checkpoint: Checkpoint | None = None, **values: float):
    """What the Ray Train controller does after two workers report: rank 0 carries the global numbers."""
    rank0 = {"step": step, **values}
    rank1 = {"step": step, **{key: -1.0 for key in values}}
    callback.after_report(_TrainingReport(checkpoint, rank0, validation=False), [rank0, rank1])


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, key))


def test_run_dir_json_merges_keys(tmp_path):
    assert RunDir.at(tmp_path / "run").read_run_json() == {}
    RunDir.at(tmp_path / "run").update_run_json(mlflow_run_id="abc")
    RunDir.at(tmp_path / "run").update_run_json(resolved_config={"optim": {"lr": 0.1}})
    expected = {"mlflow_run_id": "abc", "resolved_config": {"optim": {"lr": 0.1}}}
    assert RunDir.at(tmp_path / "run").read_run_json() == expected
    assert [path.name for path in (tmp_path / "run").iterdir()] == ["run.json"]


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("hf_token", True),
        ("api_key", True),
        ("aws_secret_access_key", True),
        ("password", True),
        ("gcpCredentials", True),
        ("tokenizer_path", False),
        ("mask_token_fraction", False),
        ("token_path", False),
        ("max_tokens", False),
        ("vocab_size", False),
    ],
)
def test_secret_keys(key, secret):
    assert is_secret_key(key) is secret


def test_config_logged_as_flat_redacted_params(tmp_path, sqlite_config):
    resolved = {
        "model": {"preset": "tiny", "hidden_size": 64},
        "optim": {"lr": 1e-4, "betas": [0.9, 0.999]},
        "data": {"hf_token": "hf_abc123", "corpus": "https://user:pw123@example.com/c", "notes": "x" * 7000},
        "mlflow": {"enabled": True},
    }
    tracker = RunTracker.open(sqlite_config, RunDir.at(tmp_path / "run"))
    tracker.log_config(resolved)
    tracker.end("FINISHED")

    client = MlflowClient(tracker.tracking_uri)
    params = client.get_run(tracker.run_id).data.params
    assert params["model.preset"] == "tiny"
    assert params["model.hidden_size"] == "64"
    assert params["optim.lr"] == "0.0001"
    assert params["optim.betas"] == "[0.9, 0.999]"
    assert params["mlflow.enabled"] == "true"
    assert params["data.hf_token"] == "***"
    assert params["data.corpus"] == "https://user:***@example.com/c"
    assert len(params["data.notes"]) == 6000
    logged_config = Path(
        download_artifacts(
            run_id=tracker.run_id,
            artifact_path="resolved_config.json",
            tracking_uri=tracker.tracking_uri,
            dst_path=str(tmp_path / "dl"),
        )
    )
    assert json.loads(logged_config.read_text())["data"]["hf_token"] == "***"
    assert "hf_abc123" not in logged_config.read_text() and "pw123" not in logged_config.read_text()


def test_metric_history_at_reported_steps_and_checkpoint_tag(tmp_path, server):
    run_dir = RunDir.at(tmp_path / "metrics")  # the MLflow run is named as the run
    tracker = RunTracker.open(MlflowConfig(tracking_uri=server.url), run_dir)
    callback = tracker.callback()
    checkpoint = Checkpoint(str(tmp_path / "checkpoint_000003"))
    for step in (10, 20, 30):
        report(callback, step, checkpoint if step == 30 else None, loss=1.0 / step, learning_rate=step * 1e-5)
    assert callback.close() == 0
    tracker.end("FINISHED")

    client = MlflowClient(server.url)
    assert history(client, tracker.run_id, "loss") == [(10, 0.1), (20, 0.05), (30, 1.0 / 30)]
    assert [step for step, _ in history(client, tracker.run_id, "learning_rate")] == [10, 20, 30]
    run = client.get_run(tracker.run_id)
    assert "step" not in run.data.metrics
    assert run.data.tags["checkpoint_uri"] == str(tmp_path / "checkpoint_000003")
    assert run.data.tags["mlflow.runName"] == "metrics"
    assert run.info.status == "FINISHED"


def test_resume_continues_one_run_without_duplicate_steps(tmp_path, sqlite_config):
    run_dir = tmp_path / "run"
    first = RunTracker.open(sqlite_config, RunDir.at(run_dir))
    first.log_config({"scaling": {"num_workers": 2}, "optim": {"lr": 0.1}})
    callback = first.callback()
    for step in (1, 2, 3, 4):
        report(callback, step, loss=float(step))
    # A worker dies; the restarted group resumes from the checkpoint at step 2 and reports 3 and 4 again.
    for step in (3, 4, 5):
        report(callback, step, loss=float(step) + 100)
    callback.close()
    first.end("FAILED", error="RuntimeError: worker died")

    second = RunTracker.open(sqlite_config, RunDir.at(run_dir))
    assert second.run_id == first.run_id == RunDir.at(run_dir).read_run_json()["mlflow_run_id"]
    second.log_config({"scaling": {"num_workers": 1}, "optim": {"lr": 0.1}})
    callback = second.callback()
    for step in (4, 5, 6, 7):  # resumed from the checkpoint at step 3
        report(callback, step, loss=float(step) + 200, eval_loss=0.5)
    callback.close()
    second.end("FINISHED")

    client = MlflowClient(second.tracking_uri)
    expected_loss = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 105), (6, 206), (7, 207)]
    assert history(client, first.run_id, "loss") == expected_loss
    assert history(client, first.run_id, "eval_loss") == [(4, 0.5), (5, 0.5), (6, 0.5), (7, 0.5)]
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["scaling.num_workers"] == "2"
    assert run.data.tags["resumed.scaling.num_workers"] == "1"
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_server_outage_neither_blocks_nor_loses_metrics(tmp_path, server, caplog):
    """The sender meets the stopped server (it says so), keeps the metrics, and delivers each once when the
    server answers again."""
    caplog.set_level(logging.WARNING)
    tracker = RunTracker.open(MlflowConfig(tracking_uri=server.url), RunDir.at(tmp_path / "run"))
    callback = tracker.callback()
    client = MlflowClient(server.url)
    report(callback, 1, loss=1.0)
    deadline = time.monotonic() + 60
    while not client.get_metric_history(tracker.run_id, "loss") and time.monotonic() < deadline:
        time.sleep(0.2)

    server.stop()
    for step in (2, 3, 4):
        started = time.monotonic()
        report(callback, step, loss=float(step))
        assert time.monotonic() - started < DOES_NOT_HANG_S
    deadline = time.monotonic() + DOES_NOT_HANG_S
    while not any("is not answering" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the sender never met the stopped server"
        time.sleep(0.1)
    server.start()
    assert callback.close() == 0
    tracker.end("FINISHED")

    assert history(client, tracker.run_id, "loss") == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_metrics_the_server_does_not_take_are_kept_in_the_run_directory(tmp_path):
    run_dir = str(tmp_path / "run")
    nothing_listens = f"http://127.0.0.1:{free_port()}"
    settings = MlflowConfig(max_buffered_metrics=3, flush_timeout_s=1)
    callback = MetricsCallback(MlflowRun(nothing_listens, "0" * 32), RunDir.at(run_dir), settings)
    started = time.monotonic()
    for step in range(1, 11):
        report(callback, step, loss=float(step))
    callback.close()
    assert time.monotonic() - started < 1.0 + DOES_NOT_HANG_S

    unsent, _ = load_unsent(RunDir.at(run_dir))
    assert sorted((m.step, m.value) for m in unsent.metrics) == [(step, float(step)) for step in range(1, 11)]


def test_a_server_down_at_the_start_costs_one_warning_and_a_sync_delivers_everything_once(
    tmp_path, server, caplog, capsys
):
    """The server is down when the run starts: it trains offline; `tracking sync` then creates the run and
    sends its config, metrics, tags and end status; a second sync sends nothing."""
    run_dir = tmp_path / "run"
    url = server.url.replace("http://", "http://alice:planted-pw@")
    job = JobConfig(
        train=TrainConfig(max_steps=3), mlflow=MlflowConfig(tracking_uri=url, experiment_name="offline")
    )
    RunDir.at(run_dir).update_run_json(config=job.to_dict())
    server.stop()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        tracker = RunTracker.open(job.mlflow, RunDir.at(run_dir))
    assert time.monotonic() - started < DOES_NOT_HANG_S
    assert tracker.offline
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "http://alice:***@127.0.0.1" in warning and "planted-pw" not in warning
    tracker.log_config(job.to_dict())
    tracker.set_tags({"model_preset": "tiny"})
    callback = tracker.callback()
    for step in (1, 2, 3):
        report(callback, step, loss=float(step))
    assert callback.close() == 3
    tracker.end("FINISHED")
    assert "bert-pretrain tracking sync" in capsys.readouterr().out

    server.start()
    assert main(["tracking", "sync", str(run_dir), "--tracking-uri", url]) == 0
    assert main(["tracking", "sync", str(run_dir), "--tracking-uri", url]) == 0
    first, second = capsys.readouterr().out.strip().splitlines()
    assert first.startswith("Sent 3 metrics") and "planted-pw" not in first
    assert second.startswith("Nothing to send")

    client = MlflowClient(server.url)
    run = client.get_run(RunDir.at(run_dir).read_run_json()["mlflow_run_id"])
    assert history(client, run.info.run_id, "loss") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert (run.info.status, run.data.tags["model_preset"]) == ("FINISHED", "tiny")
    assert run.data.params["mlflow.tracking_uri"] == "http://alice:***@" + server.url.removeprefix("http://")
    assert load_unsent(RunDir.at(run_dir)) == (Unsent(), [])


def test_a_batch_the_server_took_before_it_stopped_answering_is_not_sent_twice(tmp_path, sqlite_config):
    """What the run already has is left out of the unsent records; of a step recorded twice, the first."""
    run_dir = tmp_path / "run"
    first = RunTracker.open(sqlite_config, RunDir.at(run_dir))
    callback = first.callback()
    report(callback, 1, loss=1.0)
    report(callback, 2, loss=2.0)
    callback.close()
    # The last batch reached the store, but the answer did not: its metrics were kept as unsent as well.
    taken = [Metric("loss", 1.0, 0, 1), Metric("loss", 2.0, 0, 2), Metric("loss", 3.0, 0, 3)]
    save_unsent(RunDir.at(run_dir), Unsent(taken))
    save_unsent(RunDir.at(run_dir), Unsent([Metric("loss", 33.0, 0, 3), Metric("loss", 4.0, 0, 4)]))

    second = RunTracker.open(sqlite_config, RunDir.at(run_dir))
    assert second.run_id == first.run_id
    client = MlflowClient(second.tracking_uri)
    assert history(client, first.run_id, "loss") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert load_unsent(RunDir.at(run_dir)) == (Unsent(), [])


@pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED"])
def test_end_status_is_recorded_once(tmp_path, sqlite_config, status):
    tracker = RunTracker.open(sqlite_config, RunDir.at(tmp_path / "run"))
    tracker.end(status, error="ValueError: bad batch" if status == "FAILED" else None)
    tracker.end("FINISHED")  # a later end, e.g. from a `finally`, changes nothing

    run = MlflowClient(tracker.tracking_uri).get_run(tracker.run_id)
    assert run.info.status == status
    assert run.data.tags.get("error") == ("ValueError: bad batch" if status == "FAILED" else None)


def test_callback_pickles_and_logs_after_unpickling(tmp_path, sqlite_config):
    tracker = RunTracker.open(sqlite_config, RunDir.at(tmp_path / "run"))
    callback = tracker.callback()
    report(callback, 1, loss=1.0)  # its sender thread is running now

    shipped = pickle.loads(pickle.dumps(callback))
    callback.close()
    report(shipped, 1, loss=9.0)  # already logged before it was shipped
    report(shipped, 2, loss=2.0)
    shipped.close()
    tracker.end("FINISHED")

    assert history(MlflowClient(tracker.tracking_uri), tracker.run_id, "loss") == [(1, 1.0), (2, 2.0)]


def test_disabled_tracking_does_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = RunTracker.open(MlflowConfig(enabled=False), RunDir.at(tmp_path / "run"))
    tracker.log_config({"optim": {"lr": 0.1}})
    tracker.set_tags({"model_preset": "tiny"})
    callback = tracker.callback()
    tracker.log_final(tmp_path, {})
    tracker.end("FINISHED")

    assert tracker.run_id == ""
    assert isinstance(callback, UserCallback) and not isinstance(callback, MetricsCallback)
    assert list(tmp_path.iterdir()) == []
