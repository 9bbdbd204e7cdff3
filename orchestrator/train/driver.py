"""The training driver: from a job config to a trained model in `<storage_path>/<run_name>/final/`.

Resolves the config (absolute paths, worker flags), checks before Ray Train starts everything that would
fail the same way on every worker (`orchestrator.train.preflight`), builds the tokenizer and prepared data
when they are missing, works out the batch split and checks the cluster can hold the run, then runs Ray
Train's `TorchTrainer` with `orchestrator.train.loop.train_worker` on every rank, and exports the last
checkpoint in HF format with the tokenizer. Starting the same run again (same storage path and run name)
resumes it from its newest complete and intact checkpoint, which this driver chooses and names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
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
from data import local_ray, storage
from data.manifest import MANIFEST_FILE
from data.readers import BUILTIN_CORPUS_WORD  # the embedded default; data resolves it
from data.redact import redact
from model import BertConfig
from orchestrator.config import JobConfig, WorkerCount, apply_scaling_flags, config_from_dict
from orchestrator.errors import Interrupted, UserError
from orchestrator.run_dir import update_run_json
from orchestrator.tracking.run import RunTracker, ray_job_tags
from orchestrator.train.checkpoints import (
    ResumePoint,
    export_final,
    find_resume_checkpoint,
    prune_checkpoints,
)
from orchestrator.train.failures import StopOnUserError, user_error_in
from orchestrator.train.init_from import Donor, adopt_donor, donor_tags, model_config, read_donor
from orchestrator.train.loop import RunPlan, epoch_order, train_worker
from orchestrator.train.preflight import (
    check_data_fits_model,
    check_resume_point,
    check_sequence_length,
    ensure_prepared_data,
)
from orchestrator.train.resources import check_resources, plan_batches, ray_worker_count

RAY_CHECKPOINT_LIST_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's own list, in the run directory


@dataclass(frozen=True)
class TrainingResult:
    run_dir: str
    """Local folder or bucket URI."""
    final_dir: str
    steps: int
    metrics: dict
    mlflow_link: str = ""
    """Where to see the run in MLflow ("" when it was not recorded, or the server did not answer)."""


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
        tokenizer_dir=storage.absolute(job.data.tokenizer_dir) if job.data.tokenizer_dir else "",
        prepared_dir=storage.absolute(job.data.prepared_dir),
    )
    resolved = dataclasses.replace(job, checkpoint=checkpoint, data=data_paths)
    return config_from_dict(resolved.to_dict())  # validate again: the flags may be out of range


def train(job: JobConfig, callbacks: Sequence[ray.train.UserCallback] = ()) -> TrainingResult:
    """Run (or resume) the training run of a resolved job config; return where the final model is.

    What would fail the same way on every worker is refused first (a UserError within seconds). Ctrl-C or a
    stop signal raises `Interrupted`, naming the checkpoint kept and how to resume."""
    donor = read_donor(job.checkpoint.init_from) if job.checkpoint.init_from else None
    if donor is not None:
        job = adopt_donor(job, donor)
    if not job.data.tokenizer_dir:
        raise UserError(
            "data.tokenizer_dir is empty: name the tokenizer folder (trained there from the corpus when "
            "missing), or --init-from a model that holds its own tokenizer"
        )
    check_sequence_length(job, donor)
    if not os.environ.get("RAY_ADDRESS"):
        # A local Ray's node is never drained: no preemption watcher (one actor less to start, no error line).
        os.environ.setdefault(ENABLE_PREEMPTION_WATCHER_ENV_VAR, "0")
    local_ray.init_ray(log_to_driver=True)
    plan_batch = plan_batches(
        job.train.global_batch_size,
        job.train.micro_batch_size,
        job.scaling.num_workers,
        uneven=job.scaling.elastic,
    )
    check_resources(job.scaling, ray.cluster_resources(), [n["Resources"] for n in ray.nodes() if n["Alive"]])
    manifest = ensure_prepared_data(job)
    model = model_config(job, manifest.vocab_size, manifest.special_token_ids["pad"], donor)
    check_data_fits_model(job, manifest, model)
    if donor is not None:
        _say_missing_heads(donor, job.model.use_nsp)
    run_dir = storage.join(job.checkpoint.storage_path, job.checkpoint.run_name)
    resume = find_resume_checkpoint(run_dir)
    check_resume_point(resume, model)
    splits = load_splits(job, manifest)
    plan = plan_run(job, manifest, plan_batch, splits["train_split"], model)
    print_resume_point(resume, plan.total_steps)
    resolved = job.to_dict()
    update_run_json(run_dir, config=resolved, plan=plan.to_dict())

    reports = resume.train_state.get("reports", [])
    tracker = RunTracker.open(job.mlflow, run_dir, job.checkpoint.run_name, reports)
    if tracker.link:
        print(f"MLflow run: {tracker.link}", flush=True)
    try:
        tracker.log_config(resolved)
        tracker.set_tags(_run_tags(job, manifest, donor))
        trainer = build_trainer(job, plan, splits, [tracker.callback(), StopOnUserError(), *callbacks])
        result = fit(trainer, run_dir)
        last = find_resume_checkpoint(run_dir)
        final_dir = storage.join(run_dir, "final")
        with (
            storage.local_input(last.path) as checkpoint_dir,
            storage.local_output(final_dir) as local_final,
            storage.local_input(storage.join(job.data.prepared_dir, MANIFEST_FILE)) as manifest_file,
        ):
            export_final(Path(checkpoint_dir), job.data.tokenizer_dir, Path(local_final))
            tracker.log_final(local_final, {"data_manifest": manifest_file})
        tracker.set_tags({"checkpoint_uri": last.path})
        update_run_json(run_dir, final_dir=final_dir)
        prune_checkpoints(run_dir, job.checkpoint.keep)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C or a stop; Ray Train ends an aborted fit with SystemExit
        tracker.end("KILLED")
        raise Interrupted(what_is_kept(run_dir)) from None
    except BaseException as error:
        tracker.end("FAILED", error=f"{type(error).__name__}: {error}")
        if (user_error := user_error_in(error)) is not None:
            raise user_error from None
        raise
    tracker.end("FINISHED")
    return TrainingResult(run_dir, final_dir, last.step, dict(result.metrics or {}), tracker.link)


def fit(trainer: TorchTrainer, run_dir: str) -> ray.train.Result:
    """`trainer.fit()` without Ray Train's own list of the run's checkpoints, which the run directory
    replaces (see `loop.restore_state`): Ray would load it, and it may lack the newest checkpoint (an
    interrupt before Ray wrote it) or name a damaged one. Ray's Ctrl-C handler (a graceful abort of the fit)
    is removed again afterwards."""
    list_file = storage.join(run_dir, RAY_CHECKPOINT_LIST_FILE)
    if storage.is_file(list_file):
        storage.remove_file(list_file)
    handler = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)


def print_resume_point(resume: ResumePoint, total_steps: int) -> None:
    """Say on the console which checkpoint the run resumes from, and which newer ones it skips."""
    for name, problem in resume.skipped:
        print(f"Skipping checkpoint {name}: {problem} (damaged, or not fully written).", flush=True)
    if resume.path is not None:
        name = Path(resume.path).name
        print(f"Resuming from {name}: step {resume.step} of {total_steps}.", flush=True)
    elif resume.skipped:
        print(f"No intact checkpoint to resume from: starting at step 0 of {total_steps}.", flush=True)


def what_is_kept(run_dir: str) -> str:
    """An interrupted run's newest checkpoint and how to resume it (the line Ctrl-C prints)."""
    resume = find_resume_checkpoint(run_dir)
    if resume.path is None:
        return f"no checkpoint was written yet in {run_dir}; run the same command to start again"
    return f"the checkpoint of step {resume.step} is kept in {run_dir}; run the same command to resume"


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


def plan_run(
    job: JobConfig, manifest: data.Manifest, batch, train_split: data.PreparedSplit, model: BertConfig
) -> RunPlan:
    """Steps, epochs and sizes from the config, the prepared data and the model."""
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
        model=dataclasses.asdict(model),
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
            # Ray Train's INFO lines (the worker group starting, each checkpoint saved) stay in its log files
            # under the Ray session's logs/train/; the console keeps its warnings and our progress lines.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )


def _run_tags(job: JobConfig, manifest: data.Manifest, donor: Donor | None) -> dict[str, str]:
    return {
        **ray_job_tags(),
        **(donor_tags(donor) if donor else {}),
        "model_preset": f"from --init-from ({donor.describe()})" if donor else job.model.preset,
        "num_workers": job.scaling.describe_workers(),
        "cluster_resources": json.dumps(ray.cluster_resources()),
        "tokenizer_hash": manifest.tokenizer_hash,
        "data_manifest_hash": _manifest_hash(job.data.prepared_dir),
    }


def _say_missing_heads(donor: Donor, use_nsp: bool) -> None:
    """Once per run: the heads the donor lacks start from BERT's initialisation (and learn from there)."""
    missing = [head for head in donor.missing_heads if head == "MLM" or use_nsp]
    if missing:
        print(
            f"--init-from {redact(donor.source)} has no {' or '.join(missing)} head: "
            "it starts from BERT's initialisation",
            flush=True,
        )


def _manifest_hash(prepared_dir: str) -> str:
    import hashlib

    manifest = storage.read_text(storage.join(prepared_dir, MANIFEST_FILE))
    return hashlib.sha256(manifest.encode()).hexdigest()[:16]
