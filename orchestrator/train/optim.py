"""Optimizers and learning-rate schedules of the pretraining loop.

AdamW, LAMB for very large batches, or StableAdamW (ModernBERT's), with weight decay off for biases and
LayerNorm weights, as in BERT. After a linear warmup: a linear or cosine decay to zero at the last step, or
warmup-stable-decay (the peak held, then a linear or 1-sqrt decay over the last steps). Every optimizer steps
all tensors at once: AdamW with torch's fused kernels (CUDA and CPU), LAMB and StableAdamW with multi-tensor
`torch._foreach_*` ops, and none reads a value back to the host.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.optim.adam as torch_adam
import torch.optim.adamw as torch_adamw
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
    if config.name == "stableadamw":
        return StableAdamW(groups, lr=config.lr, betas=betas, eps=config.eps)
    return AdamW(groups, lr=config.lr, betas=betas, eps=config.eps, fused=True)


class AdamW(torch.optim.AdamW):
    """torch's AdamW, without importing torch._dynamo (about a second of CPU in every process that trains).

    torch.optim guards its methods against being traced by torch.compile: a lazy `torch._dynamo.disable`
    around them, and a graph break in `step`, each importing torch._dynamo on its first call. Nothing here
    compiles an optimizer, so the guards change nothing but that import: the wrapped functions are marked as
    their own disabled form (the wrapper's cache, which it then calls directly), and `step` is torch's own
    under no_grad without the graph break. With a torch that wraps them differently, torch's step is used."""

    def __init__(self, *args: Any, **kwargs: Any):
        _skip_dynamo_guards()
        super().__init__(*args, **kwargs)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        unguarded = getattr(torch.optim.AdamW.step, "__wrapped__", None)
        return unguarded(self, closure) if unguarded is not None else super().step(closure)


_GUARDED_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def _skip_dynamo_guards() -> None:
    guarded = [getattr(torch_adam, "adam", None), getattr(torch_adamw, "adamw", None)]
    guarded += [getattr(torch.optim.Optimizer, name) for name in _GUARDED_METHODS]
    for wrapper in guarded:
        function = getattr(wrapper, "__wrapped__", None)
        if function is not None:
            function.__dynamo_disable = function


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup_steps, decay_steps = config.phase_steps(total_steps)
    shape = config.decay_shape if config.schedule == "wsd" else config.schedule
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(step, warmup_steps, decay_steps, total_steps, shape, config.min_lr_ratio),
    )


def lr_multiplier(
    step: int, warmup_steps: int, decay_steps: int, total_steps: int, shape: str, min_lr_ratio: float = 0.0
) -> float:
    """The share of the peak learning rate used for the update that takes the model from `step` to step+1:
    a linear warmup, the peak, then the decay's `shape` (linear, cosine or 1-sqrt) over the last
    `decay_steps`, from 1 down to `min_lr_ratio` after the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, decay_steps))
    if shape == "cosine":
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif shape == "1-sqrt":
        remaining = 1.0 - math.sqrt(progress)
    else:
        remaining = 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * remaining


class _MultiTensorAdam(torch.optim.Optimizer):
    """Adam's moments for optimizers that change what is done with them: one multi-tensor step per
    parameter group, with the step counts on the parameters' device, so no Python work per tensor beyond
    collecting the lists and no synchronisation with the host. The parameters of a group share one device.
    The state is torch AdamW's (step, exp_avg, exp_avg_sq)."""

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

    def _step_group(self, group: dict, params: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def _state(self, parameter: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[parameter]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=parameter.device)
            state["exp_avg"] = torch.zeros_like(parameter)
            state["exp_avg_sq"] = torch.zeros_like(parameter)
        elif state["step"].device != parameter.device:  # a checkpoint loads the step counts onto the CPU
            state["step"] = state["step"].to(parameter.device)
        return state

    def _moments(self, group: dict, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
        """Update the moments with the gradients; return (m, 1 - beta1^t, sqrt(v_hat)): the first moments
        (the state itself), their bias corrections (0-d tensors), and the square roots of the bias-corrected
        second moments (new tensors)."""
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
        root_second_moments = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(root_second_moments, bias_correction2)
        return exp_avgs, bias_correction1, root_second_moments


class StableAdamW(_MultiTensorAdam):
    """StableAdamW (Wortsman et al. 2023, "Stable and low-precision training for large-scale vision-language
    models", Algorithm 2): AdamW whose step size shrinks per tensor where the gradient outgrows the second
    moment, as AdaFactor's update clipping. For each tensor, RMS_t = sqrt(mean(g_t^2 / max(v_t, eps^2)))
    with v_t bias-corrected, the step size is lr / max(1, RMS_t), and the decoupled weight decay scales the
    weights by 1 - step size * weight_decay (torch AdamW's convention, with the clipped step size).

    Written here rather than taken from torch-optimi, whose foreach step reads every tensor's RMS back to the
    host (a synchronisation per tensor on a GPU) and whose param groups save the kernel it chose (Triton on
    a GPU) into the optimizer state, which a resume on a CPU would then try to run."""

    def _step_group(self, group: dict, params: list[torch.Tensor]) -> None:
        eps = group["eps"]
        exp_avgs, bias_correction1, roots = self._moments(group, params)
        # RMS_t = ||g / max(sqrt(v), eps)|| / sqrt(numel), as sqrt(max(v, eps^2)) = max(sqrt(v), eps).
        ratios = torch._foreach_maximum(roots, eps)
        torch._foreach_reciprocal_(ratios)
        torch._foreach_mul_(ratios, [p.grad for p in params])
        norms = torch._foreach_norm(ratios)
        del ratios
        rms = torch.stack(torch._foreach_div(norms, [math.sqrt(p.numel()) for p in params]))
        step_sizes = group["lr"] / torch.clamp(rms, min=1.0)
        if group["weight_decay"]:
            torch._foreach_mul_(params, (1 - step_sizes * group["weight_decay"]).unbind())
        # theta -= step size * (m / (1 - beta1^t)) / (sqrt(v) + eps), the scales folded into one buffer.
        torch._foreach_add_(roots, eps)
        torch._foreach_reciprocal_(roots)
        torch._foreach_mul_(roots, (-step_sizes / torch.stack(bias_correction1)).unbind())
        torch._foreach_addcmul_(params, exp_avgs, roots)


class Lamb(_MultiTensorAdam):
    """LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning"): Adam's update with decoupled
    weight decay, scaled per tensor by the trust ratio ||w|| / ||update|| (1 where either norm is 0).
    Bias correction as in the paper's Algorithm 2 and NVIDIA's BERT recipe."""

    def _step_group(self, group: dict, params: list[torch.Tensor]) -> None:
        exp_avgs, bias_correction1, denominators = self._moments(group, params)
        # Adam's update (m / bc1) / (sqrt(v) / sqrt(bc2) + eps), plus the decoupled weight decay.
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
