"""The training metrics of the steps since the last log, and the console's progress line.

Metric names carry the section the MLflow UI groups charts by: train/, optim/, perf/ (and data/ and eval/ from
the worker's report). NSP metrics only when NSP is on; MFU and peak memory only on a GPU (MFU only on one with
a known peak, `throughput.dense_bf16_peak_flops`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from model import EncoderConfig
from orchestrator.train.step import STEP_SUMS, all_reduce_sum, world_size
from orchestrator.train.throughput import dense_bf16_peak_flops


class MetricsWindow:
    """Training metrics summed on the device since the last log; synced and read only when logged."""

    def __init__(
        self, device: torch.device, model_config: EncoderConfig, log_every: int = 1, total_steps: int = 0
    ):
        self.device = device
        self.model_config = model_config
        self.log_every = log_every
        self.total_steps = total_steps
        on_gpu = device.type == "cuda"
        self.peak_flops = dense_bf16_peak_flops(torch.cuda.get_device_name(device)) if on_gpu else None
        self.reset()

    def due(self, step: int) -> bool:
        """Whether the metrics are logged at `step`: every `log_every` steps and at the last."""
        return step % self.log_every == 0 or step == self.total_steps

    def reset(self) -> None:
        self.sums = torch.zeros(len(STEP_SUMS), device=self.device)
        self.steps = 0
        self.started = time.perf_counter()
        self.last: dict[str, torch.Tensor] = {}

    def add(self, step: dict[str, torch.Tensor]) -> None:
        self.sums += step["sums"]
        self.steps += 1
        self.last = step

    def read(self) -> dict[str, float]:
        """Global means and rates over the window's steps (all ranks), then start a new window."""
        all_reduce_sum(self.sums)
        totals = dict(zip(STEP_SUMS, self.sums.tolist(), strict=True))
        elapsed = time.perf_counter() - self.started
        metrics = {
            "train/loss": totals["loss"] / self.steps,
            "train/mlm_loss": totals["mlm_loss"] / self.steps,
            "train/mlm_accuracy": totals["mlm_correct"] / max(totals["mlm_count"], 1),
        }
        if self.model_config.use_nsp:
            metrics["train/nsp_loss"] = totals["nsp_loss"] / self.steps
            metrics["train/nsp_accuracy"] = totals["nsp_correct"] / max(totals["nsp_count"], 1)
        metrics |= {
            "optim/learning_rate": self.last["learning_rate"].item(),
            "optim/grad_norm": self.last["grad_norm"].item(),
            "perf/tokens_per_s": totals["tokens"] / elapsed,
            "perf/samples_per_s": totals["samples"] / elapsed,
            "perf/step_time_s": elapsed / self.steps,
            "perf/padding_share": 1 - totals["tokens"] / max(totals["positions"], 1),
        }
        if self.peak_flops:
            flops = self.model_config.training_flops(
                totals["tokens"], totals["squared_lengths"], totals["mlm_count"], totals["samples"]
            )
            metrics["perf/mfu"] = flops / (elapsed * world_size() * self.peak_flops)
        if self.device.type == "cuda":
            metrics["perf/peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.reset()
        return metrics


def progress_line(metrics: dict[str, Any], total_steps: int) -> str:
    """One short line for the console (the full metrics go to MLflow)."""
    parts = [f"step {metrics['step']}/{total_steps}"]
    if "train/loss" in metrics:
        train = [f"loss {metrics['train/loss']:.4f}", f"mlm_acc {metrics['train/mlm_accuracy']:.3f}"]
        if "train/nsp_accuracy" in metrics:
            train.append(f"nsp_acc {metrics['train/nsp_accuracy']:.3f}")
        train += [f"lr {metrics['optim/learning_rate']:.2e}", f"{metrics['perf/tokens_per_s']:,.0f} tok/s"]
        if "perf/mfu" in metrics:
            train.append(f"MFU {metrics['perf/mfu']:.1%}")
        parts.append("  ".join(train))
    if "eval/mlm_loss" in metrics:
        parts.append(
            f"eval_mlm_loss {metrics['eval/mlm_loss']:.4f}  eval_ppl {metrics['eval/perplexity']:.1f}"
        )
    probes = [
        f"probe {key.split('/')[1]} acc {value:.3f}"
        for key, value in metrics.items()
        if key.startswith("probe/") and key.endswith("/accuracy")
    ]
    if probes:
        parts.append("  ".join(probes))
    return "  |  ".join(parts)
