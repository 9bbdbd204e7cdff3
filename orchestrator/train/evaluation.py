"""Evaluation on the held-out split during training: MLM loss, perplexity and accuracy, NSP accuracy.

Each rank scores a contiguous slice of the split with fixed masks (the same at every evaluation), and the
sums are added over the ranks.
"""

from __future__ import annotations

import math

import ray.data
import torch

from data import PadAndCollate
from model import PretrainingModel
from orchestrator.run import Run
from orchestrator.train.step import all_reduce_sum, autocast, to_device


class Evaluator:
    """`evaluate(model)` over this rank's slice of the held-out split (`stream`, from `rank_eval_stream`);
    `due(step)` says when."""

    def __init__(self, run: Run, stream: ray.data.Dataset, collate: PadAndCollate, device: torch.device):
        self.every = run.config.train.eval_every
        self.total_steps = run.plan.total_steps
        self.micro_batch_size = run.plan.batch.micro_batch_size
        self.stream = stream
        self.collate = collate
        self.device = device

    def due(self, step: int) -> bool:
        """Every `train.eval_every` steps and at the last (never with eval_every 0)."""
        return self.every > 0 and (step % self.every == 0 or step == self.total_steps)

    def evaluate(self, model: PretrainingModel) -> dict[str, float]:
        sums = torch.zeros(5, device=self.device)  # mlm loss sum, mlm correct, mlm count, nsp correct, count
        model.eval()
        with torch.no_grad():
            batches = self.stream.iter_torch_batches(
                batch_size=self.micro_batch_size, collate_fn=self.collate
            )
            for batch in batches:
                with autocast(self.device):
                    out = model(**to_device(batch, self.device), mlm_normalizer=1.0, nsp_normalizer=1.0)
                values = (out.mlm_loss, out.mlm_correct, out.mlm_count, out.nsp_correct, out.nsp_count)
                sums += torch.stack([v.float() for v in values])
        model.train()
        all_reduce_sum(sums)
        loss_sum, mlm_correct, mlm_count, nsp_correct, nsp_count = sums.tolist()
        mlm_loss = loss_sum / max(mlm_count, 1)
        metrics = {
            "eval/mlm_loss": mlm_loss,
            "eval/perplexity": math.exp(min(mlm_loss, 50.0)),
            "eval/mlm_accuracy": mlm_correct / max(mlm_count, 1),
        }
        if model.config.use_nsp:
            metrics["eval/nsp_accuracy"] = nsp_correct / max(nsp_count, 1)
        return metrics
