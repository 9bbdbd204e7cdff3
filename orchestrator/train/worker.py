"""The training worker: what Ray Train runs on every rank, as one object that holds the rank's state.

`Worker(run)` builds the rank's stream, model, optimizer and schedule, restores the run's newest intact
checkpoint (or the initial weights), and wraps the model in DDP; `train()` then reads top to bottom: fetch the
step's micro-batches, run the step, and report. Each component decides when it is due: the metrics window
when to log, the evaluator when to evaluate, the prober when to score the downstream probes, the checkpointer
when to save. Every rank calls `ray.train.report` on the same steps; only rank 0 writes checkpoint files and
console lines.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from common import storage
from common.console import say
from common.ray_internals import quiet_ray_console
from data import make_collate_fn, rank_eval_stream
from model import compile_model, family_of
from orchestrator.config import ScalingConfig
from orchestrator.run import Run, plan_step_batches
from orchestrator.tracking.system_metrics import start_node_monitor
from orchestrator.train.batches import start_train_stream, step_batches
from orchestrator.train.checkpointer import Checkpointer
from orchestrator.train.checkpoints import (
    ResumePoint,
    Trainables,
    TrainState,
    find_resume_checkpoint,
    init_optimizer_state_from,
    init_weights_from,
    load_checkpoint,
)
from orchestrator.train.evaluation import Evaluator
from orchestrator.train.faults import FaultInjector
from orchestrator.train.metrics_window import MetricsWindow, progress_line
from orchestrator.train.optim import build_optimizer, build_scheduler
from orchestrator.train.probes import Prober
from orchestrator.train.step import TrainStep


def train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: `loop_config` is {"run": the driver's Run, "system_metrics":
    where this node's system metrics go, or None}."""
    monitor = start_node_monitor(loop_config.get("system_metrics"), ray.train.get_context().get_local_rank())
    try:
        Worker(loop_config["run"]).train()
    finally:
        if monitor is not None:
            monitor.stop()


def worker_placement(scaling: ScalingConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this Ray Train worker, its torch threads set and Ray's per-report lines
    kept off the console: what every worker loop does first."""
    quiet_ray_console()
    context = ray.train.get_context()
    # Ray Train's local mode (the loop in the driver's process) takes a GPU whenever torch sees one.
    device = ray.train.torch.get_device() if scaling.use_gpu else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(scaling.threads_per_worker)
    return context.get_world_rank(), context.get_world_size(), device


class Worker:
    def __init__(self, run: Run):
        self.run = run
        config = run.config
        self.rank, self.world_size, self.device = worker_placement(config.scaling)
        torch.manual_seed(config.train.seed)  # the same initial weights on every rank

        # The run directory is the record of checkpoints, not Ray Train's list (see orchestrator.run_dir).
        resume = find_resume_checkpoint(run.dir)
        rows = start_train_stream(run, resume.position, self.rank, self.world_size)  # first: see there
        family = family_of(run.plan.model)
        self.model = family.model_class(run.plan.model).to(self.device)
        optimizer = build_optimizer(self.model, config.optim)
        self.trainables = Trainables(
            self.model, optimizer, build_scheduler(optimizer, config.optim, run.plan.total_steps)
        )
        torch.manual_seed(config.train.seed * 1000 + self.rank + 1)  # each rank its own dropout
        self.state = self.restore(resume)
        ddp_model = ray.train.torch.prepare_model(self.model, move_to_device=False)
        if config.model.compile:
            compile_model(self.model)
        self.train_step = TrainStep(self.trainables, config.optim.max_grad_norm, ddp_model)

        collate = make_collate_fn(config.masking, run.plan.max_seq_length, run.plan.pad_token_id)
        # Ray Train may start an elastic run with fewer workers than planned: split for the actual count.
        schedule = run.plan.schedule
        plans = plan_step_batches(schedule, config.train.micro_batch_size, self.world_size, uneven=True)
        micro_batch_sizes = (
            plans[schedule.batch_size(step)].micro_batch_sizes(self.rank)
            for step in range(self.state.step, run.plan.total_steps)
        )
        self.batches = step_batches(rows, micro_batch_sizes, collate, self.device)
        self.metrics = MetricsWindow(
            self.device, self.model.config, config.train.log_every, run.plan.total_steps
        )
        self.checkpointer = Checkpointer(run, self.trainables, self.rank)
        self.faults = FaultInjector(config.train.fail_at_step, run.dir, self.rank, self.world_size)
        self.evaluator = None
        if run.eval_split is not None:
            stream = rank_eval_stream(
                run.eval_split, config.masking, config.train.seed, self.rank, self.world_size
            )
            self.evaluator = Evaluator(run, stream, collate, self.device)
        self.prober = None
        if run.probes:
            self.prober = Prober(
                run.probes, run.plan.total_steps, run.plan.batch.micro_batch_size, self.device, self.rank
            )
        if self.rank == 0:
            say(f"Attention: {family.attention_path(self.model.config, self.device)}.")

    def restore(self, resume: ResumePoint) -> TrainState:
        """Resume from the run's newest complete and intact checkpoint (after a worker failure, or when the
        same run is started again); else start from `checkpoint.init_from`'s weights, or from scratch."""
        data_order = self.run.plan.data_order  # the driver checked that a resume keeps it
        if resume.path is not None:
            with storage.local_input(resume.path) as directory:
                state = load_checkpoint(Path(directory), self.trainables, self.rank)
            return dataclasses.replace(state, data_order=data_order)
        checkpoint = self.run.config.checkpoint
        if checkpoint.init_from:
            init_weights_from(self.model, checkpoint.init_from)
            if checkpoint.init_optimizer_state:
                init_optimizer_state_from(self.trainables.optimizer, checkpoint.init_from)
        return TrainState(world_size=self.world_size, data_order=data_order)

    def train(self) -> None:
        if self.state.step == 0 and self.run.config.checkpoint.init_from and self.evaluator is not None:
            self.report_initial_evaluation()
            self.metrics.reset()  # the first window times training steps only
        while self.state.step < self.run.plan.total_steps:
            micro_batches = next(self.batches)
            self.faults.kill_if_due(self.state.step + 1)
            self.metrics.add(self.train_step(micro_batches))
            self.state = self.advance()
            self.report()

    def advance(self) -> TrainState:
        """The position after the step just trained."""
        step, plan = self.state.step + 1, self.run.plan
        data_epoch, base_batches_in_epoch = divmod(
            plan.schedule.base_batches_before(step), plan.base_batches_per_epoch
        )
        return dataclasses.replace(
            self.state,
            step=step,
            consumed_samples=plan.schedule.examples_before(step),
            data_epoch=data_epoch,
            data_step_in_epoch=base_batches_in_epoch,
            world_size=self.world_size,
        )

    def report(self) -> None:
        """On a logging, evaluation or checkpoint step (the same steps on every rank), one report."""
        step = self.state.step
        log = self.metrics.due(step)
        evaluate = self.evaluator is not None and self.evaluator.due(step)
        probe = self.prober is not None and self.prober.due(step)
        if not (log or evaluate or probe or self.checkpointer.due(step)):
            return
        plan = self.run.plan
        metrics: dict[str, Any] = {
            "step": step,
            "train/global_batch_size": plan.schedule.batch_size(step - 1),
            "data/consumed_samples": self.state.consumed_samples,
            "data/consumed_tokens": round(self.state.consumed_samples * plan.tokens_per_example),
            "data/epoch": self.state.data_epoch,
        }
        if log:
            metrics |= self.metrics.read() | {"optim/param_norm": _param_norm(self.model)}
        if evaluate:
            metrics |= self.evaluator.evaluate(self.model)
        if probe:
            metrics |= self.prober.probe(self.model.bert, step)
        if self.rank == 0:
            line = progress_line(metrics, plan.total_steps)
            if plan.schedule.grows:  # the batch warmup on the console too
                line += f"  |  batch {metrics['train/global_batch_size']}"
            say(line)
        self.checkpointer.report(metrics, self.state)

    def report_initial_evaluation(self) -> None:
        """The starting model (`checkpoint.init_from`) scored on the held-out split at step 0, before any
        update: the charts then show where it stood on the user's data."""
        metrics = {"step": 0, **self.evaluator.evaluate(self.model)}
        if self.rank == 0:
            say(progress_line(metrics, self.run.plan.total_steps) + "  (--init-from, before training)")
        ray.train.report(metrics)


def _param_norm(model: torch.nn.Module) -> float:
    """The L2 norm of all weights: a cheap fingerprint that must be the same on every rank."""
    return torch.linalg.vector_norm(
        torch.stack([p.detach().float().norm() for p in model.parameters()])
    ).item()
