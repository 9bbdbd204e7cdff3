"""Optimizers and learning-rate schedules of the pretraining loop.

AdamW (or LAMB for very large batches) with weight decay off for biases and LayerNorm weights, as in BERT;
a linear warmup followed by a linear or cosine decay to zero at the last step. Both step every tensor at
once: AdamW with torch's fused kernels (CUDA and CPU), LAMB with multi-tensor `torch._foreach_*` ops, and
neither reads a value back to the host.
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
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.eps, fused=True)


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
    Bias correction as in the paper's Algorithm 2 and NVIDIA's BERT recipe.

    One multi-tensor step per parameter group, with the step counts on the parameters' device: no Python
    work per tensor beyond collecting the lists, and no synchronisation with the host. The parameters of a
    group share one device."""

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
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._step_group(group, params)
        return loss

    def _state(self, parameter: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[parameter]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=parameter.device)
            state["exp_avg"] = torch.zeros_like(parameter)
            state["exp_avg_sq"] = torch.zeros_like(parameter)
        elif state["step"].device != parameter.device:  # a checkpoint loads the step counts onto the CPU
            state["step"] = state["step"].to(parameter.device)
        return state

    def _step_group(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        states = [self._state(p) for p in params]
        grads = [p.grad for p in params]
        steps = [state["step"] for state in states]
        exp_avgs = [state["exp_avg"] for state in states]
        exp_avg_sqs = [state["exp_avg_sq"] for state in states]

        torch._foreach_add_(steps, 1)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        # Bias corrections 1 - beta^t, per tensor, as 0-d tensors on the device.
        bias_correction1 = torch._foreach_pow(beta1, steps)
        torch._foreach_neg_(bias_correction1)
        torch._foreach_add_(bias_correction1, 1)
        bias_correction2 = torch._foreach_pow(beta2, steps)
        torch._foreach_neg_(bias_correction2)
        torch._foreach_add_(bias_correction2, 1)
        torch._foreach_sqrt_(bias_correction2)
        # Adam's update (m / bc1) / (sqrt(v) / sqrt(bc2) + eps), plus the decoupled weight decay.
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominators, bias_correction2)
        torch._foreach_add_(denominators, group["eps"])
        updates = torch._foreach_div(exp_avgs, bias_correction1)
        torch._foreach_div_(updates, denominators)
        del denominators
        if group["weight_decay"]:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        weight_norms = torch.stack(torch._foreach_norm(params))
        update_norms = torch.stack(torch._foreach_norm(updates))
        both_positive = (weight_norms > 0) & (update_norms > 0)
        trust_ratios = torch.where(both_positive, weight_norms / update_norms, torch.ones_like(weight_norms))
        torch._foreach_mul_(updates, (trust_ratios * -group["lr"]).unbind())
        torch._foreach_add_(params, updates)
