"""The training driver: from a job config to a trained model in `<storage_path>/<run_name>/final/`.

Resolves the config (absolute paths, worker flags), builds the tokenizer and prepared data when they are
missing or stale, works out the batch split and checks the cluster can hold the run, then runs Ray Train's
`TorchTrainer` with `orchestrator.train.loop.train_worker` on every rank, and exports the last checkpoint in
HF format with the tokenizer. Starting the same run again (same storage path and run name) resumes it: Ray
Train reloads the run's checkpoint list from storage and the workers restore the latest one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.constants import (
    ENABLE_PREEMPTION_WATCHER_ENV_VAR,
    HEALTH_CHECK_INTERVAL_S_ENV_VAR,
)

import data
from data import storage
from data.manifest import MANIFEST_FILE
from data.readers import BUILTIN_CORPUS_WORD  # the embedded default; data resolves it
from orchestrator.config import JobConfig, WorkerCount, apply_scaling_flags, config_from_dict
from orchestrator.errors import UserError
from orchestrator.run_dir import update_run_json
from orchestrator.tracking.run import RunTracker, ray_job_tags
from orchestrator.train.checkpoints import check_init_from, export_final, read_train_state
from orchestrator.train.loop import RunPlan, epoch_order, train_worker
from orchestrator.train.resources import check_resources, plan_batches, ray_worker_count

TOKENIZER_SETTINGS_FILE = "bert_pretrain_tokenizer.json"  # written beside a tokenizer that `train` built


@dataclass(frozen=True)
class TrainingResult:
    run_dir: str
    """Local folder or bucket URI."""
    final_dir: str
    steps: int
    metrics: dict


def resolve_job(
    job: JobConfig,
    num_workers: WorkerCount | None = None,
    use_gpu: bool | None = None,
    init_from: str | None = None,
) -> JobConfig:
    """Apply the command-line flags and make local paths absolute (the workers run in other folders)."""
    job = apply_scaling_flags(job, num_workers, use_gpu)
    checkpoint = dataclasses.replace(
        job.checkpoint,
        storage_path=storage.absolute(job.checkpoint.storage_path),
        init_from=storage.absolute(init_from or job.checkpoint.init_from),
    )
    corpus = [entry if entry == BUILTIN_CORPUS_WORD else storage.absolute(entry) for entry in job.data.corpus]
    data_paths = dataclasses.replace(
        job.data,
        corpus=corpus,
        tokenizer_dir=storage.absolute(job.data.tokenizer_dir),
        prepared_dir=storage.absolute(job.data.prepared_dir),
    )
    resolved = dataclasses.replace(job, checkpoint=checkpoint, data=data_paths)
    return config_from_dict(resolved.to_dict())  # validate again: the flags may be out of range


def train(job: JobConfig, callbacks: Sequence[ray.train.UserCallback] = ()) -> TrainingResult:
    """Run (or resume) the training run of a resolved job config; return where the final model is."""
    init_ray()
    plan_batch = plan_batches(
        job.train.global_batch_size,
        job.train.micro_batch_size,
        job.scaling.num_workers,
        uneven=job.scaling.elastic,
    )
    check_resources(job.scaling, ray.cluster_resources(), [n["Resources"] for n in ray.nodes() if n["Alive"]])
    if job.checkpoint.init_from:
        check_init_from(job.checkpoint.init_from)
    manifest = ensure_prepared_data(job)
    splits = load_splits(job, manifest)
    plan = plan_run(job, manifest, plan_batch, splits["train_split"])
    run_dir = storage.join(job.checkpoint.storage_path, job.checkpoint.run_name)
    resolved = job.to_dict()
    update_run_json(run_dir, config=resolved, plan=plan.to_dict())

    tracker = RunTracker.open(job.mlflow, run_dir, job.checkpoint.run_name)
    try:
        tracker.log_config(resolved)
        tracker.set_tags(_run_tags(job, manifest))
        trainer = build_trainer(job, plan, splits, [tracker.callback(), *callbacks])
        result = trainer.fit()
        final_dir = storage.join(run_dir, "final")
        with (
            result.checkpoint.as_directory() as checkpoint_dir,
            storage.local_output(final_dir) as local_final,
            storage.local_input(storage.join(job.data.prepared_dir, MANIFEST_FILE)) as manifest_file,
        ):
            export_final(Path(checkpoint_dir), job.data.tokenizer_dir, Path(local_final))
            tracker.log_final(local_final, {"data_manifest": manifest_file})
            steps = read_train_state(Path(checkpoint_dir))["step"]
        tracker.set_tags({"checkpoint_uri": _checkpoint_uri(result.checkpoint, job.checkpoint.storage_path)})
        update_run_json(run_dir, final_dir=final_dir)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C or a stop; Ray Train ends an aborted fit with SystemExit
        tracker.end("KILLED")
        raise
    except BaseException as error:
        tracker.end("FAILED", error=f"{type(error).__name__}: {error}")
        raise
    tracker.end("FINISHED")
    return TrainingResult(run_dir, final_dir, steps, dict(result.metrics or {}))


def init_ray() -> None:
    """Join the cluster in RAY_ADDRESS, or start a local Ray for this run. Ray Train's preemption watcher
    is off on a local one (its node is never drained): one actor less to start, and no error line for it."""
    if ray.is_initialized():
        return
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault(ENABLE_PREEMPTION_WATCHER_ENV_VAR, "0")
    ray.init(log_to_driver=True)


def ensure_prepared_data(job: JobConfig) -> data.Manifest:
    """Train the tokenizer and prepare the examples when missing or made with other settings; else reuse."""
    settings = job.data
    corpus = settings.corpus
    tokenizer_dir = settings.tokenizer_dir
    wanted = {"corpus": corpus, "tokenizer": dataclasses.asdict(settings.tokenizer)}
    marker = storage.join(tokenizer_dir, TOKENIZER_SETTINGS_FILE)
    tokenizer_files = (storage.join(tokenizer_dir, name) for name in ("tokenizer.json", "vocab.txt"))
    has_tokenizer = any(storage.is_file(path) for path in tokenizer_files)
    # A tokenizer the user brought (no marker) is used as it is; one that `train` built is rebuilt on change.
    try:
        if not has_tokenizer or (storage.is_file(marker) and json.loads(storage.read_text(marker)) != wanted):
            print(f"Training the tokenizer into {tokenizer_dir} ...", flush=True)
            data.train_tokenizer(
                corpus,
                tokenizer_dir,
                settings.tokenizer,
                settings.prepare.input_format,
                settings.prepare.text_field,
            )
            storage.write_text(marker, json.dumps(wanted, indent=2))
        tokenizer_hash = data.tokenizer_hash(tokenizer_dir)
        with contextlib.suppress(data.DataError):  # missing or unreadable: build it
            manifest = data.load_manifest(settings.prepared_dir)
            if manifest.matches(settings.prepare, tokenizer_hash) and manifest.corpus == corpus:
                return manifest
        print(f"Preparing the examples into {settings.prepared_dir} ...", flush=True)
        return data.prepare(corpus, tokenizer_dir, settings.prepared_dir, settings.prepare)
    except data.DataError as error:
        raise UserError(str(error)) from None


def load_splits(job: JobConfig, manifest: data.Manifest) -> dict[str, data.PreparedSplit | None]:
    """The training split and, when the run evaluates, the held-out one: shards, sizes, masking vocabulary
    (the manifest and tokenizer read once, here, for every rank)."""
    try:
        train_split = data.load_split(job.data.prepared_dir, "train")
        evaluates = job.train.eval_every > 0 and manifest.counts["examples"].get("eval", 0) > 0
        eval_split = data.load_split(job.data.prepared_dir, "eval") if evaluates else None
    except data.DataError as error:
        raise UserError(str(error)) from None
    return {"train_split": train_split, "eval_split": eval_split}


def plan_run(job: JobConfig, manifest: data.Manifest, batch, train_split: data.PreparedSplit) -> RunPlan:
    """Steps, epochs and sizes from the config and the prepared data."""
    try:
        steps_per_epoch = epoch_order(job, train_split).steps_per_epoch
    except data.DataError as error:
        raise UserError(f"{error} (train.global_batch_size={job.train.global_batch_size})") from None
    if job.train.max_steps is not None:
        total_steps = job.train.max_steps
    else:  # a token budget, in steps of the prepared data's mean example length
        tokens_per_example = manifest.counts["tokens"] / max(1, sum(manifest.counts["examples"].values()))
        total_steps = math.ceil(job.train.max_tokens / (tokens_per_example * job.train.global_batch_size))
    return RunPlan(
        batch=batch,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        vocab_size=manifest.vocab_size,
        pad_token_id=manifest.special_token_ids["pad"],
        max_seq_length=manifest.settings.max_seq_length,
    )


def build_trainer(
    job: JobConfig,
    plan: RunPlan,
    splits: dict[str, data.PreparedSplit | None],
    callbacks: Sequence[ray.train.UserCallback],
) -> TorchTrainer:
    """Ray Train gets no datasets: each worker builds and executes its own Ray Data stream from the splits
    and the position of the checkpoint it resumes from, which only it knows (a DataConfig would build the
    iterators in the controller before that, and Ray's default split passes every block through one
    coordinator actor)."""
    scaling = job.scaling
    # Ray Train's controller polls the workers every 2 s, and a worker's report waits until the controller
    # has read its previous one: with a report every few steps that wait is most of a short run. Poll more
    # often, but keep a big run's controller under about 1,000 worker polls a second (a user's setting wins).
    poll_s = max(0.1, scaling.num_workers / 1000)
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_S_ENV_VAR, f"{poll_s:g}")
    return TorchTrainer(
        train_worker,
        train_loop_config={"job": job.to_dict(), "plan": plan.to_dict(), **splits},
        scaling_config=ray.train.ScalingConfig(
            num_workers=ray_worker_count(scaling, ray.cluster_resources()),
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
            elastic_resize_monitor_interval_s=scaling.elastic_check_s,
        ),
        run_config=ray.train.RunConfig(
            name=job.checkpoint.run_name,
            storage_path=job.checkpoint.storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.checkpoint.keep),
            failure_config=ray.train.FailureConfig(max_failures=job.checkpoint.max_failures),
            callbacks=list(callbacks),
        ),
    )


def _run_tags(job: JobConfig, manifest: data.Manifest) -> dict[str, str]:
    return {
        **ray_job_tags(),
        "model_preset": job.model.preset,
        "num_workers": job.scaling.describe_workers(),
        "cluster_resources": json.dumps(ray.cluster_resources()),
        "tokenizer_hash": manifest.tokenizer_hash,
        "data_manifest_hash": _manifest_hash(job.data.prepared_dir),
    }


def _manifest_hash(prepared_dir: str) -> str:
    import hashlib

    manifest = storage.read_text(storage.join(prepared_dir, MANIFEST_FILE))
    return hashlib.sha256(manifest.encode()).hexdigest()[:16]


def _checkpoint_uri(checkpoint: ray.train.Checkpoint, storage_path: str) -> str:
    """Ray gives a bucket checkpoint's path without its scheme; put it back."""
    if storage.is_uri(storage_path):
        return f"{storage_path.split('://', 1)[0]}://{checkpoint.path}"
    return checkpoint.path
