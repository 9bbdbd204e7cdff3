"""Downstream probes during pretraining: how well a linear classifier on the frozen encoder's [CLS] vector
separates a labelled task, every few steps (`train.probes`).

The driver reads, checks and tokenizes each probe's labelled sets once (`data.labelled`, the reader of
`finetune`), with the run's tokenizer, before Ray Train starts: a bad set is a UserError within seconds. On a
probe step every rank computes the [CLS] vectors of its slice of both sets, the vectors are gathered, and a
ridge-regularised least-squares classifier (one-hot targets, standardised features, closed form in NumPy) is
fitted on the training set and scored on the eval set: accuracy and macro-F1 as `probe/<name>/...`. It is
deterministic and takes no optimizer steps, so a probe's curve shows what the representation alone holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from data import batch_slices, load_tokenizer
from data.labelled import Fields, LabelledData, TokenizedSplit, load_labelled_data
from model import BertModel
from orchestrator.config import JobConfig, ProbeConfig
from orchestrator.finetune.metrics import classification_scores
from orchestrator.train.step import autocast, world_size

RIDGE = 1.0
"""The L2 penalty of the probe's least squares (on standardised features)."""


@dataclass(frozen=True)
class ProbeData:
    config: ProbeConfig
    every: int
    """Steps between probes (the probe's `every`, else train.eval_every); 0: never."""
    data: LabelledData


def load_probes(config: JobConfig, max_positions: int) -> tuple[ProbeData, ...]:
    """Each probe's sets, read and tokenized with the run's tokenizer (see the module docstring)."""
    if not config.train.probes:
        return ()
    tokenizer = load_tokenizer(config.data.tokenizer_dir)
    tokenizer.no_padding()
    probes = []
    for probe in config.train.probes:
        fields = Fields(probe.text_field, probe.pair_field, probe.label_field)
        length = min(probe.max_seq_length, max_positions)
        data = load_labelled_data(probe.train, probe.eval, fields, "classification", tokenizer, length)
        probes.append(ProbeData(probe, probe.every or config.train.eval_every, data))
    return tuple(probes)


class Prober:
    """`due(step)`: whether a probe is due; `probe(encoder, step)`: the due probes' metrics (all ranks)."""

    def __init__(
        self,
        probes: tuple[ProbeData, ...],
        total_steps: int,
        batch_size: int,
        device: torch.device,
        rank: int,
    ):
        self.probes = probes
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.device = device
        self.rank = rank

    def _due(self, probe: ProbeData, step: int) -> bool:
        return probe.every > 0 and (step % probe.every == 0 or step == self.total_steps)

    def due(self, step: int) -> bool:
        return any(self._due(probe, step) for probe in self.probes)

    def probe(self, encoder: BertModel, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for probe in self.probes:
            if self._due(probe, step):
                scores = probe_scores(encoder, probe.data, self.batch_size, self.device, self.rank)
                metrics |= {f"probe/{probe.config.name}/{name}": value for name, value in scores.items()}
        return metrics


def probe_scores(
    encoder: BertModel, data: LabelledData, batch_size: int, device: torch.device, rank: int = 0
) -> dict[str, float]:
    """Fit the linear probe on the train set's [CLS] vectors and score it on the eval set's."""
    was_training = encoder.training
    encoder.eval()
    try:
        train = cls_vectors(encoder, data.train, batch_size, device, rank)
        evaluation = cls_vectors(encoder, data.eval, batch_size, device, rank)
    finally:
        encoder.train(was_training)
    weights = fit_ridge(train, data.train.labels, data.num_labels)
    predictions = with_bias(evaluation, train).dot(weights).argmax(axis=1)
    return {k: v for k, v in classification_scores(predictions, data.eval.labels).items() if k != "matthews"}


@torch.no_grad()
def cls_vectors(
    encoder: BertModel, split: TokenizedSplit, batch_size: int, device: torch.device, rank: int
) -> np.ndarray:
    """(rows, H) the last layer's [CLS] vector of every row: each rank its slice, gathered in row order."""
    start, stop = batch_slices(len(split), world_size())[rank]
    vectors = []
    for first in range(start, stop, batch_size):
        batch = split.batch(
            np.arange(first, min(first + batch_size, stop)), encoder.embeddings.word.padding_idx
        )
        inputs = {
            k: torch.from_numpy(batch[k]).to(device)
            for k in ("input_ids", "token_type_ids", "attention_mask")
        }
        with autocast(device):
            hidden, layout = encoder.encode(**inputs)
        cls = hidden[:, 0] if layout is None else layout.first_tokens(hidden)
        vectors.append(cls.float().cpu().numpy())
    hidden_size = encoder.embeddings.word.embedding_dim
    mine = np.concatenate(vectors) if vectors else np.zeros((0, hidden_size), np.float32)
    if world_size() == 1:
        return mine
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, mine)
    return np.concatenate(gathered)


def with_bias(features: np.ndarray, train_features: np.ndarray) -> np.ndarray:
    """Features standardised by the training set's mean and spread, with a constant column."""
    mean, std = train_features.mean(axis=0), train_features.std(axis=0) + 1e-6
    standardised = (features.astype(np.float64) - mean) / std
    return np.concatenate([standardised, np.ones((len(features), 1))], axis=1)


def fit_ridge(features: np.ndarray, labels: np.ndarray, num_labels: int) -> np.ndarray:
    """(H + 1, C): least squares onto one-hot targets with an L2 penalty (not on the bias), in closed form."""
    x = with_bias(features, features)
    targets = np.eye(num_labels)[labels]
    penalty = RIDGE * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    return np.linalg.solve(x.T @ x + penalty, x.T @ targets)
