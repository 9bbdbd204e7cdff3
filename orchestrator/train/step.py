"""One optimizer step over a rank's micro-batches, with the loss accounting of one big batch.

Loss accounting: the MLM loss is the summed token cross-entropy divided by the number of labelled tokens in
the whole global batch (all micro-steps, all ranks), the NSP loss likewise by the global batch size; DDP
averages gradients over ranks, so each rank backpropagates its loss times the world size. The update is then
exactly that of one big batch, whatever the worker count and accumulation. Gradients are synchronised on the
last micro-step only; nothing is copied to the host (the sums stay on the device until a report reads them).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist
from torch import nn

from common.batch import IGNORE_INDEX, MODEL_INPUTS
from orchestrator.train.checkpoints import Trainables

# The per-step sums a MetricsWindow adds up over ranks and steps.
STEP_SUMS = (
    "loss",
    "mlm_loss",
    "nsp_loss",
    "mlm_correct",
    "mlm_count",
    "nsp_correct",
    "nsp_count",
    "tokens",  # real (non-padding) tokens
    "positions",  # tokens and padding
    "squared_lengths",  # the sum of each sequence's squared real length, for the attention FLOPs
    "samples",
)


class TrainStep:
    """`step(micro_batches)`: one optimizer step; returns this rank's sums as tensors (no sync).

    Another objective (fine-tuning's classifier) overrides `normalizers` and `batch_sums`.

    `ddp_model` is the model wrapped for DDP (the model itself on one process); clipping, the optimizer and
    the schedule act on the unwrapped model's parameters."""

    def __init__(self, trainables: Trainables, max_grad_norm: float, ddp_model: nn.Module | None = None):
        self.model, self.optimizer, self.scheduler = trainables
        self.ddp_model = ddp_model if ddp_model is not None else self.model
        self.max_grad_norm = max_grad_norm or math.inf  # inf: measure the norm without clipping

    def normalizers(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The model's loss normalisers over the whole global batch: labelled tokens and examples of every
        micro-step and rank."""
        device = micro_batches[0]["input_ids"].device
        labelled = sum((b["mlm_labels"] != IGNORE_INDEX).sum() for b in micro_batches)
        examples = torch.tensor(sum(b["input_ids"].shape[0] for b in micro_batches), device=device)
        totals = torch.stack([labelled, examples]).float()
        all_reduce_sum(totals)
        return {"mlm_normalizer": totals[0], "nsp_normalizer": totals[1]}

    def batch_sums(self, batch: dict[str, torch.Tensor], out) -> torch.Tensor:
        """One micro-batch's sums to log (STEP_SUMS for pretraining), on the device."""
        return _batch_sums(batch, out)

    def __call__(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        device = micro_batches[0]["input_ids"].device
        normalizers = self.normalizers(micro_batches)
        sums = torch.zeros((), device=device)
        for index, batch in enumerate(micro_batches):
            is_last = index == len(micro_batches) - 1
            no_sync = getattr(self.ddp_model, "no_sync", None)
            with contextlib.nullcontext() if is_last or no_sync is None else no_sync():
                with autocast(device):  # the forward only: backward runs outside autocast
                    out = self.ddp_model(**batch, **normalizers)
                (out.loss * world_size()).backward()  # DDP averages over ranks; x world size makes it the sum
            sums = sums + self.batch_sums(batch, out)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
        learning_rate = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"sums": sums, "grad_norm": grad_norm.detach(), "learning_rate": torch.tensor(learning_rate)}


def _batch_sums(batch: dict[str, torch.Tensor], out) -> torch.Tensor:
    """One micro-batch's STEP_SUMS, on the device."""
    device = batch["input_ids"].device
    lengths = batch["attention_mask"].sum(dim=1)  # (B,) real tokens per sequence
    values = (
        out.loss.detach(),
        out.mlm_loss.detach(),
        out.nsp_loss.detach(),
        out.mlm_correct,
        out.mlm_count,
        out.nsp_correct,
        out.nsp_count,
        lengths.sum(),
        torch.full((), batch["attention_mask"].numel(), device=device),  # a fill, not a host copy
        lengths.square().sum(),
        torch.full((), batch["input_ids"].shape[0], device=device),
    )
    return torch.stack([v.float() for v in values])


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: batch[name].to(device, non_blocking=True) for name in MODEL_INPUTS}


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU; full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensor: torch.Tensor) -> None:
    if world_size() > 1:
        dist.all_reduce(tensor)
