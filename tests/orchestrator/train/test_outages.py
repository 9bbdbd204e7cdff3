"""Real processes, two fits, each checked for several things:

1. A run recording to a real `mlflow server` (its URI carrying a planted password), which is killed at the
   run's first checkpoint: the run finishes, ends within the flush timeout and keeps what was not sent; the
   local Ray and the workers listen on nothing beyond loopback (`ss -ltnp`).
2. The same run started again (`bert-pretrain train`) with the server back and its newest checkpoint
   truncated: it resumes from the one before and says so, sends what the first start kept, and is
   interrupted with SIGINT right after a checkpoint: exit 130 with one line naming that checkpoint; then
   `bert-pretrain tracking sync` sends what the interrupt kept from MLflow.
Then every metric is in MLflow exactly once, and the password is found nowhere: not in the run folder, the
MLflow store, Ray's logs or the console.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import ray
import yaml
from mlflow import MlflowClient

from orchestrator.cli import main
from orchestrator.run_dir import RunDir
from orchestrator.train.checkpoints import MODEL_FILE, checked_checkpoints, find_resume_checkpoint
from orchestrator.train.driver import train
from tests.orchestrator.conftest import make_job
from tests.orchestrator.reports import ReportRecorder, read_reports
from tests.orchestrator.tracking_helpers import MlflowServer, process_tree

PASSWORD = f"planted-{secrets.token_hex(6)}"
FLUSH_TIMEOUT_S = 5
END_MARGIN_S = 30  # the export and the bookkeeping after the flush, on a loaded 2-core machine
FIRST_STEPS, SECOND_STEPS, EVERY, INTERRUPT_AT = 8, 40, 2, 10
LOOPBACK = ("127.", "[::1]", "[::ffff:127.")


class CheckpointWatcher(threading.Thread):
    """Calls `on_checkpoint(step)` once for each checkpoint of the run that becomes complete and intact
    (those already there when it starts excepted)."""

    def __init__(self, run_dir: str, on_checkpoint):
        super().__init__(daemon=True)
        self.run_dir, self.on_checkpoint = run_dir, on_checkpoint
        self.seen = {name for name, problem in checked_checkpoints(RunDir.at(run_dir)) if problem is None}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            with contextlib.suppress(Exception):  # a checkpoint being written or deleted meanwhile
                for name, problem in checked_checkpoints(RunDir.at(self.run_dir)):
                    if problem is None and name not in self.seen:
                        self.seen.add(name)
                        self.on_checkpoint(int(name.removeprefix("checkpoint_")))


def listeners(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process name) of every listening TCP socket of `pids` (`ss -ltnp`)."""
    lines = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout.splitlines()
    found = []
    for line in lines:
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+),', line):
            if int(pid) in pids:
                found.append((line.split()[3], name))
    return found


@contextlib.contextmanager
def console_into(buffer: io.StringIO):
    """What a person would see: stdout, stderr and the warnings logged."""
    handler = logging.StreamHandler(buffer)
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prepared_corpus):
    root = tmp_path_factory.mktemp("outages")
    (root / "mlflow").mkdir()
    server = MlflowServer(root / "mlflow")
    server.start()
    url = server.url.replace("http://", f"http://alice:{PASSWORD}@")
    mlflow = {
        "enabled": True,
        "tracking_uri": url,
        "flush_timeout_s": FLUSH_TIMEOUT_S,
        "experiment_name": "o",
    }
    job = make_job(
        root,
        prepared_corpus["data"],
        train={"max_steps": FIRST_STEPS},
        checkpoint={"every": EVERY, "run_name": "outage", "keep": 4},
        mlflow=mlflow,
    )
    run_dir = str(root / "runs" / "outage")
    first: dict = {"console": io.StringIO(), "ends": {}}

    def first_checkpoints(step: int) -> None:
        first["ends"][step] = time.monotonic()
        if len(first["ends"]) == 1:  # the workers run: what listens now; then the server dies
            first["listeners"] = listeners(process_tree(os.getpid()))
            server.stop()

    watcher = CheckpointWatcher(run_dir, first_checkpoints)
    watcher.start()
    with console_into(first["console"]):
        first["result"] = train(job, callbacks=[ReportRecorder(root / "first.jsonl")])
    first["returned"] = time.monotonic()
    watcher.done.set()
    first["reports"] = read_reports(root / "first.jsonl")

    # The same run again, from the command line, with the server back and the newest checkpoint truncated.
    server.start()
    os.truncate(Path(run_dir, "checkpoint_000000008", MODEL_FILE), 1000)
    recipe = job.to_dict()
    del recipe["mlflow"]["tracking_uri"]
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    second: dict = {"console": io.StringIO()}

    def interrupt_after(step: int) -> None:
        if step == INTERRUPT_AT:
            os.kill(os.getpid(), signal.SIGINT)

    watcher = CheckpointWatcher(run_dir, interrupt_after)
    watcher.start()
    command = ["train", "--config", str(root / "recipe.yaml"), "--set", f"mlflow.tracking_uri={url}"]
    command += ["--set", f"train.max_steps={SECOND_STEPS}"]
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with console_into(second["console"]):
            second["status"] = main(command)
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        watcher.done.set()
    # Ray Train drops the reports it has not taken in when a run is aborted; the checkpoints keep them.
    with console_into(second["console"]):
        second["sync_status"] = main(["tracking", "sync", run_dir, "--tracking-uri", url])
    yield {
        "root": root,
        "run_dir": run_dir,
        "server": server,
        "url": server.url,
        "first": first,
        "second": second,
    }
    server.stop()


def test_a_killed_tracking_server_neither_stops_nor_holds_up_the_run(runs):
    first, run_dir = runs["first"], runs["run_dir"]
    assert first["result"].steps == FIRST_STEPS
    assert (Path(run_dir) / "final" / "model.safetensors").is_file()
    assert RunDir.at(run_dir).read_run_json()["final_dir"] == first["result"].final_dir
    assert first["returned"] - first["ends"][FIRST_STEPS] < FLUSH_TIMEOUT_S + END_MARGIN_S
    console = first["console"].getvalue()
    assert f"could not be sent to http://alice:***@127.0.0.1:{runs['server'].port}" in console
    assert f"they are kept in {run_dir}/mlflow_unsent" in console
    assert f"bert-pretrain tracking sync {run_dir}" in console


def test_a_local_run_listens_on_loopback_only(runs):
    found = runs["first"]["listeners"]
    assert any(name == "gcs_server" for _, name in found) and any(name == "raylet" for _, name in found)
    outside = [(address, name) for address, name in found if not address.startswith(LOOPBACK)]
    # The one exception, named in the README: torch's rendezvous store on rank 0 (no address to bind to).
    assert len(outside) <= 1 and all(name.startswith("ray::RayTrainWo") for _, name in outside), outside


def test_the_run_resumes_from_the_newest_intact_checkpoint_and_says_so(runs):
    console = runs["second"]["console"].getvalue()
    size = (Path(runs["run_dir"]) / "checkpoint_000000006" / MODEL_FILE).stat().st_size
    assert (
        f"Skipping checkpoint checkpoint_000000008: model.safetensors is 1,000 bytes, not {size:,} "
        "(damaged, or not fully written)." in console
    )
    assert f"Resuming from checkpoint_000000006: step 6 of {SECOND_STEPS}." in console
    assert re.search(r"MLflow: sent [1-9][\d,]* metrics kept from an earlier start of this run", console)


def test_an_interrupt_right_after_a_checkpoint_keeps_it_and_says_how_to_resume(runs):
    second, run_dir = runs["second"], runs["run_dir"]
    assert second["status"] == 130
    resume = find_resume_checkpoint(RunDir.at(run_dir))
    assert INTERRUPT_AT <= resume.step < SECOND_STEPS
    interrupted = [line for line in second["console"].getvalue().splitlines() if "interrupted" in line]
    assert interrupted == [
        f"bert-pretrain train: interrupted; the checkpoint of step {resume.step} is kept in {run_dir}; "
        "run the same command to resume"
    ]


def test_every_metric_reaches_mlflow_exactly_once(runs):
    """The first start's, sent by the second; the second's, sent as it ran or, for the reports Ray Train had
    not taken in when it was interrupted, from its last checkpoint by `tracking sync`."""
    assert runs["second"]["sync_status"] == 0
    client = MlflowClient(runs["url"])
    run = client.get_run(RunDir.at(runs["run_dir"]).read_run_json()["mlflow_run_id"])
    assert run.info.status == "KILLED"
    last_step = find_resume_checkpoint(RunDir.at(runs["run_dir"])).step
    for key in ("1-train/loss", "1-train/mlm_accuracy", "3-optim/learning_rate"):
        steps = sorted(metric.step for metric in client.get_metric_history(run.info.run_id, key))
        assert steps[:last_step] == list(range(1, last_step + 1)), key  # each step once, none missing
        assert len(steps) == len(set(steps)), key
    # Steps 7 and 8, trained again after the truncated checkpoint, keep the values the first start sent.
    first_values = {r["metrics"][0]["step"]: r["metrics"][0]["train/loss"] for r in runs["first"]["reports"]}
    assert sorted(first_values) == list(range(1, FIRST_STEPS + 1))
    loss = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "1-train/loss")}
    assert {step: loss[step] for step in first_values} == pytest.approx(first_values)


def test_the_planted_password_is_found_nowhere(runs):
    places = {"console": runs["first"]["console"].getvalue() + runs["second"]["console"].getvalue()}
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())  # Ray's own logs
    for path in [*runs["root"].rglob("*"), *(session_dir / "logs").rglob("*")]:
        if path.is_file():
            places[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    assert len(places) > 20  # the run folder, the MLflow store and its artifacts, Ray's logs
    assert [place for place, text in places.items() if PASSWORD in text] == []
    assert json.loads(Path(runs["run_dir"], "run.json").read_text())["config"]["mlflow"]["tracking_uri"] == (
        f"http://alice:***@127.0.0.1:{runs['server'].port}"
    )
