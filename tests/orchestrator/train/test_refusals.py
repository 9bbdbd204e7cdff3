"""Nothing silently wrong, against real processes: a run started from a shell script in the background, a
second start of it while it runs, SIGTERM from the script, then resumes that would read other examples, a
damaged newest checkpoint, a failed resume of a finished run, and Ctrl-C while a rerun is starting.

One `bert-pretrain train` process is started the way a script starts it (`cmd &`, so SIGINT is ignored) and
killed with SIGTERM after its checkpoint of step 4; the other checks start from what it left.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from common.errors import UserError
from model import BertConfig, BertForPreTraining
from orchestrator.cli import main
from orchestrator.config import JobConfig
from orchestrator.run_dir import LOCK_FILE, RunDir, RunLock
from orchestrator.tracking.names import mlflow_metric_key
from orchestrator.train.checkpoints import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAIN_STATE_FILE,
    checked_checkpoints,
    find_resume_checkpoint,
)
from orchestrator.train.driver import train
from tests.orchestrator.conftest import make_job
from tests.orchestrator.reports import ReportRecorder, read_failures, read_reports
from tests.orchestrator.train.test_outages import console_into

CLI = str(Path(sys.executable).parent / "bert-pretrain")
KILL_AFTER = 4  # the checkpoint step after which the script sends SIGTERM
WAIT_S = 240  # the most any process here may take (a fit's start on a loaded 2-core machine included)


def wait_for(condition, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def intact_steps(run_dir: str) -> list[int]:
    return sorted(
        int(n.removeprefix("checkpoint_")) for n, p in checked_checkpoints(RunDir.at(run_dir)) if not p
    )


def with_max_steps(job: JobConfig, steps: int) -> JobConfig:
    return dataclasses.replace(job, train=dataclasses.replace(job.train, max_steps=steps))


def manifest_digest(prepared_dir: str) -> str:
    return hashlib.sha256(Path(prepared_dir, "manifest.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def killed(tmp_path_factory, prepared_corpus):
    """The run, started in the background by a shell script with its own copy of the prepared data, then a
    second start while it runs, then SIGTERM from the script."""
    root = tmp_path_factory.mktemp("refusals")
    data = dict(prepared_corpus["data"])
    for key in ("tokenizer_dir", "prepared_dir"):
        data[key] = str(shutil.copytree(data[key], root / Path(data[key]).name))
    job = make_job(
        root,
        data,
        train={"max_steps": 400},
        checkpoint={"every": 2, "run_name": "bg", "keep": 10},
        mlflow={"enabled": True, "tracking_uri": f"sqlite:///{root}/mlflow.db", "experiment_name": "bg"},
    )
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(job.to_dict()))
    run_dir = str(root / "runs" / "bg")
    script = root / "run.sh"
    script.write_text(
        f"{CLI} train --config {recipe} > {root}/train.log 2>&1 &\n"
        f"echo $! > {root}/pid\n"
        "wait $!\n"
        f'echo "exit=$?" >> {root}/train.log\n'
    )
    shell = subprocess.Popen(["bash", str(script)], cwd=root)
    wait_for(lambda: KILL_AFTER in intact_steps(run_dir), f"the checkpoint of step {KILL_AFTER}")
    second = subprocess.run(
        [CLI, "train", "--config", str(recipe)], cwd=root, capture_output=True, text=True, timeout=WAIT_S
    )
    pid = int((root / "pid").read_text())
    os.kill(pid, signal.SIGTERM)
    shell.wait(WAIT_S)
    return {
        "root": root,
        "job": job,
        "recipe": recipe,
        "run_dir": run_dir,
        "pid": pid,
        "second": second,
        "log": (root / "train.log").read_text(),
        "tracking_uri": job.mlflow.tracking_uri,
    }


def mlflow_run(killed: dict):
    client = MlflowClient(killed["tracking_uri"])
    return client.get_run(RunDir.at(killed["run_dir"]).read_run_json()["mlflow_run_id"])


def test_a_second_start_of_a_running_run_is_refused_at_once(killed):
    second = killed["second"]
    assert second.returncode == 2, second.stderr[-2000:]
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(
        f"bert-pretrain train: error: run {killed['run_dir']} is in use: process {killed['pid']}"
    )


def test_sigterm_from_a_script_ends_the_run_like_ctrl_c(killed):
    log, run_dir = killed["log"], killed["run_dir"]
    assert "exit=130" in log
    assert "SIGTERM received" not in log and "Aborted" not in log
    kept = find_resume_checkpoint(RunDir.at(run_dir))
    assert kept.step >= KILL_AFTER
    interrupted = [line for line in log.splitlines() if "interrupted" in line]
    assert interrupted == [
        f"bert-pretrain train: interrupted; the checkpoint of step {kept.step} is kept in {run_dir}; "
        "run the same command to resume"
    ]
    assert mlflow_run(killed).info.status == "KILLED"
    assert not Path(run_dir, LOCK_FILE).exists()


@pytest.mark.parametrize(
    ("override", "setting", "before", "after"),
    [
        ("train.seed=7", "train.seed", "0", "7"),
        ("train.global_batch_size=8", "train.global_batch_size", "16", "8"),
        ("data.prepare.max_seq_length=24", "data.prepare.max_seq_length", "32", "24"),
    ],
)
def test_a_resume_that_would_read_other_examples_is_refused(killed, capsys, override, setting, before, after):
    run_dir, prepared_dir = killed["run_dir"], killed["job"].data.prepared_dir
    checkpoints, digest = intact_steps(run_dir), manifest_digest(prepared_dir)
    capsys.readouterr()
    assert main(["train", "--config", str(killed["recipe"]), "--set", override]) == 2
    error = capsys.readouterr().err
    kept = find_resume_checkpoint(RunDir.at(run_dir))
    assert (
        f"resumes from checkpoint_{kept.step:09d} (step {kept.step}), trained with {setting}={before}"
        in error
    )
    assert f"with {setting}={after} it would read other examples" in error
    assert f"--init-from {kept.path} --set checkpoint.run_name=NEW_NAME" in error
    # Nothing already written changed: the checkpoints, the prepared examples, the MLflow run.
    assert intact_steps(run_dir) == checkpoints and manifest_digest(prepared_dir) == digest
    assert mlflow_run(killed).info.status == "KILLED"


def test_ctrl_c_while_a_rerun_starts_says_that_the_same_command_resumes(killed):
    """SIGTERM as soon as the rerun holds the run (while it checks its checkpoint and starts Ray)."""
    run_dir, root = killed["run_dir"], killed["root"]
    kept = find_resume_checkpoint(RunDir.at(run_dir))
    with open(root / "rerun.out", "w") as out, open(root / "rerun.err", "w") as err:
        rerun = subprocess.Popen(
            [CLI, "train", "--config", str(killed["recipe"])], cwd=root, stdout=out, stderr=err
        )
        wait_for(lambda: Path(run_dir, LOCK_FILE).exists() or rerun.poll() is not None, "the rerun's lock")
        rerun.send_signal(signal.SIGTERM)
        rerun.wait(WAIT_S)
    stderr = (root / "rerun.err").read_text()
    assert rerun.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        f"bert-pretrain train: interrupted; the checkpoint of step {kept.step} is kept in {run_dir}; run the "
        "same command to resume"
    )


@pytest.fixture(scope="module")
def resumed_past_damage(killed):
    """The newest checkpoint's weights overwritten with random bytes of the same size; the run resumed
    to that step (in this process, on the session's Ray)."""
    run_dir = killed["run_dir"]
    newest = find_resume_checkpoint(RunDir.at(run_dir))
    model_file = Path(newest.path, MODEL_FILE)
    model_file.write_bytes(os.urandom(model_file.stat().st_size))
    job = with_max_steps(killed["job"], newest.step)
    console = io.StringIO()
    with console_into(console):
        result = train(job, callbacks=[ReportRecorder(killed["root"] / "resumed.jsonl")])
    reports = read_reports(killed["root"] / "resumed.jsonl")
    return {"newest": newest, "result": result, "console": console.getvalue(), "reports": reports}


def test_a_damaged_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
    killed, resumed_past_damage
):
    newest, console = resumed_past_damage["newest"], resumed_past_damage["console"]
    name = f"checkpoint_{newest.step:09d}"
    assert (
        f"Skipping checkpoint {name}: model.safetensors does not match its SHA-256 (its bytes were changed); "
        f"set aside as damaged_{name} (damaged, or not fully written)." in console
    )
    before = newest.step - 2
    assert f"Resuming from checkpoint_{before:09d}: step {before} of {newest.step}." in console
    assert resumed_past_damage["result"].steps == newest.step
    assert Path(killed["run_dir"], f"damaged_{name}", MODEL_FILE).is_file()
    assert find_resume_checkpoint(RunDir.at(killed["run_dir"]), verify=True).step == newest.step
    assert mlflow_run(killed).info.status == "FINISHED"


def test_with_dropout_on_the_resumed_steps_equal_those_of_the_run_before_the_stop(
    killed, resumed_past_damage
):
    """Dropout draws from each rank's RNG, which every checkpoint keeps: the 2 steps trained again after the
    damaged checkpoint give the losses the killed run logged for them (MLflow keeps those first values)."""
    assert killed["job"].model.dropout > 0
    client = MlflowClient(killed["tracking_uri"])
    logged = {
        m.step: m.value
        for m in client.get_metric_history(mlflow_run(killed).info.run_id, mlflow_metric_key("train/loss"))
    }
    again = {r["metrics"][0]["step"]: r["metrics"][0]["train/loss"] for r in resumed_past_damage["reports"]}
    newest = resumed_past_damage["newest"].step
    assert sorted(again) == [newest - 1, newest]
    assert {step: logged[step] for step in again} == pytest.approx(again, rel=1e-6)


def test_a_second_tracking_sync_has_nothing_to_send(killed, resumed_past_damage, capsys):
    run_dir = killed["run_dir"]
    for _ in range(2):
        assert main(["tracking", "sync", run_dir]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("Nothing to send: the MLflow run has")


def test_a_failed_resume_never_rewrites_a_finished_runs_status(killed, resumed_past_damage):
    """The finished run's last checkpoint gets an optimizer file that loads as nothing, with its recorded
    size and SHA-256 updated (so only loading finds it): the resume fails with one clear error, and the
    MLflow run stays FINISHED, the failure recorded as a tag."""
    final = find_resume_checkpoint(RunDir.at(killed["run_dir"]))
    optimizer_file = Path(final.path, OPTIMIZER_FILE)
    optimizer_file.write_bytes(b"not a torch file")
    state_file = Path(final.path, TRAIN_STATE_FILE)
    state = json.loads(state_file.read_text())
    state["files"][OPTIMIZER_FILE] = optimizer_file.stat().st_size
    state["checksums"][OPTIMIZER_FILE] = hashlib.sha256(optimizer_file.read_bytes()).hexdigest()
    state_file.write_text(json.dumps(state))
    with pytest.raises(UserError, match=f"checkpoint_{final.step:09d}: optimizer.pt cannot be read"):
        train(with_max_steps(killed["job"], final.step + 2))
    run = mlflow_run(killed)
    assert run.info.status == "FINISHED"
    assert run.data.tags["last_resume"].startswith("FAILED")


@pytest.fixture
def small_disk(tmp_path, prepared_corpus):
    """A tmpfs that holds one checkpoint of the tiny model and not two."""
    vocab_size = json.loads(Path(prepared_corpus["data"]["prepared_dir"], "manifest.json").read_text())
    model = BertForPreTraining(BertConfig.from_preset("tiny", vocab_size=vocab_size["vocab_size"]))
    checkpoint_bytes = 12 * sum(p.numel() for p in model.parameters())  # weights + AdamW's two moments
    mount = tmp_path / "disk"
    mount.mkdir()
    size = f"size={int(1.6 * checkpoint_bytes)}"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here (root is needed): {mounted.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_ends_the_run_at_once_naming_the_path_and_keeping_the_last_checkpoint(
    tmp_path, prepared_corpus, small_disk
):
    job = make_job(
        small_disk,
        prepared_corpus["data"],
        train={"max_steps": 20},
        checkpoint={"every": 2, "run_name": "disk", "keep": 10, "max_failures": 3},
    )
    with pytest.raises(UserError) as raised:
        train(job, callbacks=[ReportRecorder(tmp_path / "reports.jsonl")])
    run_dir = str(small_disk / "runs" / "disk")
    message = str(raised.value)
    assert f"checkpoint of step 4 could not be written to {run_dir}/checkpoint_000000004: " in message
    assert "No space left on device (it needs " in message
    assert "the partial copy was removed and the checkpoint of step 2 is kept" in message
    assert not Path(run_dir, "checkpoint_000000004").exists()
    assert intact_steps(run_dir) == [2]
    assert len(read_failures(tmp_path / "reports.jsonl")) == 1  # no retry of what cannot succeed


def test_a_lock_left_by_a_crashed_run_is_taken_over(tmp_path):
    """A lock whose process is gone (SIGKILL leaves it behind) does not keep the run locked."""
    run_dir = RunDir(str(tmp_path), "crashed")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    Path(run_dir.path).mkdir()
    Path(run_dir.path, LOCK_FILE).write_text(
        json.dumps({"host": socket.gethostname(), "pid": gone.pid, "started": 0, "renewed": 0})
    )
    with RunLock(run_dir):
        assert json.loads(Path(run_dir.path, LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not Path(run_dir.path, LOCK_FILE).exists()
