"""The fine-tuning step's loss accounting, in one process: micro-batches (with a stand-in for an empty one)
make exactly the update of the one big batch, for classification and regression."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from data.labelled import TokenizedSplit
from model import BertConfig, BertForSequenceClassification
from orchestrator.finetune.worker import ClassifierStep
from orchestrator.train.checkpoints import Trainables

CONFIG = BertConfig(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def split_of(labels: np.ndarray) -> TokenizedSplit:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 12, size=len(labels))
    ids = rng.integers(5, CONFIG.vocab_size, size=int(lengths.sum())).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return TokenizedSplit(ids, np.zeros_like(ids, dtype=np.int8), offsets, labels, truncated=0)


def trained_weights(
    num_labels: int, split: TokenizedSplit, parts: list[list[int]]
) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = BertForSequenceClassification(CONFIG, num_labels)
    # Plain SGD: the change of the weights is the gradient (Adam's first step is about lr * sign(gradient),
    # which would magnify the rounding of gradients near zero).
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    step = ClassifierStep(Trainables(model, optimizer, scheduler), max_grad_norm=0.0)
    micro_batches = []
    for rows in parts:
        batch = split.batch(np.array(rows or [0]), pad_token_id=0)
        if not rows:  # a stand-in: one example that counts nothing
            batch["labels"] = np.full_like(batch["labels"], np.nan if num_labels == 1 else -100)
        micro_batches.append({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()})
    sums = step(micro_batches)["sums"]
    assert sums[2].item() == sum(len(rows) for rows in parts)  # examples counted
    return copy.deepcopy(model.state_dict())


@pytest.mark.parametrize("num_labels", [3, 1])
def test_micro_batches_make_the_update_of_the_big_batch(num_labels):
    labels = np.array([0, 2, 1, 1, 0, 2]) if num_labels == 3 else np.linspace(-1, 1, 6).astype(np.float32)
    split = split_of(labels)
    whole = trained_weights(num_labels, split, [[0, 1, 2, 3, 4, 5]])
    parts = trained_weights(num_labels, split, [[0, 1], [2, 3, 4], [], [5]])
    for name, tensor in whole.items():
        torch.testing.assert_close(parts[name], tensor, atol=1e-6, rtol=1e-5, msg=name)
