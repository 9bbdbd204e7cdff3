"""A fine-tuning run: the settings from the command line, and what the driver hands every rank for one seed.

`FinetuneRun` has the shape of train/'s `Run` where the shared pieces read it: `config` is a `JobConfig`
(its train, optim, scaling, checkpoint and model sections, filled from the settings), `dir` the seed's run
directory, `plan` a `RunPlan` (the batch split, steps, the model's sizes). The labelled data and the encoder's
weights go to the workers once, through Ray's object store.

Output folder layout (`FinetuneDir`):
    final/          the best model: HF BertForSequenceClassification with id2label/label2id and the tokenizer
    finetune.json   the settings, each seed's scores, their medians and spread, the final model's predictions
    seed_<k>/       Ray Train's folder of seed k; seed_<k>/best/ is that seed's best epoch (HF format)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray

from common import storage
from common.errors import UserError
from data.labelled import TASKS
from orchestrator.config import JobConfig
from orchestrator.run import RunPlan
from orchestrator.run_dir import RunDir

if TYPE_CHECKING:
    import ray.train

    from data.labelled import LabelledData

BEST_DIR = "best"
"""In a seed's folder: its best epoch's model (the checkpoint of its last report)."""
RESULT_FILE = "finetune_result.json"
"""In a seed's best checkpoint: its epoch, scores and eval predictions."""
SUMMARY_FILE = "finetune.json"
WARMUP_SHARE = 0.1


@dataclass(frozen=True)
class FinetuneSettings:
    model: str
    """A run's final/, a training checkpoint, or an HF BERT folder (local or bucket)."""
    train: str
    eval: str
    out: str
    text_field: str = "text"
    pair_field: str | None = None
    label_field: str = "label"
    task: str = "classification"
    epochs: int = 3
    lr: float = 2e-5
    batch_size: int = 32
    """The global batch: examples per optimizer step over all workers."""
    micro_batch_size: int | None = None
    """Most examples a worker runs at once (None: the whole share of the global batch)."""
    max_seq_length: int = 128
    seeds: int = 1
    """Runs with seeds first_seed .. first_seed + seeds - 1."""
    first_seed: int = 0
    warmup_share: float = WARMUP_SHARE
    weight_decay: float = 0.01
    dropout: float | None = None
    """Hidden and attention dropout; None: the model's own (BERT's 0.1)."""
    log_every: int = 10
    num_workers: int = 1
    """Ray Train workers (DDP ranks); 0: the fit runs in this process (Ray Train's local mode, no Ray)."""
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    tokenizer: str | None = None
    mlflow_enabled: bool = True
    tracking_uri: str = ""
    experiment_name: str = ""
    """"" : the pretraining run's experiment when the model has one, else bert-pretrain's default."""

    def validate(self) -> None:
        """Each setting on its own, named as its flag (before anything is read)."""
        if self.task not in TASKS:
            raise UserError(f"--task {self.task!r} is not one of {', '.join(TASKS)}")
        positive = {
            "--epochs": self.epochs,
            "--batch-size": self.batch_size,
            "--micro-batch-size": self.micro_batch_size,
            "--max-seq-length": self.max_seq_length,
            "--seeds": self.seeds,
            "--log-every": self.log_every,
            "--cpus-per-worker": self.cpus_per_worker,
        }
        for flag, value in positive.items():
            if value is not None and value <= 0:
                raise UserError(f"{flag} must be positive, got {value}")
        if self.max_seq_length < 3:
            raise UserError(f"--max-seq-length must hold [CLS], a token and [SEP], got {self.max_seq_length}")
        if self.num_workers < 0:
            raise UserError(f"--num-workers must be >= 0 (0: in this process), got {self.num_workers}")
        if self.first_seed < 0:
            raise UserError(f"--first-seed must be >= 0, got {self.first_seed}")
        if self.lr < 0:
            raise UserError(f"--lr must be >= 0, got {self.lr}")
        if not 0 <= self.warmup_share < 1:
            raise UserError(f"--warmup must be in [0, 1), got {self.warmup_share}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")

    @property
    def in_process(self) -> bool:
        """`--num-workers 0`: Ray Train's local mode, the fit in this process."""
        return self.num_workers == 0

    @property
    def ranks(self) -> int:
        """The fit's ranks: its workers, or the one in process."""
        return max(self.num_workers, 1)

    def absolute(self) -> FinetuneSettings:
        """Local paths made absolute (the workers run in other folders)."""
        return dataclasses.replace(
            self,
            model=storage.absolute(self.model),
            train=storage.absolute(self.train),
            eval=storage.absolute(self.eval),
            out=storage.absolute(self.out),
            tokenizer=storage.absolute(self.tokenizer),
        )


@dataclass(frozen=True)
class FinetuneDir:
    """The output folder `out` (local or a bucket URI): the one owner of the paths in it."""

    path: str

    @property
    def final(self) -> str:
        return storage.join(self.path, "final")

    @property
    def summary(self) -> str:
        return storage.join(self.path, SUMMARY_FILE)

    def seed(self, seed: int) -> RunDir:
        """Seed `seed`'s run directory: Ray Train's storage for that fit."""
        return RunDir(self.path, f"seed_{seed}")


@dataclass(frozen=True)
class FinetuneRun:
    config: JobConfig
    """The settings as train/'s sections: train (batch, seed, log_every), optim, scaling, checkpoint."""
    dir: RunDir
    plan: RunPlan
    epochs: int
    data: ray.ObjectRef | LabelledData
    """The `LabelledData` (tokenized train and eval sets, task, labels); in process, the object itself."""
    encoder: ray.ObjectRef | dict
    """The pretrained encoder's state dict (`BertModel`, `bert.` prefix stripped)."""
    on_report: Callable[[dict[str, Any], ray.train.Checkpoint | None], None] | None = None
    """In process only (`--num-workers 0`, Ray Train's local mode, where no controller runs Ray Train's
    callbacks): what each report's metrics and checkpoint go to."""

    @property
    def in_process(self) -> bool:
        return self.on_report is not None
