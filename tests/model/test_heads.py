"""The sequence-classification head: the numbers of transformers' BertForSequenceClassification through its
own HF export, and the loss accounting of fine-tuning (sums over a global batch, stand-ins that count
nothing)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from common.batch import IGNORE_INDEX
from model import BertConfig, BertForSequenceClassification

CONFIG = BertConfig(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)


def padded_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, CONFIG.vocab_size, (4, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[0, 5:] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


@pytest.mark.parametrize("num_labels", [3, 1])
def test_export_loads_in_transformers_with_the_same_outputs(tmp_path, num_labels):
    torch.manual_seed(0)
    model = BertForSequenceClassification(CONFIG, num_labels).eval()
    names = ["negative", "neutral", "positive"] if num_labels == 3 else None
    model.save_hf(tmp_path, names)
    theirs = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    batch = padded_batch()
    with torch.no_grad():
        ours_logits = model(**batch).logits
        their_logits = theirs(**batch).logits
    torch.testing.assert_close(ours_logits, their_logits, atol=1e-5, rtol=1e-4)
    config = json.loads((tmp_path / "config.json").read_text())
    if num_labels == 3:
        assert theirs.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
        assert config["problem_type"] == "single_label_classification"
    else:
        assert config["problem_type"] == "regression"


def test_loss_matches_transformers_mean_loss():
    torch.manual_seed(0)
    model = BertForSequenceClassification(CONFIG, 3).eval()
    batch = padded_batch()
    labels = torch.tensor([0, 2, 1, 2])
    ours = model(**batch, labels=labels).loss
    expected = torch.nn.functional.cross_entropy(model(**batch).logits, labels)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("num_labels", [3, 1])
def test_stand_in_examples_count_nothing(num_labels):
    """Split into two micro-batches normalised by the global count, the losses add up to the one big batch's;
    a stand-in example (label IGNORE_INDEX or NaN) adds nothing, nor any gradient."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(CONFIG, num_labels).eval()
    batch = padded_batch()
    labels = torch.tensor([0, 2, 1, 2]) if num_labels == 3 else torch.tensor([0.5, -1.0, 2.0, 0.0])
    whole = model(**batch, labels=labels).loss
    halves = [{k: v[part] for k, v in batch.items()} for part in (slice(0, 2), slice(2, 4))]
    split = sum(
        model(**half, labels=labels[part], normalizer=4).loss
        for half, part in zip(halves, (slice(0, 2), slice(2, 4)), strict=True)
    )
    torch.testing.assert_close(split, whole)
    stand_in = torch.full((1,), IGNORE_INDEX) if num_labels == 3 else torch.full((1,), float("nan"))
    out = model(**{k: v[:1] for k, v in batch.items()}, labels=stand_in, normalizer=4)
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
