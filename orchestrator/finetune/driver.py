"""The fine-tuning driver: from a pretrained model and two labelled sets to `OUT/final/` and the scores.

Everything that can be wrong with the input is refused first, before Ray Train starts: the settings, the
model folder, the labelled sets (`data.labelled`), the split of the global batch over the
workers (train/'s `plan_batches`) and the cluster's room for them (train/'s `check_resources`). Then one
Ray Train fit per seed, through train/'s `build_trainer` and `fit` with the fine-tuning worker (with
`--num-workers 0` Ray Train's local mode: the worker in this process, and no Ray started); the best seed's
best epoch is exported with the tokenizer to `OUT/final/`, and `OUT/finetune.json` records the scores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import ray.train
import torch

from common import local_ray, storage
from common.console import say
from common.errors import Interrupted, UserError
from common.ray_internals import (
    PRESTART_WORKERS_ENV_VAR,
    start_autoscaling_coordinator,
)
from common.redact import redact, redact_text
from data.labelled import Fields, LabelledData, load_labelled_data
from data.tokenizer import TOKENIZER_FILES
from model import family_of
from orchestrator.config import (
    CheckpointConfig,
    JobConfig,
    MlflowConfig,
    ModelConfig,
    OptimConfig,
    ScalingConfig,
    TrainConfig,
)
from orchestrator.finetune.metrics import PRIMARY, summarize_seeds
from orchestrator.finetune.run import BEST_DIR, RESULT_FILE, FinetuneDir, FinetuneRun, FinetuneSettings
from orchestrator.finetune.tracking import FinetuneTracker
from orchestrator.finetune.worker import finetune_worker
from orchestrator.inference.loading import load_model
from orchestrator.run import BatchPlan, RunPlan, plan_batches
from orchestrator.train.failures import StopOnUserError, user_error_in
from orchestrator.train.resources import check_resources
from orchestrator.train.trainer import build_trainer, fit

if TYPE_CHECKING:
    from orchestrator.tracking.metrics import MetricsCallback


@dataclass
class FinetuneResult:
    scores: dict[str, float]
    """The eval scores: the median over the seeds (one seed: its best epoch's)."""
    per_seed: list[dict[str, Any]]
    """Each seed's best epoch and scores: {"seed", "epoch", "accuracy", ...}."""
    spread: dict[str, dict[str, float]]
    """Per score, min, max and std over the seeds."""
    best_seed: int
    final_dir: str
    task: str
    label_names: list[str] | None
    predictions: list
    """The final model's eval predictions (label names, or numbers)."""
    truncated: dict[str, float]
    """Share of each set's rows cut to the sequence length."""
    mlflow_link: str = ""

    def to_json(self) -> dict[str, Any]:
        """The numbers `--json` prints: the (median) scores, and with several seeds each seed's."""
        out: dict[str, Any] = dict(self.scores)
        if len(self.per_seed) > 1:
            out["seeds"] = self.per_seed
            out["spread"] = self.spread
        return out


def finetune(settings: FinetuneSettings) -> FinetuneResult:
    """Fine-tune `settings.model` (see the module docstring); a UserError for bad input, before any
    worker starts."""
    settings.validate()
    settings = settings.absolute()
    loaded = load_model(settings.model, settings.tokenizer, device="cpu")
    positions = loaded.model.config.max_position_embeddings
    max_seq_length = min(settings.max_seq_length, positions)
    if max_seq_length < settings.max_seq_length:
        say(
            f"--max-seq-length {settings.max_seq_length} is more than the model's {positions} positions: "
            f"texts are cut to {positions} tokens"
        )
    fields = Fields(settings.text_field, settings.pair_field, settings.label_field)
    data = load_labelled_data(
        settings.train, settings.eval, fields, settings.task, loaded.tokenizer, max_seq_length
    )
    batch = _plan_batches(settings)
    steps_per_epoch = math.ceil(len(data.train) / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    warmup_steps = math.ceil(settings.warmup_share * total_steps)
    _say_plan(settings, data, steps_per_epoch, total_steps, warmup_steps)

    scaling = _scaling(settings) if settings.in_process else _start_ray(settings)

    model_config = loaded.model.config
    if settings.dropout is not None:
        dropouts = dict.fromkeys(family_of(model_config).dropout_fields, settings.dropout)
        model_config = dataclasses.replace(model_config, **dropouts)
    plan = RunPlan(
        batch, total_steps, steps_per_epoch, model_config, model_config.pad_token_id, max_seq_length
    )
    encoder = loaded.model.bert.state_dict()
    data_ref, encoder_ref = (data, encoder) if settings.in_process else (ray.put(data), ray.put(encoder))
    out = FinetuneDir(settings.out)
    mlflow = MlflowConfig(enabled=settings.mlflow_enabled, tracking_uri=settings.tracking_uri)
    run_name = f"finetune {os.path.basename(settings.out)}"
    tracker = FinetuneTracker.open(mlflow, settings.model, run_name, settings.experiment_name)
    if tracker.link:
        say(f"MLflow run: {tracker.link}")
    tracker.log(tracker.run_id, params=_params(settings, warmup_steps, max_seq_length, data))
    job = _job_config(settings, scaling, mlflow, total_steps, warmup_steps)
    per_seed: list[dict[str, Any]] = []
    predictions: dict[int, list] = {}
    try:
        for seed in range(settings.first_seed, settings.first_seed + settings.seeds):
            run = FinetuneRun(
                config=_for_seed(job, seed, out),
                dir=out.seed(seed),
                plan=plan,
                epochs=settings.epochs,
                data=data_ref,
                encoder=encoder_ref,
            )
            best = fit_seed(run, tracker, settings.in_process)
            per_seed.append({"seed": seed, "epoch": best["epoch"], **best["scores"]})
            predictions[seed] = best["predictions"]
            say(f"seed {seed}: best epoch {best['epoch']}: {_scores_text(best['scores'])}")
    except (KeyboardInterrupt, SystemExit):
        tracker.end(tracker.run_id, "KILLED")
        raise Interrupted(f"the seeds done so far are in {out.path}") from None
    except BaseException as error:
        tracker.end(tracker.run_id, "FAILED")
        if (user_error := user_error_in(error)) is not None:
            raise user_error from None
        raise

    primary = PRIMARY[data.task]
    best_seed = max(per_seed, key=lambda s: s[primary])["seed"]
    export_final(out, best_seed, loaded.tokenizer_dir)
    scores, spread = summarize_seeds(
        [{k: v for k, v in s.items() if k not in ("seed", "epoch")} for s in per_seed]
    )
    final_predictions = predictions[best_seed]
    if data.label_names is not None:
        final_predictions = [data.label_names[p] for p in final_predictions]
    result = FinetuneResult(
        scores=scores,
        per_seed=per_seed,
        spread=spread,
        best_seed=best_seed,
        final_dir=out.final,
        task=data.task,
        label_names=data.label_names,
        predictions=final_predictions,
        truncated={
            "train": data.train.truncated / len(data.train),
            "eval": data.eval.truncated / len(data.eval),
        },
        mlflow_link=tracker.link,
    )
    storage.write_text(out.summary, json.dumps(_summary(settings, result), indent=2) + "\n")
    best_scores = next(s for s in per_seed if s["seed"] == best_seed)
    tracker.log(
        tracker.run_id,
        metrics={
            **{f"eval/{k}": v for k, v in best_scores.items() if k not in ("seed", "epoch")},
            **{f"median/{k}": v for k, v in scores.items()},
        },
        tags={"best_seed": best_seed, "best_epoch": best_scores["epoch"], "final_dir": out.final},
    )
    tracker.log_model(out.final)
    tracker.end(tracker.run_id, "FINISHED")
    return result


def fit_seed(run: FinetuneRun, tracker: FinetuneTracker, in_process: bool) -> dict[str, Any]:
    """One seed's Ray Train fit, recorded in its own nested MLflow run; its best epoch, scores and
    predictions."""
    storage.remove_dir(run.dir.path)  # a new fit: nothing of an earlier call in the way
    seed = run.config.train.seed
    child_id, callback = tracker.child(seed, run.dir)
    try:
        if in_process:
            result = _fit_in_process(run, callback)
        else:
            callbacks = [c for c in (callback, StopOnUserError()) if c is not None]
            result = fit(build_trainer(run, callbacks, loop=finetune_worker, ray_data=False), run.dir)
    except (KeyboardInterrupt, SystemExit):
        tracker.end(child_id, "KILLED")
        raise
    except BaseException:
        tracker.end(child_id, "FAILED")
        raise
    with result.checkpoint.as_directory() as directory:
        best = json.loads(Path(directory, RESULT_FILE).read_text())
    tracker.log(child_id, metrics={f"best/{k}": v for k, v in best["scores"].items()})
    tracker.end(child_id, "FINISHED")
    return best


def _fit_in_process(run: FinetuneRun, callback: MetricsCallback | None) -> ray.train.Result:
    """Ray Train's local mode: the one worker runs in this process, and its reports go straight to the
    seed's MLflow callback (no controller runs callbacks there)."""

    def on_report(metrics: dict[str, Any], checkpoint: ray.train.Checkpoint | None) -> None:
        if callback is not None:
            callback.send(metrics, checkpoint)

    run = dataclasses.replace(run, on_report=on_report)
    try:
        return fit(build_trainer(run, [], loop=finetune_worker, ray_data=False, in_process=True), run.dir)
    finally:
        if callback is not None:
            callback.close()


def _start_ray(settings: FinetuneSettings) -> ScalingConfig:
    """Ray for the workers (a new local one unless RAY_ADDRESS names a cluster), checked for their room."""
    os.environ.setdefault(PRESTART_WORKERS_ENV_VAR, "0")  # a new local Ray: no idle workers that none takes
    local_ray.init_ray(log_to_driver=True)
    start_autoscaling_coordinator()
    scaling = _scaling(settings)
    check_resources(scaling, ray.cluster_resources(), [n["Resources"] for n in ray.nodes() if n["Alive"]])
    return scaling


def _scaling(settings: FinetuneSettings) -> ScalingConfig:
    """The workers' section of train/'s config, with no CPUs kept for Ray Data (the sets go through the
    object store): a worker runs as many torch threads as it holds CPUs. In process: one worker, with the
    threads torch would use (the machine's cores)."""
    if settings.in_process and settings.use_gpu and not torch.cuda.is_available():
        raise UserError("--gpu with --num-workers 0: torch sees no CUDA GPU in this process")
    threads = torch.get_num_threads() if settings.in_process else max(1, int(settings.cpus_per_worker))
    return ScalingConfig(
        num_workers=settings.ranks,
        use_gpu=settings.use_gpu,
        cpus_per_worker=settings.cpus_per_worker,
        threads_per_worker=threads,
        data_cpus=0.0,
    )


def _plan_batches(settings: FinetuneSettings) -> BatchPlan:
    """train/'s split of the global batch over the workers, its messages in this command's flags."""
    try:
        micro_batch_size = settings.micro_batch_size or settings.batch_size
        return plan_batches(settings.batch_size, micro_batch_size, settings.ranks)
    except UserError as error:
        message = str(error).replace("train.global_batch_size", "--batch-size")
        raise UserError(message.replace("train.micro_batch_size", "--micro-batch-size")) from None


def _job_config(
    settings: FinetuneSettings,
    scaling: ScalingConfig,
    mlflow: MlflowConfig,
    total_steps: int,
    warmup_steps: int,
) -> JobConfig:
    """The settings as train/'s config sections (what build_trainer, the optimizer and schedule read); each
    seed's run takes its seed and folder from `_for_seed`."""
    return JobConfig(
        model=ModelConfig(dropout=settings.dropout if settings.dropout is not None else 0.1),
        train=TrainConfig(
            global_batch_size=settings.batch_size,
            micro_batch_size=settings.micro_batch_size or settings.batch_size,
            max_steps=total_steps,
            log_every=settings.log_every,
        ),
        optim=OptimConfig(lr=settings.lr, weight_decay=settings.weight_decay, warmup_steps=warmup_steps),
        scaling=scaling,
        checkpoint=CheckpointConfig(keep=1, max_failures=0),
        mlflow=mlflow,
    )


def _for_seed(job: JobConfig, seed: int, out: FinetuneDir) -> JobConfig:
    """The job of one seed: its seed, and its folder under `out` for its checkpoints."""
    checkpoint = dataclasses.replace(job.checkpoint, storage_path=out.path, run_name=out.seed(seed).name)
    return dataclasses.replace(job, train=dataclasses.replace(job.train, seed=seed), checkpoint=checkpoint)


def export_final(out: FinetuneDir, seed: int, tokenizer_dir: str) -> None:
    """Seed `seed`'s best model (HF format) into `out/final/`, with the tokenizer files."""
    storage.remove_dir(out.final)
    storage.copy_dir(storage.join(out.seed(seed).path, BEST_DIR), out.final)
    storage.remove_file(storage.join(out.final, RESULT_FILE))
    for name in TOKENIZER_FILES:
        source = storage.join(tokenizer_dir, name)
        if storage.is_file(source):
            storage.write_text(storage.join(out.final, name), storage.read_text(source))


def _say_plan(
    settings: FinetuneSettings, data: LabelledData, steps_per_epoch: int, total_steps: int, warmup: int
) -> None:
    first, last = settings.first_seed, settings.first_seed + settings.seeds - 1
    seeds = f"seed {first}" if first == last else f"seeds {first}-{last}"
    kind = f"{data.num_labels} classes ({_names(data.label_names)})" if data.label_names else "regression"
    say(
        f"Fine-tuning {redact_text(settings.model)}: {len(data.train):,} training rows, "
        f"{len(data.eval):,} eval rows, {kind}."
    )
    for name, split in (("train", data.train), ("eval", data.eval)):
        if split.truncated:
            say(
                f"  {split.truncated:,} of the {name} rows ({split.truncated / len(split):.1%}) are longer "
                f"than {data.max_seq_length} tokens and were cut"
            )
    say(
        f"  {settings.epochs} epochs x {steps_per_epoch} steps of {settings.batch_size} examples "
        f"{_workers_text(settings.num_workers)}; AdamW lr {settings.lr:g}, linear warmup {warmup} steps "
        f"({settings.warmup_share:.0%} of {total_steps}) then linear decay; {seeds}."
    )


def _workers_text(num_workers: int) -> str:
    return f"over {num_workers} worker(s)" if num_workers else "in this process"


def _names(names: list[str]) -> str:
    return ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")


def _scores_text(scores: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in scores.items())


def _params(settings: FinetuneSettings, warmup_steps: int, max_seq_length: int, data: LabelledData) -> dict:
    params = {k: v for k, v in dataclasses.asdict(settings).items() if v is not None}
    return params | {
        "warmup_steps": warmup_steps,
        "effective_max_seq_length": max_seq_length,
        "num_labels": data.num_labels,
        "train_rows": len(data.train),
        "eval_rows": len(data.eval),
    }


def _summary(settings: FinetuneSettings, result: FinetuneResult) -> dict[str, Any]:
    return {
        "settings": redact(dataclasses.asdict(settings)),
        **dataclasses.asdict(result),
    }
