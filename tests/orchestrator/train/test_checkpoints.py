"""Choosing the checkpoint a run resumes from, on real checkpoint folders (local and in a bucket): the newest
complete and intact one, whatever was damaged or left half-written after it; and worker errors that no
restart can cure ending the run at once."""

from __future__ import annotations

import os

import pytest
import torch
from ray.train import ControllerError, WorkerGroupError
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
from ray.train.v2._internal.execution.controller.state import RestartingState

from common import storage
from common.errors import UserError
from model import BertConfig, BertForPreTraining
from orchestrator.config import OptimConfig
from orchestrator.run_dir import RunDir, checkpoint_name
from orchestrator.train.checkpoints import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAIN_STATE_FILE,
    ResumePoint,
    Trainables,
    TrainState,
    check_resumable,
    find_resume_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
)
from orchestrator.train.failures import StopOnUserError, user_error_in
from orchestrator.train.optim import build_optimizer, build_scheduler

VOCAB = 99


def make_training_state(seed: int = 0):
    torch.manual_seed(seed)
    model = BertForPreTraining(BertConfig.from_preset("tiny", vocab_size=VOCAB, num_hidden_layers=1))
    optimizer = build_optimizer(model, OptimConfig())
    return model, optimizer, build_scheduler(optimizer, OptimConfig(), 10)


def save_checkpoints(run_dir, steps) -> None:
    model, optimizer, scheduler = make_training_state()
    for step in steps:
        state = TrainState(step=step, consumed_samples=step * 16)
        directory = run_dir / checkpoint_name(step)
        save_checkpoint(
            directory, Trainables(model, optimizer, scheduler), state, [rng_state()], {"train": {"seed": 0}}
        )


@pytest.fixture
def damaged_run(tmp_path):
    """Checkpoints at steps 2, 4, 6, 8 and 10: 10 interrupted while its files were copied (no
    train_state.json), 8 truncated, 6 with a train_state.json cut short; 4 and 2 intact."""
    run_dir = tmp_path / "run"
    save_checkpoints(run_dir, [2, 4, 6, 8, 10])
    os.remove(run_dir / checkpoint_name(10) / TRAIN_STATE_FILE)
    os.truncate(run_dir / checkpoint_name(8) / MODEL_FILE, 1000)
    state_file = run_dir / checkpoint_name(6) / TRAIN_STATE_FILE
    state_file.write_text(state_file.read_text()[:50])
    return run_dir


def test_the_run_resumes_from_the_newest_intact_checkpoint_and_names_each_one_skipped(damaged_run, bucket):
    full_size = (damaged_run / checkpoint_name(4) / MODEL_FILE).stat().st_size
    expected_skips = [
        (
            "checkpoint_000000010",
            "train_state.json is missing (written last: the checkpoint was not finished)",
        ),
        ("checkpoint_000000008", f"model.safetensors is 1,000 bytes, not {full_size:,}"),
        ("checkpoint_000000006", "train_state.json is unreadable (JSONDecodeError)"),
    ]
    storage.copy_dir(str(damaged_run), bucket)
    for run_dir in (str(damaged_run), bucket):
        resume = find_resume_checkpoint(RunDir.at(run_dir))
        assert (resume.path, resume.step) == (storage.join(run_dir, "checkpoint_000000004"), 4)
        assert resume.skipped == expected_skips

    model, optimizer, scheduler = make_training_state(seed=1)
    state = load_checkpoint(
        damaged_run / "checkpoint_000000004", Trainables(model, optimizer, scheduler), rank=0
    )
    assert (state.step, state.consumed_samples) == (4, 64)
    torch.testing.assert_close(model.state_dict(), make_training_state(seed=0)[0].state_dict())


def test_a_run_without_an_intact_checkpoint_starts_at_step_0(tmp_path):
    save_checkpoints(tmp_path / "run", [3])
    optimizer_file = tmp_path / "run" / checkpoint_name(3) / OPTIMIZER_FILE
    size = optimizer_file.stat().st_size
    os.truncate(optimizer_file, 10)
    resume = find_resume_checkpoint(RunDir.at(tmp_path / "run"))
    assert (resume.path, resume.step) == (None, 0)
    assert resume.skipped == [("checkpoint_000000003", f"optimizer.pt is 10 bytes, not {size:,}")]
    assert find_resume_checkpoint(RunDir.at(tmp_path / "no-run")) == ResumePoint(None, 0, [])


def test_after_a_finished_run_the_newest_intact_checkpoints_stay_and_the_rest_go(damaged_run):
    assert sorted(prune_checkpoints(RunDir.at(damaged_run), keep=1)) == [
        "checkpoint_000000002",
        "checkpoint_000000006",
        "checkpoint_000000008",
        "checkpoint_000000010",
    ]
    assert sorted(os.listdir(damaged_run)) == ["checkpoint_000000004"]


def test_a_file_damaged_inside_is_a_user_error_naming_it(tmp_path):
    save_checkpoints(tmp_path, [5])
    directory = tmp_path / checkpoint_name(5)
    optimizer_file = directory / OPTIMIZER_FILE
    size = optimizer_file.stat().st_size
    optimizer_file.write_bytes(b"\0" * size)  # the size recorded still matches: only loading finds it
    assert find_resume_checkpoint(RunDir.at(tmp_path)).step == 5
    model, optimizer, scheduler = make_training_state()
    with pytest.raises(UserError, match=r"checkpoint checkpoint_000000005: optimizer.pt cannot be read"):
        load_checkpoint(directory, Trainables(model, optimizer, scheduler), rank=0)


def test_a_checkpoint_of_another_model_size_is_refused_before_any_worker_starts(tmp_path):
    save_checkpoints(tmp_path, [1])
    path = str(tmp_path / checkpoint_name(1))
    check_resumable(path, BertConfig.from_preset("tiny", vocab_size=VOCAB, num_hidden_layers=1))
    with pytest.raises(UserError, match="hidden_size 128 there vs 256 now") as error:
        check_resumable(path, BertConfig.from_preset("mini", vocab_size=VOCAB))
    assert "another checkpoint.run_name" in str(error.value)


def test_a_worker_user_error_ends_the_run_at_the_first_failure():
    """What Ray Train's controller hands the callback when it is about to restart the workers."""
    bad = UserError("checkpoint checkpoint_000000005: optimizer.pt cannot be read")
    worker_error = WorkerGroupError("rank 1 failed", {1: UserExceptionWithTraceback(bad, "Traceback ...")})
    other_error = WorkerGroupError("rank 0 failed", {0: UserExceptionWithTraceback(OSError("lost"), "")})
    assert user_error_in(worker_error) is bad
    assert user_error_in(ControllerError(bad)) is bad
    assert user_error_in(other_error) is None

    callback = StopOnUserError()
    callback.after_controller_state_update(None, RestartingState(other_error))  # retried as usual
    with pytest.raises(UserError) as raised:
        callback.after_controller_state_update(None, RestartingState(worker_error))
    assert raised.value is bad
