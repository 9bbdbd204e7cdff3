"""The fine-tuning worker: what Ray Train runs on every rank for one seed.

Pretraining's pieces with a classification head: the model is the family's classifier
(`model.heads.BertForSequenceClassification`, `model.modernbert_heads.ModernBertForSequenceClassification`)
on the pretrained encoder's weights, wrapped for DDP by `ray.train.torch.prepare_model`; the optimizer and
schedule are train/'s (AdamW, linear warmup and decay); a step is train/'s `TrainStep`, whose loss
accounting makes the update that of one big batch: the sum of the examples' losses divided by the number of
examples in the global batch (all micro-steps, all ranks), whatever the worker count.

The data order is a function of (seed, epoch) alone: each epoch is a seeded permutation of the training rows,
cut into global batches (the last one may be short), and each rank takes its fixed slice of every global
batch (`batch_slices`, as in pretraining), cut into the plan's micro-batches. A rank whose slice of a short
last batch is empty runs one example that counts nothing, so that DDP still synchronises.

After each epoch every rank scores its slice of the eval set; rank 0 gathers the predictions, computes the
scores and keeps the best epoch's weights, which its last report carries as the checkpoint (HF format with
the labels, and the eval predictions). Every rank calls `ray.train.report` on the same steps.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from common import storage
from common.batch import IGNORE_INDEX
from common.console import say
from data import batch_slices
from model import family_of
from orchestrator.finetune.metrics import PRIMARY, scores
from orchestrator.finetune.run import BEST_DIR, RESULT_FILE, FinetuneRun
from orchestrator.run import plan_batches
from orchestrator.train.checkpoints import Trainables
from orchestrator.train.optim import build_optimizer, build_scheduler
from orchestrator.train.step import TrainStep, all_reduce_sum, autocast, world_size
from orchestrator.train.worker import worker_placement

STEP_SUMS = ("loss", "correct", "examples")


def finetune_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: `loop_config` is {"run": the driver's FinetuneRun}."""
    FinetuneWorker(loop_config["run"]).train()


class ClassifierStep(TrainStep):
    """TrainStep with the classifier's loss normaliser (the counted examples of the global batch)."""

    def normalizers(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        counted = sum(_counted(b["labels"]).sum() for b in micro_batches).float()
        all_reduce_sum(counted)
        return {"normalizer": counted}

    def batch_sums(self, batch: dict[str, torch.Tensor], out) -> torch.Tensor:
        counted = _counted(batch["labels"])
        if out.logits.shape[1] == 1:  # regression: no accuracy
            correct = torch.zeros((), device=counted.device)
        else:
            correct = ((out.logits.argmax(dim=-1) == batch["labels"]) & counted).sum()
        return torch.stack([out.loss.detach(), correct.float(), counted.sum().float()])


def _counted(labels: torch.Tensor) -> torch.Tensor:
    """(B,) True for the examples that count (not the stand-in of an empty share)."""
    return ~labels.isnan() if labels.is_floating_point() else labels != IGNORE_INDEX


class FinetuneWorker:
    def __init__(self, run: FinetuneRun):
        self.run = run
        config = run.config
        self.rank, self.world_size, self.device = worker_placement(config.scaling)
        self.data = _value(run.data)
        torch.manual_seed(config.train.seed)  # the same head initialisation on every rank
        self.classifier_class = family_of(run.plan.model).classifier_class
        self.model = self.classifier_class(run.plan.model, self.data.num_labels)
        self.model.bert.load_state_dict(_value(run.encoder))
        self.model.to(self.device)
        optimizer = build_optimizer(self.model, config.optim)
        self.trainables = Trainables(
            self.model, optimizer, build_scheduler(optimizer, config.optim, run.plan.total_steps)
        )
        torch.manual_seed(config.train.seed * 1000 + self.rank + 1)  # each rank its own dropout
        ddp_model = ray.train.torch.prepare_model(self.model, move_to_device=False)
        self.train_step = ClassifierStep(self.trainables, config.optim.max_grad_norm, ddp_model)
        self.batch = plan_batches(
            config.train.global_batch_size, config.train.micro_batch_size, self.world_size, uneven=True
        )
        self.step = 0
        self.sums = torch.zeros(len(STEP_SUMS), device=self.device)
        self.window_steps = 0
        self.best: dict[str, Any] | None = None  # rank 0: the best epoch's scores, weights, predictions

    def train(self) -> None:
        plan = self.run.plan
        for epoch in range(1, self.run.epochs + 1):
            order = epoch_permutation(len(self.data.train), self.run.config.train.seed, epoch)
            for index in range(plan.steps_per_epoch):
                global_rows = order[index * plan.batch.global_batch_size :][: plan.batch.global_batch_size]
                step = self.train_step(self.micro_batches(global_rows))
                self.sums += step["sums"]
                self.window_steps += 1
                self.step += 1
                last_of_epoch = index == plan.steps_per_epoch - 1
                if last_of_epoch or self.step % self.run.config.train.log_every == 0:
                    self.report(epoch, step, evaluate=last_of_epoch)

    def micro_batches(self, global_rows: np.ndarray) -> list[dict[str, torch.Tensor]]:
        """This rank's slice of the global batch in the plan's micro-batches (a stand-in for an empty one)."""
        start, stop = batch_slices(len(global_rows), self.world_size)[self.rank]
        parts = np.array_split(global_rows[start:stop], self.batch.accumulation_steps)
        return [
            self.to_device(self.collate(rows if len(rows) else global_rows[:1], len(rows) == 0))
            for rows in parts
        ]

    def collate(self, rows: np.ndarray, stand_in: bool = False) -> dict[str, np.ndarray]:
        batch = self.data.train.batch(rows, self.run.plan.pad_token_id)
        if stand_in:
            batch["labels"] = np.full_like(
                batch["labels"], np.nan if self.data.task == "regression" else -100
            )
        return batch

    def to_device(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for name, v in batch.items()}

    def report(self, epoch: int, step: dict[str, torch.Tensor], evaluate: bool) -> None:
        """The training metrics since the last report; after an epoch, its eval scores too (and on the
        last epoch the best epoch's model as the checkpoint)."""
        all_reduce_sum(self.sums)
        loss, correct, examples = self.sums.tolist()
        metrics: dict[str, Any] = {
            "step": self.step,
            "epoch": epoch,
            "train/loss": loss / self.window_steps,
            "optim/learning_rate": step["learning_rate"].item(),
            "optim/grad_norm": step["grad_norm"].item(),
        }
        if self.data.task == "classification":
            metrics["train/accuracy"] = correct / max(examples, 1)
        self.sums.zero_()
        self.window_steps = 0
        if evaluate:
            metrics |= self.evaluate(epoch)
        if self.rank == 0:
            say(progress_line(metrics, self.run))
        if not (evaluate and epoch == self.run.epochs):
            self.publish(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if self.rank == 0:
                metrics |= {f"best/{name}": value for name, value in self.best["scores"].items()}
                metrics["best/epoch"] = self.best["epoch"]
                self.save_best(Path(directory))
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            self.publish(metrics, checkpoint)

    def publish(self, metrics: dict[str, Any], checkpoint: ray.train.Checkpoint | None = None) -> None:
        """`ray.train.report`. In process (Ray Train's local mode) no controller stores the checkpoint in
        the seed's folder, as Ray Train does, or runs the callbacks: done here."""
        if self.run.in_process and checkpoint is not None:
            stored = storage.join(self.run.dir.path, BEST_DIR)
            storage.remove_dir(stored)
            storage.copy_dir(checkpoint.path, stored)
            checkpoint = ray.train.Checkpoint(stored)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=BEST_DIR)
        if self.run.on_report is not None:
            self.run.on_report(metrics, checkpoint)

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Score the eval set (each rank its slice); rank 0 keeps the weights of the best epoch so far."""
        split = self.data.eval
        start, stop = batch_slices(len(split), self.world_size)[self.rank]
        outputs = []
        self.model.eval()
        with torch.no_grad():
            for first in range(start, stop, self.batch.micro_batch_size):
                rows = np.arange(first, min(first + self.batch.micro_batch_size, stop))
                batch = self.to_device(split.batch(rows, self.run.plan.pad_token_id))
                batch.pop("labels")
                with autocast(self.device):
                    outputs.append(self.model(**batch).logits.float().cpu())
        self.model.train()
        logits = torch.cat(outputs).numpy() if outputs else np.zeros((0, self.data.num_labels), np.float32)
        if world_size() > 1:
            gathered: list[Any] = [None] * world_size()
            dist.all_gather_object(gathered, logits)
            logits = np.concatenate(gathered)
        predictions = logits[:, 0] if self.data.task == "regression" else logits.argmax(axis=1)
        epoch_scores = scores(self.data.task, predictions, split.labels)
        primary = PRIMARY[self.data.task]
        if self.rank == 0 and (self.best is None or epoch_scores[primary] > self.best["scores"][primary]):
            self.best = {
                "epoch": epoch,
                "scores": epoch_scores,
                "predictions": predictions.tolist(),
                "weights": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
            }
        return {f"eval/{name}": value for name, value in epoch_scores.items()}

    def save_best(self, directory: Path) -> None:
        """The best epoch's model in HF format with its labels, and its eval predictions and scores."""
        model = self.classifier_class(self.run.plan.model, self.data.num_labels)
        model.load_state_dict(self.best["weights"])
        model.save_hf(directory, self.data.label_names)
        result = {k: self.best[k] for k in ("epoch", "scores", "predictions")}
        (directory / RESULT_FILE).write_text(json.dumps(result) + "\n")


def _value(value: Any) -> Any:
    """What the driver handed over: through Ray's object store, or in process the object itself."""
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def epoch_permutation(rows: int, seed: int, epoch: int) -> np.ndarray:
    """The training rows' order in `epoch`: a function of (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(rows)


def progress_line(metrics: dict[str, Any], run: FinetuneRun) -> str:
    parts = [
        f"seed {run.config.train.seed}  epoch {metrics['epoch']}/{run.epochs}  "
        f"step {metrics['step']}/{run.plan.total_steps}"
    ]
    train = f"loss {metrics['train/loss']:.4f}"
    if "train/accuracy" in metrics:
        train += f"  acc {metrics['train/accuracy']:.3f}"
    parts.append(train + f"  lr {metrics['optim/learning_rate']:.2e}")
    evaluated = [f"{k.removeprefix('eval/')} {v:.4f}" for k, v in metrics.items() if k.startswith("eval/")]
    if evaluated:
        parts.append("eval " + "  ".join(evaluated))
    return "  |  ".join(parts)
