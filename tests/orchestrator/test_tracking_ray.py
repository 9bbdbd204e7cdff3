"""The metrics callback in a real Ray Train run: it logs from the controller, flushing as training ends."""

from __future__ import annotations

import ray
import ray.train
from mlflow import MlflowClient
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from orchestrator.tracking import MlflowConfig, RunTracker

STEPS = 5


def report_steps() -> None:
    rank = ray.train.get_context().get_world_rank()
    for step in range(1, STEPS + 1):
        ray.train.report({"step": step, "loss": 10.0 / step if rank == 0 else -1.0, "phase": "train"})


def test_ray_train_run_logs_every_reported_step(tmp_path, ray_session):
    config = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment_name="ray")
    tracker = RunTracker.open(config, tmp_path / "run", "ray-run")
    trainer = TorchTrainer(
        report_steps,
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(
            name="ray-run", storage_path=str(tmp_path / "storage"), callbacks=[tracker.callback()]
        ),
    )
    trainer.fit()
    tracker.end("FINISHED")

    # No waiting here: the callback sent everything before `fit` returned.
    loss = MlflowClient(tracker.tracking_uri).get_metric_history(tracker.run_id, "loss")
    expected = [(step, 10.0 / step) for step in range(1, STEPS + 1)]
    assert sorted((metric.step, metric.value) for metric in loss) == expected
