"""Timing of training steps for the model benchmarks: the losses checked first, rounds in alternating order,
medians and spread.

A round runs every contender's `steps_per_round` steps back to back and keeps the median step time; the order
of the contenders is reversed every other round, so none always runs first (on a warm cache) or last.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterable

import torch

Step = Callable[[], None]
LOSS_RTOL = {"fp32": 1e-4, "bf16": 2e-2}


def check_losses_agree(
    models: dict[str, tuple[torch.nn.Module, Callable[[], torch.Tensor]]], dtype: str, reference: str
) -> float:
    """Every model's loss on the batch, dropout off; raises unless all agree with `reference`'s, which it
    returns. A benchmark times nothing whose values are wrong."""
    losses = {}
    for name, (model, loss_of) in models.items():
        model.eval()
        with torch.no_grad(), autocast(next(model.parameters()).device.type, dtype):
            losses[name] = float(loss_of())
        model.train()
    for name, loss in losses.items():
        if abs(loss - losses[reference]) > LOSS_RTOL[dtype] * abs(losses[reference]):
            raise SystemExit(f"losses disagree: {name} {loss:.6f}, {reference} {losses[reference]:.6f}")
    return losses[reference]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for "bf16", nothing for "fp32"."""
    if dtype == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_step(
    parameters: Iterable[torch.nn.Parameter], loss_of: Callable[[], torch.Tensor], device: str, dtype: str
) -> Step:
    """One training step: forward (`loss_of`), backward, AdamW (fused: the fastest torch has), zero_grad."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, fused=True)

    def step() -> None:
        with autocast(device, dtype):
            loss = loss_of()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step: Step, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def time_rounds(
    steps: dict[str, Step], rounds: int, steps_per_round: int, device: str
) -> dict[str, list[float]]:
    """Per contender, the median step time (seconds) of each round, after one warm-up step each."""
    for step in steps.values():  # warm-up: allocator, kernels, optimizer state, compilation
        timed(step, device)
    per_round: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(rounds):
        order = list(steps) if round_index % 2 == 0 else list(reversed(steps))
        for name in order:
            per_round[name].append(
                statistics.median(timed(steps[name], device) for _ in range(steps_per_round))
            )
    return per_round


def median_and_spread(values: list[float]) -> str:
    """'median (min-max)' with thousands separators."""
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"
