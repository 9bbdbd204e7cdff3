"""The multi-tensor LAMB step against a per-parameter reference; AdamW is torch's fused one."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from model import BertConfig, BertForPreTraining
from orchestrator.config import OptimConfig
from orchestrator.train.optim import Lamb, build_optimizer


@torch.no_grad()
def reference_lamb_step(params, states, lr, betas, eps, weight_decay) -> None:
    """LAMB one tensor at a time, as written in the paper (Algorithm 2, with bias correction)."""
    beta1, beta2 = betas
    for parameter in params:
        if parameter.grad is None:
            continue
        state = states.setdefault(parameter, {"step": 0, "m": torch.zeros_like(parameter)})
        state.setdefault("v", torch.zeros_like(parameter))
        state["step"] += 1
        step, grad = state["step"], parameter.grad
        state["m"] = beta1 * state["m"] + (1 - beta1) * grad
        state["v"] = beta2 * state["v"] + (1 - beta2) * grad * grad
        update = (state["m"] / (1 - beta1**step)) / ((state["v"] / (1 - beta2**step)).sqrt() + eps)
        update = update + weight_decay * parameter
        weight_norm, update_norm = parameter.norm(), update.norm()
        trust_ratio = weight_norm / update_norm if weight_norm > 0 and update_norm > 0 else 1.0
        parameter.sub_(lr * trust_ratio * update)


def random_tensors(seed: int) -> list[torch.Tensor]:
    """Tensors of assorted shapes, one of them all zeros (its trust ratio is 1)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (13,), (3, 4, 2), (1,), (64, 32)]
    tensors = [torch.randn(shape, generator=generator) for shape in shapes]
    tensors.append(torch.zeros(6))
    return tensors


def test_multi_tensor_lamb_equals_the_per_parameter_reference_over_many_steps():
    lr, betas, eps = 0.01, (0.9, 0.999), 1e-6
    ours = [torch.nn.Parameter(t.clone()) for t in random_tensors(0)]
    reference = [torch.nn.Parameter(t.clone()) for t in random_tensors(0)]
    groups = [{"params": ours[:4], "weight_decay": 0.01}, {"params": ours[4:], "weight_decay": 0.0}]
    optimizer = Lamb(groups, lr=lr, betas=betas, eps=eps)
    reference_states: dict = {}
    generator = torch.Generator().manual_seed(1)
    for step in range(12):
        for index, (a, b) in enumerate(zip(ours, reference, strict=True)):
            if index == 2 and step % 3 == 0:  # sometimes no gradient: the tensor is skipped that step
                a.grad = b.grad = None
            elif index == 3 and step == 5:  # a zero update norm: trust ratio 1
                a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
            else:
                grad = torch.randn(a.shape, generator=generator)
                a.grad, b.grad = grad.clone(), grad.clone()
        optimizer.step()
        reference_lamb_step(reference[:4], reference_states, lr, betas, eps, 0.01)
        reference_lamb_step(reference[4:], reference_states, lr, betas, eps, 0.0)
        for index, (a, b) in enumerate(zip(ours, reference, strict=True)):
            assert_close(a.detach(), b.detach(), msg=f"tensor {index} after step {step + 1}")
    assert optimizer.state[ours[2]]["step"] == 8  # skipped on 4 of the 12 steps
    assert optimizer.state[ours[0]]["step"] == 12


def test_adamw_is_the_fused_implementation():
    model = BertForPreTraining(BertConfig.from_preset("tiny", vocab_size=64, num_hidden_layers=1))
    optimizer = build_optimizer(model, OptimConfig(name="adamw"))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all(group["fused"] for group in optimizer.param_groups)
