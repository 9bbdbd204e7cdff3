"""The per-worker training function that Ray Train runs on every rank, split into named helpers.

Reads top to bottom: build the model and optimizer, restore a checkpoint (or initial weights), wrap in DDP,
then for each step: fetch this worker's micro-batches, run the step, and report (metrics, evaluation,
checkpoint) on the steps where one is due. Every rank calls `ray.train.report` on the same steps; only rank 0
writes checkpoint files.

Loss accounting: the MLM loss is the summed token cross-entropy divided by the number of labelled tokens in
the whole global batch (all micro-steps, all ranks), the NSP loss likewise by the global batch size; DDP
averages gradients over ranks, so each rank backpropagates its loss times the world size. The update is then
exactly that of one big batch, whatever the worker count and accumulation.

Data: each rank executes its own Ray Data stream of its fixed slice of every global batch (`data.stream`,
`data.order`), from the saved position to the last step, across epochs; the global batch of step s, its
examples and their masks, is a function of (seed, epoch, s) alone. An epoch gives `steps_per_epoch` global
batches, so the position after step s is (s // steps_per_epoch, s % steps_per_epoch) for any worker count,
and a resume (after a failure, a restart, or with another worker count) reads exactly the examples the run
would have read. Evaluation gives each rank a contiguous slice of the held-out split.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from data import (
    EpochOrder,
    ExactBatches,
    PadAndCollate,
    PreparedSplit,
    make_collate_fn,
    rank_eval_stream,
    rank_train_stream,
    storage,
)
from model import IGNORE_INDEX, BertConfig, BertForPreTraining, attention_path, compile_model
from orchestrator.config import JobConfig, config_from_dict
from orchestrator.train.checkpoints import (
    ResumePoint,
    TrainState,
    checkpoint_dir_name,
    find_resume_checkpoint,
    init_weights_from,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from orchestrator.train.optim import build_optimizer, build_scheduler
from orchestrator.train.resources import BatchPlan, plan_batches
from orchestrator.train.throughput import dense_bf16_peak_flops

T = TypeVar("T")
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "mlm_labels", "next_sentence_label")


def epoch_order(job: JobConfig, train_split: PreparedSplit) -> EpochOrder:
    """The run's data order (the same on the driver and on every rank)."""
    return EpochOrder(
        train_split.shard_sizes,
        job.train.global_batch_size,
        job.stream.partitions,
        job.stream.shuffle_window,
        job.train.seed,
    )


@dataclass(frozen=True)
class RunPlan:
    """What the driver worked out for the workers (from the config, the prepared data, the worker count)."""

    batch: BatchPlan
    total_steps: int
    steps_per_epoch: int
    model: dict[str, Any]
    """The BertConfig fields: a preset's sizes or those of checkpoint.init_from, the data's vocabulary."""
    pad_token_id: int
    max_seq_length: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunPlan:
        return cls(**{**raw, "batch": BatchPlan(**raw["batch"])})


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: `loop_config` holds the resolved job config, the run plan and
    the prepared splits."""
    job, plan = config_from_dict(loop_config["job"]), RunPlan.from_dict(loop_config["plan"])
    train_split, eval_split = loop_config["train_split"], loop_config["eval_split"]
    quiet_ray_console()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(job.scaling.threads_per_worker)
    torch.manual_seed(job.train.seed)  # the same initial weights on every rank

    # The run directory is the record, not Ray Train's list of reported checkpoints (`get_checkpoint`): a
    # failure or an interrupt can come before Ray has taken in a checkpoint that rank 0 has written in full.
    resume = find_resume_checkpoint(storage.join(job.checkpoint.storage_path, job.checkpoint.run_name))
    rows = start_train_stream(job, plan, train_split, resume, rank, world_size)  # first: see there
    model, optimizer, scheduler = build_model_and_optimizer(job, plan, device)
    torch.manual_seed(job.train.seed * 1000 + rank + 1)  # each rank its own dropout; a checkpoint restores it
    state = restore_state(job, resume, model, optimizer, scheduler, rank, world_size)
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False)
    if job.model.compile:
        compile_model(model)
    if rank == 0:
        _console(f"Attention: {attention_path(model.config, device)}.")

    collate_fn = make_collate_fn(job.masking, plan.max_seq_length, plan.pad_token_id)
    # Ray Train may start an elastic run with fewer workers than planned: split for the actual count.
    batch = plan_batches(job.train.global_batch_size, job.train.micro_batch_size, world_size, uneven=True)
    step_batches = iterate_step_batches(rows, batch, rank, collate_fn, device)
    evaluation = None
    if eval_split is not None:
        evaluation = rank_eval_stream(eval_split, job.masking, job.train.seed, rank, world_size)
        if job.checkpoint.init_from and state.step == 0:
            report_initial_evaluation(plan, model, evaluation, collate_fn, device, rank)
    window = MetricsWindow(device, model.config)
    reports: list[dict[str, Any]] = []  # rank 0's reports since the last checkpoint, saved with the next one
    while state.step < plan.total_steps:
        micro_batches = next(step_batches)
        inject_failure_if_due(job, state, rank, world_size)
        window.add(train_step(ddp_model, model, optimizer, scheduler, micro_batches, job, world_size))
        state = advance(state, plan, world_size)
        report_if_due(
            job,
            plan,
            state,
            window,
            model,
            optimizer,
            scheduler,
            evaluation,
            collate_fn,
            device,
            rank,
            reports,
        )


def build_model_and_optimizer(
    job: JobConfig, plan: RunPlan, device: torch.device
) -> tuple[BertForPreTraining, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    model = BertForPreTraining(BertConfig(**plan.model)).to(device)
    optimizer = build_optimizer(model, job.optim)
    return model, optimizer, build_scheduler(optimizer, job.optim, plan.total_steps)


def start_train_stream(
    job: JobConfig,
    plan: RunPlan,
    train_split: PreparedSplit,
    resume: ResumePoint,
    rank: int,
    world_size: int,
) -> ExactBatches:
    """This rank's rows from the resume point's position to the last step, already being fetched: a stream's
    start (Ray Data tasks in new processes) takes seconds, and so does the model's (torch's first optimizer
    imports its compiler), so the stream starts first and the two overlap."""
    position = resume.position
    stream = rank_train_stream(
        train_split,
        epoch_order(job, train_split),
        job.masking,
        rank,
        world_size,
        position.data_epoch,
        position.data_step_in_epoch,
        plan.total_steps - position.step,
    )
    return ExactBatches(
        fetch_ahead(stream.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2))
    )


def restore_state(
    job: JobConfig,
    resume: ResumePoint,
    model: BertForPreTraining,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
    world_size: int,
) -> TrainState:
    """Resume from the run's newest complete and intact checkpoint (after a worker failure, or when the same
    run is started again); else start from `checkpoint.init_from`'s weights, or from scratch."""
    if resume.path is not None:
        with storage.local_input(resume.path) as directory:
            return load_checkpoint(Path(directory), model, optimizer, scheduler, rank)
    if job.checkpoint.init_from:
        init_weights_from(model, job.checkpoint.init_from)
    return TrainState(world_size=world_size)


def fetch_ahead(iterable: Iterable[T]) -> Iterator[T]:
    """The items of `iterable`, the first fetched from now on, on a thread, while the caller goes on."""
    iterator = iter(iterable)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    first = pool.submit(next, iterator, None)
    pool.shutdown(wait=False)

    def items() -> Iterator[T]:
        item = first.result()
        if item is not None:
            yield item
            yield from iterator

    return items()


def iterate_step_batches(
    rows: ExactBatches, batch: BatchPlan, rank: int, collate: PadAndCollate, device: torch.device
) -> Iterator[list[dict[str, torch.Tensor]]]:
    """This worker's micro-batches, one list per optimizer step, cut from its stream's rows."""
    sizes = batch.micro_batch_sizes(rank)
    with contextlib.closing(rows):  # stops the stream's prefetching when the run ends early
        while True:
            yield [_to_device(collate.collate_table(rows.take(size)), device) for size in sizes]


FAULT_MARKER_FILE = "injected_fault.json"


def inject_failure_if_due(job: JobConfig, state: TrainState, rank: int, world_size: int) -> None:
    """Fault injection for tests: at `train.fail_at_step` one rank's process is killed with SIGKILL (no
    exception, no cleanup, as when its machine dies), once per run: a marker written to the run directory
    first records it, so that the restart (which may go back further than the last checkpoint reported,
    when Ray Train had not yet read that report) does not kill again."""
    failing_rank = 1 if world_size > 1 else 0
    if job.train.fail_at_step != state.step + 1 or rank != failing_rank:
        return
    marker = storage.join(job.checkpoint.storage_path, job.checkpoint.run_name, FAULT_MARKER_FILE)
    if storage.is_file(marker):
        return
    storage.write_text(marker, json.dumps({"step": state.step + 1, "rank": rank, "pid": os.getpid()}))
    sys.stderr.write(
        f"train.fail_at_step: killing rank {rank} (pid {os.getpid()}) at step {state.step + 1}\n"
    )
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def train_step(
    ddp_model: nn.Module,
    model: BertForPreTraining,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    micro_batches: list[dict[str, torch.Tensor]],
    job: JobConfig,
    world_size: int,
) -> dict[str, torch.Tensor]:
    """One optimizer step over this worker's micro-batches; returns this rank's sums as tensors (no sync)."""
    device = micro_batches[0]["input_ids"].device
    # Normalisers over the whole global batch: labelled tokens and examples of every micro-step on every rank.
    normalizers = torch.stack(
        [sum((b["mlm_labels"] != IGNORE_INDEX).sum() for b in micro_batches), _examples(micro_batches)]
    ).float()
    _all_reduce_sum(normalizers)
    mlm_normalizer, nsp_normalizer = normalizers

    sums = torch.zeros(len(STEP_SUMS), device=device)
    for index, batch in enumerate(micro_batches):
        is_last = index == len(micro_batches) - 1
        sync = (
            contextlib.nullcontext() if is_last or not hasattr(ddp_model, "no_sync") else ddp_model.no_sync()
        )
        with sync:
            with _autocast(device):
                out = ddp_model(**batch, mlm_normalizer=mlm_normalizer, nsp_normalizer=nsp_normalizer)
            (out.loss * world_size).backward()  # DDP averages over ranks; x world_size makes it the sum
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
        sums += torch.stack([v.float() for v in values])
    max_norm = job.optim.max_grad_norm or math.inf  # inf: measure the norm without clipping
    grad_norm = nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
    learning_rate = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"sums": sums, "grad_norm": grad_norm.detach(), "learning_rate": torch.tensor(learning_rate)}


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


def advance(state: TrainState, plan: RunPlan, world_size: int) -> TrainState:
    step = state.step + 1
    return dataclasses.replace(
        state,
        step=step,
        consumed_samples=step * plan.batch.global_batch_size,
        data_epoch=step // plan.steps_per_epoch,
        data_step_in_epoch=step % plan.steps_per_epoch,
        world_size=world_size,
    )


class MetricsWindow:
    """Training metrics summed on the device since the last report; synced and read only when reported.

    Metric names carry the section the MLflow UI groups charts by: train/, optim/, perf/ (and data/ and
    eval/ from `report_if_due`). NSP metrics only when NSP is on; MFU and peak memory only on a GPU (MFU only
    on one with a known peak, `throughput.dense_bf16_peak_flops`).
    """

    def __init__(self, device: torch.device, model_config: BertConfig):
        self.device = device
        self.model_config = model_config
        on_gpu = device.type == "cuda"
        self.peak_flops = dense_bf16_peak_flops(torch.cuda.get_device_name(device)) if on_gpu else None
        self.reset()

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
        _all_reduce_sum(self.sums)
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
            metrics["perf/mfu"] = flops / (elapsed * _world_size() * self.peak_flops)
        if self.device.type == "cuda":
            metrics["perf/peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.reset()
        return metrics


def report_if_due(
    job: JobConfig,
    plan: RunPlan,
    state: TrainState,
    window: MetricsWindow,
    model: BertForPreTraining,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    evaluation,
    collate_fn,
    device: torch.device,
    rank: int,
    reports: list[dict[str, Any]],
) -> None:
    """On a logging, evaluation or checkpoint step (the same steps on every rank), one `ray.train.report`.
    `evaluation` is this rank's held-out stream, or None.

    Rank 0's checkpoints carry its reports since the previous one: reports that Ray Train had not taken in
    when the run was interrupted still reach MLflow from the checkpoint the run resumes from."""
    is_last = state.step == plan.total_steps
    log_due = state.step % job.train.log_every == 0 or is_last
    eval_due = (
        evaluation is not None
        and job.train.eval_every > 0
        and (state.step % job.train.eval_every == 0 or is_last)
    )
    checkpoint_due = state.step % job.checkpoint.every == 0 or is_last
    if not (log_due or eval_due or checkpoint_due):
        return
    metrics: dict[str, Any] = {
        "step": state.step,
        "data/consumed_samples": state.consumed_samples,
        "data/epoch": state.data_epoch,
    }
    if log_due:
        metrics.update(window.read(), **{"optim/param_norm": _param_norm(model)})
    if eval_due:
        metrics.update(evaluate(model, plan, evaluation, collate_fn, device))
    if rank == 0:
        _console(progress_line(metrics, plan.total_steps))
        reports.append({"timestamp_ms": int(time.time() * 1000), "metrics": metrics})
    if not checkpoint_due:
        ray.train.report(metrics)
        return
    rng_states = _gather_rng_states()
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            save_checkpoint(
                Path(directory), model, optimizer, scheduler, state, rng_states, job.to_dict(), reports
            )
            checkpoint = ray.train.Checkpoint.from_directory(directory)
            reports.clear()
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(state.step))


def report_initial_evaluation(
    plan: RunPlan, model: BertForPreTraining, evaluation, collate_fn, device: torch.device, rank: int
) -> None:
    """The starting model (`checkpoint.init_from`) scored on the held-out split at step 0, before any update:
    the charts then show where it stood on the user's data."""
    metrics = {"step": 0, **evaluate(model, plan, evaluation, collate_fn, device)}
    if rank == 0:
        _console(progress_line(metrics, plan.total_steps) + "  (--init-from, before training)")
    ray.train.report(metrics)


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
    return "  |  ".join(parts)


def _console(line: str) -> None:
    """Not print(): Ray Train patches it to log each line twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def quiet_ray_console() -> None:
    """Ray Train logs every report of every rank at INFO, a long line each (`progress_line` says it once),
    and Ray Data notes each stream it starts and ends: keep those in Ray's log files, off the console."""
    from ray.data._internal.logging import SessionFileHandler
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, SessionFileHandler):
            handler.setLevel(logging.ERROR)


def evaluate(
    model: BertForPreTraining, plan: RunPlan, evaluation, collate_fn, device: torch.device
) -> dict[str, float]:
    """MLM loss, perplexity and accuracy, and NSP accuracy (with NSP on) over the held-out split (each rank
    its slice)."""
    sums = torch.zeros(5, device=device)  # mlm loss sum, mlm correct, mlm count, nsp correct, nsp count
    model.eval()
    with torch.no_grad():
        batches = evaluation.iter_torch_batches(batch_size=plan.batch.micro_batch_size, collate_fn=collate_fn)
        for batch in batches:
            with _autocast(device):
                out = model(**_to_device(batch, device), mlm_normalizer=1.0, nsp_normalizer=1.0)
            values = (out.mlm_loss, out.mlm_correct, out.mlm_count, out.nsp_correct, out.nsp_count)
            sums += torch.stack([v.float() for v in values])
    model.train()
    _all_reduce_sum(sums)
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


def _param_norm(model: nn.Module) -> float:
    """The L2 norm of all weights: a cheap fingerprint that must be the same on every rank."""
    return torch.linalg.vector_norm(
        torch.stack([p.detach().float().norm() for p in model.parameters()])
    ).item()


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: batch[name].to(device, non_blocking=True) for name in MODEL_INPUTS}


def _examples(micro_batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    device = micro_batches[0]["input_ids"].device
    return torch.tensor(sum(b["input_ids"].shape[0] for b in micro_batches), device=device)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU; full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_sum(tensor: torch.Tensor) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)


def _gather_rng_states() -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG states, in rank order (a collective: all ranks call it)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [rng_state()]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, rng_state())
    return states
