"""Continued pretraining from an HF BERT of a shape no preset has: the checkpoint decides the model and the
tokenizer, heads load when present, a padded vocabulary loads, and a run through Ray Train exports a model
that transformers loads with the donor's sizes (unchanged at lr 0; better on the held-out split at a normal
lr). Donors are made by transformers itself, with a WordPiece tokenizer saved beside them. A decay phase
started from one of our checkpoints goes on with its optimizer state (checkpoint.init_optimizer_state)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import transformers
from mlflow import MlflowClient

from common.errors import UserError
from model import BertConfig, BertForPreTraining
from orchestrator.config import OptimConfig, config_from_dict
from orchestrator.run_dir import RunDir, checkpoint_name
from orchestrator.train.checkpoints import (
    OPTIMIZER_FILE,
    SCHEDULER_FILE,
    Trainables,
    TrainState,
    init_optimizer_state_from,
    init_weights_from,
    rng_state,
    save_checkpoint,
)
from orchestrator.train.driver import train
from orchestrator.train.init_from import adopt_donor, model_config, read_donor
from orchestrator.train.optim import build_optimizer, build_scheduler
from tests.orchestrator.conftest import (
    DONOR_SHAPE,
    HF_CLASSES,
    SPECIALS,
    VOCAB,
    WORDS,
    save_donor,
    write_corpus,
)


def continue_job(root: Path, donor: Path, **sections: dict):
    """A continued-pretraining job as configs/continue.yaml sets it up (MLM only, the donor's tokenizer)."""
    raw = {
        "model": {"preset": "auto", "use_nsp": False, "dropout": 0.0},
        "data": {
            "corpus": [str(write_corpus(root / "corpus.txt", documents=48, seed=5))],
            "tokenizer_dir": "",
            "prepared_dir": str(root / "prepared"),
            "prepare": {
                "objective": "mlm",
                "documents": "blank-line",
                "max_seq_length": 32,
                "eval_fraction": 0.15,
            },
        },
        "train": {"global_batch_size": 8, "micro_batch_size": 8, "max_steps": 2, "log_every": 1},
        "optim": {"lr": 0.0},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "data_cpus": 1},
        "checkpoint": {"storage_path": str(root / "runs"), "run_name": "continue", "init_from": str(donor)},
        "mlflow": {"enabled": False},
    }
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    return config_from_dict(raw)


@pytest.mark.parametrize("kind", list(HF_CLASSES))
def test_the_donor_decides_the_model_and_its_heads_load_when_present(tmp_path, kind):
    donor_dir = save_donor(tmp_path / kind, kind)
    donor = read_donor(str(donor_dir))
    assert {name: getattr(donor.config, name) for name in DONOR_SHAPE} == DONOR_SHAPE
    assert donor.tokenizer_dir == str(donor_dir)
    assert (donor.has_mlm_head, donor.has_nsp_head) == (kind != "BertModel", kind == "BertForPreTraining")

    job = adopt_donor(continue_job(tmp_path, donor_dir), donor)
    config = model_config(job, len(VOCAB), {"pad": 0}, donor)
    assert (config.num_hidden_layers, config.hidden_size, config.max_position_embeddings) == (3, 96, 64)
    torch.manual_seed(1)
    model = BertForPreTraining(config).eval()
    fresh = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    init_weights_from(model, donor_dir)

    hf = HF_CLASSES[kind].from_pretrained(donor_dir).eval()
    encoder = hf if kind == "BertModel" else hf.bert
    input_ids = torch.randint(5, len(VOCAB), (2, 12))
    with torch.no_grad():
        ours, _ = model.bert(input_ids)
        theirs = encoder(input_ids=input_ids).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    state = model.state_dict()
    if kind == "BertModel":  # no MLM head: BERT's initialisation, normal(0, 0.02)
        assert 0.015 < state["mlm_transform.weight"].std() < 0.025
    else:
        expected = hf.cls.predictions.transform.dense.weight
        torch.testing.assert_close(state["mlm_transform.weight"], expected)
    nsp_loaded = not torch.equal(state["nsp_head.weight"], fresh["nsp_head.weight"])
    assert nsp_loaded == (kind == "BertForPreTraining")


def test_a_padded_vocabulary_loads_and_the_export_has_the_tokenizer_size(tmp_path):
    donor_dir = save_donor(tmp_path / "padded", padded_rows=6)  # as NVIDIA pads 30,522 rows to 30,528
    donor = read_donor(str(donor_dir))
    assert donor.config.vocab_size == len(VOCAB) + 6
    model = BertForPreTraining(model_config(continue_job(tmp_path, donor_dir), len(VOCAB), {"pad": 0}, donor))
    init_weights_from(model, donor_dir)
    hf = transformers.BertForPreTraining.from_pretrained(donor_dir)
    torch.testing.assert_close(
        model.bert.embeddings.word.weight[: len(VOCAB)],
        hf.bert.embeddings.word_embeddings.weight[: len(VOCAB)],
    )
    model.save_hf(tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["vocab_size"] == len(VOCAB)
    exported = transformers.BertForPreTraining.from_pretrained(tmp_path / "export")
    assert exported.config.vocab_size == len(VOCAB)

    with pytest.raises(UserError, match=f"the tokenizer has {len(VOCAB) + 7} tokens but --init-from"):
        model_config(continue_job(tmp_path, donor_dir), len(VOCAB) + 7, {"pad": 0}, donor)


def test_a_preset_or_tokenizer_that_contradicts_the_donor_is_refused_before_ray_starts(tmp_path):
    donor_dir = save_donor(tmp_path / "donor")
    job = continue_job(tmp_path, donor_dir, model={"preset": "tiny"})
    with pytest.raises(UserError) as refused:
        train(job)
    message = str(refused.value)
    assert "model.preset=tiny (num_hidden_layers 2, hidden_size 128" in message
    assert "(num_hidden_layers 3, hidden_size 96, num_attention_heads 4, intermediate_size 160)" in message

    other = tmp_path / "other-tokenizer"
    other.mkdir()
    (other / "vocab.txt").write_text("\n".join(SPECIALS + WORDS[::-1]) + "\n")  # same tokens, other ids
    job = continue_job(tmp_path, donor_dir, data={"tokenizer_dir": str(other)})
    with pytest.raises(UserError, match="is not the tokenizer of --init-from .* drop data.tokenizer_dir"):
        train(job)
    cased = save_donor(tmp_path / "cased")
    config = json.loads((cased / "tokenizer_config.json").read_text()) | {"do_lower_case": False}
    (cased / "tokenizer_config.json").write_text(json.dumps(config))
    (cased / "tokenizer.json").unlink()  # vocab.txt + do_lower_case: a cased tokenizer of the same tokens
    with pytest.raises(UserError, match="its vocabulary or casing differ"):
        adopt_donor(
            continue_job(tmp_path, donor_dir, data={"tokenizer_dir": str(cased)}), read_donor(str(donor_dir))
        )

    same = adopt_donor(
        continue_job(tmp_path, donor_dir, data={"tokenizer_dir": str(donor_dir)}), read_donor(str(donor_dir))
    )
    assert same.data.tokenizer_dir == str(donor_dir)
    assert not (tmp_path / "runs").exists()  # nothing ran


@pytest.fixture(scope="module")
def donor_dir(tmp_path_factory) -> Path:
    return save_donor(tmp_path_factory.mktemp("donor") / "model", "BertForPreTraining", seed=3)


def test_continued_at_lr_0_the_export_is_the_donor(tmp_path, donor_dir, ray_session):
    job = continue_job(tmp_path, donor_dir)
    result = train(job)
    final = Path(result.final_dir)
    exported = transformers.BertForPreTraining.from_pretrained(final).eval()
    assert {name: getattr(exported.config, name) for name in DONOR_SHAPE} == DONOR_SHAPE
    assert exported.config.vocab_size == len(VOCAB)
    assert (final / "vocab.txt").read_text().split() == VOCAB
    donor = transformers.BertForPreTraining.from_pretrained(donor_dir).eval()
    input_ids = torch.randint(5, len(VOCAB), (3, 20))
    with torch.no_grad():
        ours = exported.bert(input_ids=input_ids).last_hidden_state
        theirs = donor.bert(input_ids=input_ids).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert RunDir.at(result.run_dir).read_run_json()["config"]["data"]["tokenizer_dir"] == str(donor_dir)


def test_continued_pretraining_lowers_the_held_out_loss_and_mlflow_records_the_donor(
    tmp_path, donor_dir, ray_session
):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = continue_job(
        tmp_path,
        donor_dir,
        train={"max_steps": 12, "eval_every": 12, "log_every": 4},
        optim={"lr": 2e-3, "warmup_steps": 2},
        mlflow={"enabled": True, "tracking_uri": tracking_uri},
    )
    job = dataclasses.replace(job, checkpoint=dataclasses.replace(job.checkpoint, every=12))
    result = train(job)
    client = MlflowClient(tracking_uri)
    run_id = RunDir.at(result.run_dir).read_run_json()["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.data.tags["init_from"] == str(donor_dir)
    expected_hash = read_donor(str(donor_dir)).config_hash
    assert run.data.tags["init_from_config_hash"] == expected_hash
    history = {m.step: m.value for m in client.get_metric_history(run_id, "2-eval/mlm_loss")}
    assert sorted(history) == [0, 12]  # the donor's own score first, before any step
    assert history[12] < history[0]


def train_a_little(model, optimizer, scheduler=None, steps: int = 3, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for parameter in model.parameters():
            parameter.grad = torch.randn(parameter.shape, generator=generator)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def main_phase_checkpoint(directory: Path, optimizer_name: str, use_nsp: bool = False):
    """One of our training checkpoints after 3 updates, as a main phase leaves it; its model and optimizer."""
    torch.manual_seed(0)
    model = BertForPreTraining(
        BertConfig.from_preset("tiny", vocab_size=len(VOCAB), num_hidden_layers=1, use_nsp=use_nsp)
    )
    config = OptimConfig(name=optimizer_name, lr=1e-3)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, 10)
    train_a_little(model, optimizer, scheduler)
    job = {"optim": {"name": optimizer_name}, "model": {"use_nsp": use_nsp}}
    trainables = Trainables(model, optimizer, scheduler)
    save_checkpoint(directory, trainables, TrainState(step=3), [rng_state()], job)
    return model, optimizer


@pytest.mark.parametrize("name", ["stableadamw", "adamw"])
def test_the_optimizer_state_carried_goes_on_as_the_main_phase_would_with_the_runs_own_lr(tmp_path, name):
    model, optimizer = main_phase_checkpoint(tmp_path / "checkpoint_3", name)
    decay_model = BertForPreTraining(model.config)
    init_weights_from(decay_model, tmp_path / "checkpoint_3")
    decay_optimizer = build_optimizer(decay_model, OptimConfig(name=name, lr=5e-4, weight_decay=0.05))
    init_optimizer_state_from(decay_optimizer, tmp_path / "checkpoint_3")
    # The run's own settings, not the donor's.
    assert [group["lr"] for group in decay_optimizer.param_groups] == [5e-4, 5e-4]
    assert [group["weight_decay"] for group in decay_optimizer.param_groups] == [0.05, 0.0]

    for group in optimizer.param_groups:  # the main phase going on with the decay phase's settings
        group["lr"], group["weight_decay"] = 5e-4, 0.05 if group["weight_decay"] else 0.0
    train_a_little(model, optimizer, seed=1)
    train_a_little(decay_model, decay_optimizer, seed=1)
    expected = model.state_dict()
    for key, ours in decay_model.state_dict().items():
        assert torch.equal(ours, expected[key]), key


def test_an_optimizer_state_of_other_parameters_is_refused(tmp_path):
    main_phase_checkpoint(tmp_path / "with_nsp", "stableadamw", use_nsp=True)
    model = BertForPreTraining(
        BertConfig.from_preset("tiny", vocab_size=len(VOCAB), num_hidden_layers=1, use_nsp=False)
    )
    optimizer = build_optimizer(model, OptimConfig(name="stableadamw"))
    with pytest.raises(UserError, match="its optimizer state is for other parameters"):
        init_optimizer_state_from(optimizer, tmp_path / "with_nsp")


def test_an_optimizer_state_the_run_cannot_take_is_refused_before_ray_starts(tmp_path, donor_dir, capsys):
    checkpoint = tmp_path / "checkpoint_3"
    main_phase_checkpoint(checkpoint, "stableadamw")
    carry = {"init_optimizer_state": True}

    def adopt(donor: Path, **sections):
        job = continue_job(tmp_path, donor, **sections)
        job = dataclasses.replace(job, checkpoint=dataclasses.replace(job.checkpoint, **carry))
        return adopt_donor(job, read_donor(str(donor)))

    with pytest.raises(UserError, match=r"holds no optimizer state \(an HF folder or a run's final/"):
        adopt(donor_dir, optim={"name": "stableadamw"})
    with pytest.raises(UserError, match="holds the state of optim.name=stableadamw, this run uses adamw"):
        adopt(checkpoint, optim={"name": "adamw"})
    main_phase_checkpoint(tmp_path / "with_nsp", "stableadamw", use_nsp=True)
    with pytest.raises(UserError, match="was trained with model.use_nsp=true, so its optimizer state is for"):
        adopt(tmp_path / "with_nsp", optim={"name": "stableadamw"})
    adopt(checkpoint, optim={"name": "stableadamw"})
    said = capsys.readouterr().out
    assert f"Taking the optimizer state of --init-from {checkpoint} as well (stableadamw)" in said


def test_a_stable_main_phase_then_its_own_1_sqrt_decay_phase_with_the_optimizer_state_through_ray(
    tmp_path, donor_dir, ray_session
):
    """ModernBERT's recipe: StableAdamW at the peak lr to the main phase's end, then a decay run started
    from its checkpoint with its optimizer state, decaying from the peak to 0."""
    wsd = {"name": "stableadamw", "lr": 1e-3, "schedule": "wsd"}

    def phase(donor: Path, name: str, steps: int, optim: dict, **checkpoint):
        job = continue_job(tmp_path, donor, train={"max_steps": steps}, optim={**wsd, **optim})
        settings = {"run_name": name, "every": steps, **checkpoint}
        return train(dataclasses.replace(job, checkpoint=dataclasses.replace(job.checkpoint, **settings)))

    main = phase(donor_dir, "main", 3, {"warmup_steps": 1, "decay_steps": 0})
    main_checkpoint = Path(main.run_dir) / checkpoint_name(3)
    main_lrs = torch.load(main_checkpoint / SCHEDULER_FILE, weights_only=True)["_last_lr"]
    assert main_lrs == [1e-3, 1e-3]  # no decay in the main phase: the peak to its end
    decay_schedule = {"decay_fraction": 1.0, "decay_shape": "1-sqrt"}
    decay = phase(main_checkpoint, "decay", 2, decay_schedule, init_optimizer_state=True)
    decay_checkpoint = Path(decay.run_dir) / checkpoint_name(2)
    state = torch.load(decay_checkpoint / OPTIMIZER_FILE, weights_only=True)["state"]
    steps = {float(tensor_state["step"]) for tensor_state in state.values()}
    assert steps == {5.0}  # the main phase's 3 carried, then 2 of its own
    assert torch.load(decay_checkpoint / SCHEDULER_FILE, weights_only=True)["_last_lr"] == [0.0, 0.0]
