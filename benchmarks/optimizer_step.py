"""Speed of one StableAdamW step over a whole BERT's parameters: ours against torch-optimi's (the
implementation ModernBERT trained with), with torch's fused AdamW as the floor.

Every optimizer gets the same parameters (a preset's BertForPreTraining), the same gradients and its own copy
of the weights; their steps alternate within each round, and each round reports the median of `--steps`
timed steps after one warm-up step. Printed per round: milliseconds per step and ours / theirs (above 1: ours
is faster). optimi runs its default kernel for the device (Triton on a GPU where it is installed, else its
foreach path, which reads each tensor's RMS back to the host).

    python benchmarks/optimizer_step.py                        # CPU: mini, 3 rounds
    python benchmarks/optimizer_step.py --device cuda --preset base --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import optimi
import torch

from model import BertConfig, BertForPreTraining
from orchestrator.train.optim import StableAdamW, parameter_groups


def optimizers(model: BertForPreTraining, lr: float, weight_decay: float) -> dict[str, Callable]:
    """name -> a step function over its own copy of the model's parameters, the same gradients in each."""
    steps = {}
    for name in ("ours", "optimi", "adamw_fused"):
        copy = BertForPreTraining(model.config).to(next(model.parameters()).device)
        copy.load_state_dict(model.state_dict())
        for theirs, mine in zip(model.parameters(), copy.parameters(), strict=True):
            mine.grad = theirs.grad.clone()
        groups = parameter_groups(copy, weight_decay)
        if name == "ours":
            optimizer = StableAdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
        elif name == "optimi":
            optimizer = optimi.StableAdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
        else:
            optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
        steps[name] = optimizer.step
    return steps


def timed(step: Callable, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.from_preset(args.preset, vocab_size=30522)).to(device)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    count = sum(p.numel() for p in model.parameters())
    print(
        f"StableAdamW step, {args.preset} ({count / 1e6:.1f}M parameters, {len(list(model.parameters()))} "
        f"tensors), {device}, {args.threads} thread(s), median of {args.steps} steps per round"
    )
    for round_index in range(args.rounds):
        steps = optimizers(model, lr=1e-4, weight_decay=0.01)
        for step in steps.values():
            step()  # warm-up: the state is created
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.steps):
            for name, step in steps.items():
                times[name].append(timed(step, device))
        medians = {name: statistics.median(values) * 1e3 for name, values in times.items()}
        print(
            f"round {round_index + 1}: ours {medians['ours']:.1f} ms  optimi {medians['optimi']:.1f} ms  "
            f"fused AdamW {medians['adamw_fused']:.1f} ms  |  ours/optimi speed "
            f"{medians['optimi'] / medians['ours']:.2f}x  ours/AdamW speed "
            f"{medians['adamw_fused'] / medians['ours']:.2f}x"
        )


if __name__ == "__main__":
    main()
