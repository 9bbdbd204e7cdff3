"""Optimizers and learning-rate schedules of the pretraining loop.

AdamW (or LAMB for very large batches) with weight decay off for biases and LayerNorm weights, as in BERT;
a linear warmup followed by a linear or cosine decay to zero at the last step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from orchestrator.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices with weight decay; biases and LayerNorm parameters (all 1-D) without."""
    decayed, not_decayed = [], []
    for parameter in model.parameters():  # parameters() yields each tied tensor once
        if parameter.requires_grad:
            (decayed if parameter.ndim >= 2 else not_decayed).append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    betas = (config.betas[0], config.betas[1])
    if config.name == "lamb":
        return Lamb(groups, lr=config.lr, betas=betas, eps=config.eps)
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, config.warmup_steps, total_steps, config.schedule)
    )


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """The share of the peak learning rate used for the update that takes the model from `step` to step+1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning"): Adam's update with decoupled
    weight decay, scaled per tensor by the trust ratio ||w|| / ||update|| (1 where either norm is 0).
    Bias correction as in the paper's Algorithm 2 and NVIDIA's BERT recipe."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state[parameter]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(parameter)
                    state["exp_avg_sq"] = torch.zeros_like(parameter)
                state["step"] += 1
                step = state["step"].item()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(parameter.grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(parameter.grad, parameter.grad, value=1 - beta2)
                update = (exp_avg / (1 - beta1**step)) / (
                    (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(group["eps"])
                )
                if group["weight_decay"]:
                    update.add_(parameter, alpha=group["weight_decay"])
                weight_norm, update_norm = parameter.norm(), update.norm()
                trust_ratio = torch.where(
                    (weight_norm > 0) & (update_norm > 0),
                    weight_norm / update_norm,
                    torch.ones_like(weight_norm),
                )
                parameter.sub_(update * (group["lr"] * trust_ratio))
        return loss
