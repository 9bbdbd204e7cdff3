"""What `train` refuses before Ray Train starts: prepared data it did not make (left byte for byte as it was),
and settings every worker would fail on; and a worker error that no restart can cure, which ends the run at
the first failure instead of after `checkpoint.max_failures` restarts."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

import data
from common import storage
from common.errors import UserError
from data import PrepareConfig, TokenizerConfig
from model import BertConfig, BertForPreTraining
from orchestrator.config import load_config
from orchestrator.run_dir import checkpoint_name
from orchestrator.train.checkpoints import (
    OPTIMIZER_FILE,
    TRAIN_STATE_FILE,
    ResumePoint,
    Trainables,
    TrainState,
    rng_state,
    save_checkpoint,
)
from orchestrator.train.driver import train
from orchestrator.train.optim import build_optimizer, build_scheduler
from orchestrator.train.preflight import (
    PREPARED_MARKER_FILE,
    check_resume_keeps_order,
    ensure_prepared_data,
)
from tests.orchestrator.conftest import make_job, save_donor, write_corpus
from tests.orchestrator.reports import ReportRecorder, read_failures

REFUSED_WITHIN_S = 60  # a "no Ray Train, no retries" bound on a loaded 2-core machine


def checksums(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def foreign_prepared(tmp_path_factory, ray_session) -> Path:
    """Data prepared by `prepare` (not `train`) from another corpus, with another tokenizer."""
    root = tmp_path_factory.mktemp("foreign")
    corpus = [str(write_corpus(root / "other.txt", documents=40, seed=7))]
    data.train_tokenizer(corpus, str(root / "tokenizer"), TokenizerConfig(vocab_size=150, min_frequency=1))
    data.prepare(corpus, str(root / "tokenizer"), str(root / "prepared"), PrepareConfig(max_seq_length=48))
    return root / "prepared"


def test_prepared_data_that_train_did_not_make_is_refused_and_left_as_it_was(
    tmp_path, prepared_corpus, foreign_prepared
):
    before = checksums(foreign_prepared)
    job = make_job(tmp_path, {**prepared_corpus["data"], "prepared_dir": str(foreign_prepared)})
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        train(job)
    assert time.monotonic() - started < REFUSED_WITHIN_S
    message = str(error.value)
    assert "holds prepared data that this run did not make" in message
    assert "max_seq_length 48 there, 32 here" in message
    assert "made with another tokenizer than the one in" in message
    assert "made from corpus" in message
    assert "Set data.prepared_dir to another folder" in message and "data.rebuild=true" in message
    assert checksums(foreign_prepared) == before
    assert not (tmp_path / "runs").exists()


def test_data_rebuild_replaces_it_with_this_runs_data(tmp_path, prepared_corpus, foreign_prepared):
    copy = tmp_path / "prepared"
    storage.copy_dir(str(foreign_prepared), str(copy))
    job = make_job(tmp_path, {**prepared_corpus["data"], "prepared_dir": str(copy), "rebuild": True})
    manifest = ensure_prepared_data(job)
    assert manifest.settings.max_seq_length == 32
    assert manifest.tokenizer_hash == data.tokenizer_hash(prepared_corpus["data"]["tokenizer_dir"])
    assert (copy / PREPARED_MARKER_FILE).is_file()
    # Made by `train` now: a change of settings rebuilds it without asking again.
    job = make_job(
        tmp_path, {**prepared_corpus["data"], "prepared_dir": str(copy), "prepare": {"max_seq_length": 24}}
    )
    assert ensure_prepared_data(job).settings.max_seq_length == 24


def test_a_run_started_from_a_checkpoint_never_trains_its_donors_tokenizer_again(tmp_path, prepared_corpus):
    """The donor's tokenizer, built by its run's `train`, is the new run's whatever its recipe's tokenizer
    settings say (a decay or context phase's recipe has none of its own): training it again would change the
    ids that index the donor's embeddings, under the donor run's own prepared data."""
    tokenizer = tmp_path / "tokenizer"
    storage.copy_dir(prepared_corpus["data"]["tokenizer_dir"], str(tokenizer))
    before = checksums(tokenizer)
    other_settings = {
        **prepared_corpus["data"],
        "tokenizer_dir": str(tokenizer),
        "prepared_dir": str(tmp_path / "prepared"),
        "tokenizer": {"vocab_size": 120, "min_frequency": 1},
    }
    job = make_job(
        tmp_path, other_settings, checkpoint={"init_from": str(tmp_path / "donor/checkpoint_000000004")}
    )
    manifest = ensure_prepared_data(job)
    assert checksums(tokenizer) == before
    assert manifest.tokenizer_hash == data.tokenizer_hash(str(tokenizer))
    # Without --init-from, the same settings do train it again: the case above really differed.
    ensure_prepared_data(make_job(tmp_path, {**other_settings, "prepared_dir": str(tmp_path / "prepared2")}))
    assert checksums(tokenizer) != before


def test_a_sequence_longer_than_the_models_positions_is_refused_before_anything_is_built(
    tmp_path, prepared_corpus
):
    settings = {**prepared_corpus["data"], "prepared_dir": str(tmp_path / "prepared")}
    with pytest.raises(UserError, match="max_seq_length is 100000; use 8 to 512"):  # no preset has more
        make_job(tmp_path, {**settings, "prepare": {"max_seq_length": 100_000}})
    donor = save_donor(tmp_path / "donor")  # 64 positions
    job = make_job(
        tmp_path,
        {**settings, "tokenizer_dir": "", "prepare": {"max_seq_length": 128}},
        model={"preset": "auto"},
        checkpoint={"init_from": str(donor)},
    )
    started = time.monotonic()
    with pytest.raises(
        UserError, match=r"max_seq_length=128 is longer than --init-from .*donor has positions \(64\)"
    ):
        train(job)
    assert time.monotonic() - started < REFUSED_WITHIN_S
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "runs").exists()


def test_a_wsd_decay_longer_than_a_token_budget_is_refused_before_ray_train_starts(tmp_path, prepared_corpus):
    """With train.max_tokens the steps are known once the data is: the driver checks the decay fits then."""
    job = make_job(
        tmp_path,
        prepared_corpus["data"],
        train={"max_steps": None, "max_tokens": 1000},
        optim={"schedule": "wsd", "decay_steps": 500},
    )
    started = time.monotonic()
    with pytest.raises(UserError) as refused:
        train(job)
    assert time.monotonic() - started < REFUSED_WITHIN_S
    assert "+ the wsd decay (500 steps) exceed the run's" in str(refused.value)
    assert str(refused.value).endswith("(train.max_tokens=1,000)")


def test_a_checkpoint_damaged_inside_fails_the_run_once_naming_the_file(tmp_path, prepared_corpus):
    """The sizes and the recorded SHA-256 match (the damage was done before they were recorded), so only
    loading it finds the damage: in every worker, at every restart."""
    job = make_job(tmp_path, prepared_corpus["data"], checkpoint={"max_failures": 3})
    vocab_size = data.load_manifest(job.data.prepared_dir).vocab_size
    model = BertForPreTraining(BertConfig.from_preset("tiny", vocab_size=vocab_size))
    optimizer = build_optimizer(model, job.optim)
    directory = Path(job.checkpoint.storage_path, job.checkpoint.run_name, checkpoint_name(2))
    scheduler = build_scheduler(optimizer, job.optim, 4)
    save_checkpoint(
        directory, Trainables(model, optimizer, scheduler), TrainState(step=2), [rng_state()], job.to_dict()
    )
    optimizer_file = directory / OPTIMIZER_FILE
    optimizer_file.write_bytes(b"\0" * optimizer_file.stat().st_size)
    state_file = directory / TRAIN_STATE_FILE
    state = json.loads(state_file.read_text())
    state["checksums"][OPTIMIZER_FILE] = hashlib.sha256(optimizer_file.read_bytes()).hexdigest()
    state_file.write_text(json.dumps(state))

    with pytest.raises(UserError, match="checkpoint checkpoint_000000002: optimizer.pt cannot be read"):
        train(job, callbacks=[ReportRecorder(tmp_path / "reports.jsonl")])
    assert len(read_failures(tmp_path / "reports.jsonl")) == 1  # no restart


def test_a_checkpoint_from_before_the_batch_warmup_resumes_and_refuses_one_being_added():
    """A checkpoint whose saved config has no train.batch_size_warmup (an earlier version) had none: it
    resumes as it is, and a warmup added on resume is refused (it would read other examples)."""
    job = load_config("debug")
    saved = job.to_dict()
    del saved["train"]["batch_size_warmup"]
    resume = ResumePoint("runs/debug/checkpoint_000000004", 4, [], {"step": 4, "config": saved})
    check_resume_keeps_order(job, resume)
    warmup = ["train.batch_size_warmup.start=8", "train.batch_size_warmup.tokens=1000"]
    with pytest.raises(UserError) as refused:
        check_resume_keeps_order(load_config("debug", warmup), resume)
    assert "trained with train.batch_size_warmup={'start': 0, 'tokens': 0}" in str(refused.value)
