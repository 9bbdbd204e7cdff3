"""Downstream probes during pretraining (`train.probes`): the settings, the sets read before the run starts,
and the linear probe's scores on a tiny model, in one process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import UserError
from data import TokenizerConfig, load_tokenizer, train_tokenizer
from data.labelled import Fields, load_labelled_data
from model import BertForPreTraining, ModernBertConfig, ModernBertForPreTraining
from orchestrator.config import config_from_dict
from orchestrator.train.probes import fit_ridge, load_probes, probe_scores, with_bias
from tests.orchestrator.conftest import save_random_model
from tests.orchestrator.finetune.conftest import labelled_rows, write_csv, write_jsonl

BASE = {"train": {"max_steps": 10, "eval_every": 5}, "mlflow": {"enabled": False}}


@pytest.fixture(scope="module")
def probe_set(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("probe")
    train_rows, eval_rows = labelled_rows(192, seed=1), labelled_rows(64, seed=2)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(row["text"] for row in train_rows + eval_rows) + "\n")
    tokenizer_dir = train_tokenizer(
        [str(corpus)], str(root / "tokenizer"), TokenizerConfig(vocab_size=200, min_frequency=1)
    )
    return {
        "root": root,
        "tokenizer_dir": tokenizer_dir,
        "train": str(write_csv(root / "train.csv", train_rows)),
        "eval": str(write_jsonl(root / "eval.jsonl", eval_rows)),
    }


def job_with_probes(probe_set: dict, *probes: dict):
    raw = {**BASE, "data": {"tokenizer_dir": probe_set["tokenizer_dir"]}}
    raw["train"] = {**BASE["train"], "probes": list(probes)}
    return config_from_dict(raw)


def test_probes_are_settings_of_train(probe_set):
    job = job_with_probes(probe_set, {"name": "subject", "train": "a.csv", "eval": "b.jsonl", "every": 2})
    [probe] = job.train.probes
    assert (probe.name, probe.every, probe.text_field, probe.label_field) == ("subject", 2, "text", "label")
    with pytest.raises(UserError, match=r"train.probes\[0\].name must be a name without '/'"):
        job_with_probes(probe_set, {"train": "a.csv", "eval": "b.jsonl"})
    with pytest.raises(UserError, match="a probe needs both train and eval"):
        job_with_probes(probe_set, {"name": "subject", "train": "a.csv"})
    twice = {"name": "subject", "train": "a.csv", "eval": "b.jsonl"}
    with pytest.raises(UserError, match="train.probes must have different names"):
        job_with_probes(probe_set, twice, twice)


def test_a_probe_set_with_a_missing_field_is_refused_when_read(probe_set):
    job = job_with_probes(
        probe_set,
        {"name": "subject", "train": probe_set["train"], "eval": probe_set["eval"], "label_field": "y"},
    )
    with pytest.raises(UserError, match=r"train.csv: row 1 has no field 'y' \(its fields: text, label\)"):
        load_probes(job, max_positions=64)
    good = job_with_probes(
        probe_set, {"name": "subject", "train": probe_set["train"], "eval": probe_set["eval"]}
    )
    [probe] = load_probes(good, max_positions=64)
    assert probe.every == 5  # train.eval_every
    assert probe.data.label_names == ["animal", "person"]


def test_the_ridge_probe_separates_what_is_linearly_separable():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=300)
    features = rng.normal(size=(300, 8)) + np.eye(8)[labels] * 3.0  # class c lifts feature c
    weights = fit_ridge(features, labels, 3)
    accuracy = np.mean(with_bias(features, features).dot(weights).argmax(axis=1) == labels)
    assert accuracy >= 0.9


def test_probe_scores_of_a_tiny_model(probe_set, tmp_path):
    model_dir = save_random_model(tmp_path / "model", probe_set["tokenizer_dir"], seed=0)
    encoder = BertForPreTraining.from_hf(model_dir).bert
    tokenizer = load_tokenizer(probe_set["tokenizer_dir"])
    data = load_labelled_data(
        probe_set["train"], probe_set["eval"], Fields(), "classification", tokenizer, 64
    )
    encoder.train()
    scores = probe_scores(encoder, data, batch_size=16, device=torch.device("cpu"))
    assert set(scores) == {"accuracy", "f1_macro"}
    assert encoder.training  # left as it was
    assert scores == probe_scores(encoder, data, batch_size=64, device=torch.device("cpu"))  # deterministic
    assert scores["accuracy"] >= 0.7  # the subject's words reach [CLS] even through random layers


def test_a_modernbert_encoder_is_probed_as_berts_is(probe_set):
    """The probe reads the encoder's [CLS] vectors through the call both families share (`encode`); a
    ModernBERT encoder has no pooler."""
    tokenizer = load_tokenizer(probe_set["tokenizer_dir"])
    torch.manual_seed(0)
    config = ModernBertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        local_attention=16,
        pad_token_id=tokenizer.token_to_id("[PAD]"),
    )
    encoder = ModernBertForPreTraining(config).bert
    data = load_labelled_data(
        probe_set["train"], probe_set["eval"], Fields(), "classification", tokenizer, 64
    )
    scores = probe_scores(encoder, data, batch_size=16, device=torch.device("cpu"))
    assert set(scores) == {"accuracy", "f1_macro"}
    assert scores == probe_scores(encoder, data, batch_size=64, device=torch.device("cpu"))
    majority = max(np.unique(data.eval.labels, return_counts=True)[1]) / len(data.eval.labels)
    assert scores["accuracy"] > majority
