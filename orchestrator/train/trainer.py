"""Ray Train's trainer for a run: `build_trainer` (a TorchTrainer over the run's workers) and `fit`.

Shared by `train` (orchestrator.train.driver) and `finetune` (orchestrator.finetune.driver), apart from the
drivers so that fine-tuning does not import pretraining's tracking (MLflow, the dataset input).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Sequence

import ray
import ray.train
from ray.train.torch import TorchTrainer

from common.ray_internals import (
    HEALTH_CHECK_INTERVAL_S_ENV_VAR,
    quiet_local_mode,
    torch_trainer_without_ray_data,
)
from orchestrator.run import Run
from orchestrator.run_dir import RunDir
from orchestrator.tracking.system_metrics import SystemMetricsTarget
from orchestrator.train.resources import ray_worker_count
from orchestrator.train.worker import train_worker


def build_trainer(
    run: Run,
    callbacks: Sequence[ray.train.UserCallback],
    system_metrics: SystemMetricsTarget | None = None,
    loop: Callable[[dict], None] = train_worker,
    ray_data: bool = True,
    in_process: bool = False,
) -> TorchTrainer:
    """Ray Train gets no datasets: each worker builds and executes its own Ray Data stream from the run's
    splits and the position of the checkpoint it resumes from, which only it knows (a DataConfig would build
    the iterators in the controller before that, and Ray's default split passes every block through one
    coordinator actor).

    `system_metrics`: where each node's first worker sends its node's system metrics. `loop` is what every
    rank runs with {"run": run, "system_metrics": ...}; fine-tuning passes its own worker and run, which has
    the same `config` (scaling, checkpoint) and `dir`. `ray_data=False`: the workers use no Ray Data (the
    fine-tuning sets come through the object store): no DatasetManager actor of Ray Train's for them.
    `in_process`: Ray Train's local mode (`num_workers=0`): `loop` runs once, in this process, with no Ray
    cluster; Ray Train then runs no callbacks."""
    scaling = run.config.scaling
    # Ray Train's controller polls the workers every 2 s, and a worker's report waits until the controller
    # has read its previous one: with a report every few steps that wait is most of a short run. Poll more
    # often, but keep a big run's controller under about 1,000 worker polls a second (a user's setting wins).
    poll_s = max(0.1, scaling.num_workers / 1000)
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_S_ENV_VAR, f"{poll_s:g}")
    checkpoint = run.config.checkpoint
    if in_process:
        quiet_local_mode()
    trainer_class = TorchTrainer if ray_data else torch_trainer_without_ray_data
    return trainer_class(
        loop,
        train_loop_config={"run": run, "system_metrics": system_metrics},
        scaling_config=ray.train.ScalingConfig(
            num_workers=0 if in_process else ray_worker_count(scaling, ray.cluster_resources()),
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
            elastic_resize_monitor_interval_s=scaling.elastic_check_s,
        ),
        run_config=ray.train.RunConfig(
            name=run.dir.name,  # Ray Train writes its checkpoints into the run directory
            storage_path=run.dir.storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=checkpoint.keep),
            failure_config=ray.train.FailureConfig(max_failures=checkpoint.max_failures),
            callbacks=list(callbacks),
            # Ray Train's own lines (the worker group starting, each checkpoint saved, and after a worker
            # failure some 40 lines of tracebacks) stay in its log files under the Ray session's logs/train/.
            # The console gets ours: one line per restart (StopOnUserError), and a failure that ends the run
            # is raised here with its cause.
            logging_config=ray.train.LoggingConfig(log_level="CRITICAL"),
        ),
    )


def fit(trainer: TorchTrainer, run_dir: RunDir) -> ray.train.Result:
    """`trainer.fit()` without Ray Train's own list of the run's checkpoints, which the run directory
    replaces (see `orchestrator.run_dir`). Ray's Ctrl-C handler (a graceful abort of the fit) is removed
    again afterwards."""
    run_dir.forget_ray_checkpoint_list()
    handler = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)
