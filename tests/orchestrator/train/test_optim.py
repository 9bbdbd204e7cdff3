"""The multi-tensor LAMB and StableAdamW steps against per-parameter transcriptions of their papers; AdamW is
torch's fused one. (Their checkpoint round trips: test_parts.)"""

from __future__ import annotations

import math
import subprocess
import sys

import torch
from torch.testing import assert_close

from model import BertConfig, BertForPreTraining
from orchestrator.config import OptimConfig
from orchestrator.train.optim import AdamW, Lamb, StableAdamW, build_optimizer, parameter_groups


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


def test_adamw_steps_exactly_as_torchs_and_leaves_torch_dynamo_unimported():
    """Ours is torch's fused AdamW without the compile guards: the same weights and state, bit for bit,
    after steps with a schedule and a state_dict round trip, and torch._dynamo never imported (a fresh
    process, as a worker is)."""
    config = OptimConfig(name="adamw", lr=1e-2, weight_decay=0.01)
    runs = []
    for optimizer_class in (AdamW, torch.optim.AdamW):
        torch.manual_seed(0)
        model = BertForPreTraining(BertConfig.from_preset("tiny", vocab_size=64, num_hidden_layers=1))
        groups = parameter_groups(model, config.weight_decay)
        optimizer = optimizer_class(groups, lr=config.lr, eps=config.eps, fused=True)
        optimizer.load_state_dict(optimizer.state_dict())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
        for step in range(4):
            torch.manual_seed(step)
            ids = torch.randint(5, 64, (2, 8))
            model(ids, mlm_labels=ids, next_sentence_label=torch.tensor([0, 1])).loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        runs.append((list(model.parameters()), optimizer.state_dict()))
    (ours, our_state), (torchs, torch_state) = runs
    assert all(torch.equal(a, b) for a, b in zip(ours, torchs, strict=True))
    assert our_state["param_groups"] == torch_state["param_groups"]
    for index, state in torch_state["state"].items():
        assert all(torch.equal(our_state["state"][index][key], value) for key, value in state.items())

    script = (
        "import sys, torch\n"
        "from orchestrator.train.optim import build_optimizer\n"
        "from orchestrator.config import OptimConfig\n"
        "model = torch.nn.Linear(4, 4)\n"
        "optimizer = build_optimizer(model, OptimConfig(name='adamw'))\n"
        "model(torch.ones(1, 4)).sum().backward()\n"
        "optimizer.step(); optimizer.zero_grad(); optimizer.load_state_dict(optimizer.state_dict())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr


def reference_stableadamw_step(params, states, lr, betas, eps, weight_decay) -> list[float]:
    """StableAdamW one tensor at a time in float64, line by line as Wortsman et al. 2023 write it
    (Algorithm 2): debiased betas, u_t and v_t, RMS_t, the clipped step size eta_t, then
    theta_t = theta_{t-1} - eta_t * lambda * theta_{t-1} - eta_t * u_t / (sqrt(v_t) + eps).
    Returns the RMS_t of the tensors it stepped."""
    beta1, beta2 = betas
    rms_values = []
    for parameter in params:
        if parameter.grad is None:
            continue
        state = states.setdefault(parameter, {"t": 0, "u": torch.zeros_like(parameter)})
        state.setdefault("v", torch.zeros_like(parameter))
        state["t"] += 1
        t, g = state["t"], parameter.grad
        beta1_hat = beta1 * (1 - beta1 ** (t - 1)) / (1 - beta1**t)
        beta2_hat = beta2 * (1 - beta2 ** (t - 1)) / (1 - beta2**t)
        state["v"] = beta2_hat * state["v"] + (1 - beta2_hat) * g**2
        state["u"] = beta1_hat * state["u"] + (1 - beta1_hat) * g
        rms = math.sqrt((g**2 / torch.clamp(state["v"], min=eps**2)).mean().item())
        eta = lr / max(1.0, rms)
        update = state["u"] / (state["v"].sqrt() + eps)
        parameter.data = parameter - eta * weight_decay * parameter - eta * update
        rms_values.append(rms)
    return rms_values


def test_stableadamw_equals_the_papers_algorithm_in_float64_with_and_without_clipping():
    betas, eps = (0.9, 0.99), 1e-6
    ours = [torch.nn.Parameter(t.clone()) for t in random_tensors(2)]
    reference = [torch.nn.Parameter(t.double()) for t in random_tensors(2)]
    groups = [{"params": ours[:4], "weight_decay": 0.1}, {"params": ours[4:]}]
    optimizer = StableAdamW(groups, lr=0.0, betas=betas, eps=eps)
    reference_states: dict = {}
    rms_seen = []
    generator = torch.Generator().manual_seed(3)
    for step in range(20):
        lr = 0.02 * (1 - step / 40)  # as a scheduler sets it: each step reads the group's lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        # A gradient 30 times the usual on some steps: its RMS_t far above 1, the step size clipped.
        scale = 30.0 if step in (6, 7, 13) else 1.0
        for index, (a, b) in enumerate(zip(ours, reference, strict=True)):
            if index == 2 and step % 4 == 1:  # sometimes no gradient: the tensor is skipped that step
                a.grad = b.grad = None
            else:
                grad = scale * torch.randn(a.shape, generator=generator)
                a.grad, b.grad = grad.clone(), grad.double()
        optimizer.step()
        rms_seen += reference_stableadamw_step(reference[:4], reference_states, lr, betas, eps, 0.1)
        rms_seen += reference_stableadamw_step(reference[4:], reference_states, lr, betas, eps, 0.0)
        for index, (a, b) in enumerate(zip(ours, reference, strict=True)):
            where = f"tensor {index}, step {step}"
            assert_close(a.detach().double(), b.detach(), rtol=1e-6, atol=1e-6, msg=where)
    clipped, unclipped = sum(rms > 1.5 for rms in rms_seen), sum(rms < 1 for rms in rms_seen)
    assert clipped >= 10 and unclipped >= 60, (clipped, unclipped)  # both kinds of step happened
    assert optimizer.state[ours[2]]["step"] == 15 and optimizer.state[ours[0]]["step"] == 20
