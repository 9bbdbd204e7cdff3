"""The training driver: from a job config to a trained model in the run directory's `final/`.

Builds the `Run` once (`orchestrator.run`): the config with absolute paths, the run directory, the plan. First
it checks what would fail the same way on every worker (`orchestrator.train.preflight`), builds the tokenizer
and prepared data when they are missing, works out the batch split and checks that the cluster can hold the
run. Then it runs Ray Train's `TorchTrainer` with `orchestrator.train.worker` on every rank, and exports the
last checkpoint in HF format with the tokenizer. Starting the same run again (same storage path and run name)
resumes it from its newest complete and intact checkpoint, which this driver names.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train

import data
from common import local_ray, storage
from common.console import say
from common.errors import Interrupted, InvalidSetting, UserError
from common.redact import redact
from data.manifest import MANIFEST_FILE
from model import EncoderConfig
from orchestrator.config import JobConfig, with_absolute_paths
from orchestrator.run import (
    BatchPlan,
    Run,
    RunPlan,
    batch_schedule,
    data_order_identity,
    epoch_order,
    plan_batches,
    plan_step_batches,
)
from orchestrator.run_dir import RunDir, RunLock
from orchestrator.tracking.dataset import manifest_hash
from orchestrator.tracking.metrics import CHECKPOINT_TAG
from orchestrator.tracking.run import RunTracker
from orchestrator.tracking.tags import ray_job_tags
from orchestrator.train.checkpoints import (
    ResumePoint,
    export_final,
    find_resume_checkpoint,
    prune_checkpoints,
)
from orchestrator.train.failures import StopOnUserError, user_error_in
from orchestrator.train.init_from import Donor, adopt_donor, donor_tags, model_config, read_donor
from orchestrator.train.preflight import (
    check_data_fits_model,
    check_resume_keeps_order,
    check_resume_point,
    check_sequence_length,
    ensure_prepared_data,
)
from orchestrator.train.probes import ProbeData, load_probes
from orchestrator.train.resources import check_resources
from orchestrator.train.trainer import build_trainer, fit


@dataclass(frozen=True)
class TrainingResult:
    run_dir: str
    """Local folder or bucket URI."""
    final_dir: str
    steps: int
    metrics: dict
    mlflow_link: str = ""
    """Where to see the run in MLflow ("" when it was not recorded, or the server did not answer)."""


def train(config: JobConfig, callbacks: Sequence[ray.train.UserCallback] = ()) -> TrainingResult:
    """Run (or resume) the training run of a validated config; return where the final model is.

    What would fail the same way on every worker is refused first (a UserError within seconds), and so is a
    second start of a run that is running. Ctrl-C or a stop signal, at any moment, raises `Interrupted`,
    naming the checkpoint kept and what the same command does next."""
    config = with_absolute_paths(config)
    run_dir = RunDir(config.checkpoint.storage_path, config.checkpoint.run_name)
    try:
        with RunLock(run_dir):
            return _train(config, run_dir, callbacks)
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, Interrupted):
            raise
        raise Interrupted(what_is_kept(run_dir)) from None


def _train(config: JobConfig, run_dir: RunDir, callbacks: Sequence[ray.train.UserCallback]) -> TrainingResult:
    # The checkpoint to resume from, verified, and what it was trained on: before anything is built.
    resume = find_resume_checkpoint(run_dir, verify=True)
    check_resume_keeps_order(config, resume)
    donor = read_donor(config.checkpoint.init_from) if config.checkpoint.init_from else None
    if donor is not None:
        config = adopt_donor(config, donor)
    if not config.data.tokenizer_dir:
        raise UserError(
            "data.tokenizer_dir is empty: name the tokenizer folder (trained there from the corpus when "
            "missing), or --init-from a model that holds its own tokenizer"
        )
    check_sequence_length(config, donor)
    local_ray.init_ray(log_to_driver=True)
    batch = plan_batches(
        config.train.global_batch_size,
        config.train.micro_batch_size,
        config.scaling.num_workers,
        uneven=config.scaling.elastic,
        base_batch_size=config.train.batch_size_warmup.start,
    )
    check_resources(
        config.scaling, ray.cluster_resources(), [n["Resources"] for n in ray.nodes() if n["Alive"]]
    )
    manifest = ensure_prepared_data(config, resume)
    model = model_config(config, manifest.vocab_size, manifest.special_token_ids, donor)
    check_data_fits_model(config, manifest, model)
    if donor is not None:
        _say_missing_heads(donor, config.model.use_nsp)
    probes = load_probes(config, model.max_position_embeddings)
    run = build_run(config, run_dir, manifest, batch, model, probes)
    check_resume_point(resume, run)
    print_resume_point(resume, run.plan.total_steps)
    print_batch_warmup(run.plan)
    resolved = config.to_dict()
    run_dir.update_run_json(config=resolved, plan=dataclasses.asdict(run.plan))

    tracker = RunTracker.open(config.mlflow, run_dir, resume.train_state.get("reports", []))
    if tracker.link:
        say(f"MLflow run: {tracker.link}")
    try:
        tracker.log_config(resolved)
        tracker.set_tags(_run_tags(config, manifest, donor))
        tracker.log_dataset(config.data.prepared_dir, manifest)
        failures = StopOnUserError(run_dir, config.checkpoint.max_failures)
        callbacks = [tracker.callback(), failures, *callbacks]
        trainer = build_trainer(run, callbacks, tracker.system_metrics_target())
        result = fit(trainer, run_dir)
        last = find_resume_checkpoint(run_dir)
        with (
            storage.local_input(last.path) as checkpoint_dir,
            storage.local_output(run_dir.final) as local_final,
            storage.local_input(storage.join(config.data.prepared_dir, MANIFEST_FILE)) as manifest_file,
        ):
            export_final(Path(checkpoint_dir), config.data.tokenizer_dir, Path(local_final))
            tracker.log_final(local_final, {"data_manifest": manifest_file}, last.step)
        tracker.set_tags({CHECKPOINT_TAG: last.path})
        run_dir.update_run_json(final_dir=run_dir.final)
        prune_checkpoints(run_dir, config.checkpoint.keep)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C or a stop; Ray Train ends an aborted fit with SystemExit
        tracker.end("KILLED")
        raise Interrupted(what_is_kept(run_dir)) from None
    except BaseException as error:
        tracker.end("FAILED", error=f"{type(error).__name__}: {error}")
        if (user_error := user_error_in(error)) is not None:
            raise user_error from None
        raise
    tracker.end("FINISHED")
    return TrainingResult(run_dir.path, run_dir.final, last.step, dict(result.metrics or {}), tracker.link)


def build_run(
    config: JobConfig,
    run_dir: RunDir,
    manifest: data.Manifest,
    batch: BatchPlan,
    model: EncoderConfig,
    probes: tuple[ProbeData, ...] = (),
) -> Run:
    """The run's splits (the manifest and tokenizer read once, here, for every rank) and its plan: steps,
    epochs and sizes from the config, the prepared data and the model; the probes' sets as read."""
    train_split = data.load_split(config.data.prepared_dir, "train")
    evaluates = config.train.eval_every > 0 and manifest.counts["examples"].get("eval", 0) > 0
    eval_split = data.load_split(config.data.prepared_dir, "eval") if evaluates else None
    try:
        order = epoch_order(config, train_split)
    except data.DataError as error:
        raise UserError(f"{error} ({_batch_settings(config)})") from None
    tokens_per_example = manifest.counts["tokens"] / max(1, sum(manifest.counts["examples"].values()))
    schedule = batch_schedule(config, tokens_per_example)
    # Every global batch size the run steps through must split over the workers (checked before Ray starts).
    plan_step_batches(schedule, config.train.micro_batch_size, batch.num_workers, config.scaling.elastic)
    steps_per_epoch = train_split.num_examples // config.train.global_batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"the split has {train_split.num_examples} examples, fewer than one global batch "
            f"({config.train.global_batch_size}): use a bigger corpus or a smaller batch"
        )
    if config.train.max_steps is not None:
        total_steps = config.train.max_steps
    else:  # a token budget, in steps of the prepared data's mean example length
        total_steps = schedule.steps_for_tokens(config.train.max_tokens, tokens_per_example)
        try:  # the warmup and a wsd decay must fit (with max_steps the config checked it)
            config.optim.phase_steps(total_steps)
        except InvalidSetting as error:
            raise UserError(f"{error} (train.max_tokens={config.train.max_tokens:,})") from None
    plan = RunPlan(
        batch=batch,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        model=model,
        pad_token_id=manifest.special_token_ids["pad"],
        max_seq_length=manifest.settings.max_seq_length,
        data_order=data_order_identity(config, manifest_hash(config.data.prepared_dir)),
        schedule=schedule,
        base_batches_per_epoch=order.steps_per_epoch,
        tokens_per_example=tokens_per_example,
    )
    return Run(config, run_dir, plan, train_split, eval_split, probes)


def _batch_settings(config: JobConfig) -> str:
    shown = f"train.global_batch_size={config.train.global_batch_size}"
    if config.train.batch_size_warmup.enabled:
        shown += f", train.batch_size_warmup.start={config.train.batch_size_warmup.start}"
    return shown


def print_batch_warmup(plan: RunPlan) -> None:
    schedule = plan.schedule
    if schedule is None or not schedule.grows:
        return
    steps = schedule.growth_steps
    say(
        f"Batch size warmup: {schedule.base_batch_size} -> {schedule.global_batch_size} examples over the "
        f"first {steps} steps ({schedule.examples_before(steps):,} examples, about "
        f"{schedule.examples_before(steps) * plan.tokens_per_example:,.0f} tokens)."
    )


def print_resume_point(resume: ResumePoint, total_steps: int) -> None:
    """Say on the console which checkpoint the run resumes from, and which newer ones it skips."""
    for name, problem in resume.skipped:
        say(f"Skipping checkpoint {name}: {problem} (damaged, or not fully written).")
    if resume.path is not None:
        name = Path(resume.path).name
        say(f"Resuming from {name}: step {resume.step} of {total_steps}.")
    elif resume.skipped:
        say(f"No intact checkpoint to resume from: starting at step 0 of {total_steps}.")


def what_is_kept(run_dir: RunDir) -> str:
    """An interrupted run's newest checkpoint and how to resume it (the line Ctrl-C prints)."""
    resume = find_resume_checkpoint(run_dir)
    if resume.path is None:
        return f"no checkpoint was written yet in {run_dir}; run the same command to start again"
    return f"the checkpoint of step {resume.step} is kept in {run_dir}; run the same command to resume"


def _run_tags(job: JobConfig, manifest: data.Manifest, donor: Donor | None) -> dict[str, str]:
    return {
        **ray_job_tags(),
        **(donor_tags(donor) if donor else {}),
        "model_preset": f"from --init-from ({donor.describe()})" if donor else job.model.preset,
        "num_workers": job.scaling.describe_workers(),
        "cluster_resources": json.dumps(ray.cluster_resources()),
        "tokenizer_hash": manifest.tokenizer_hash,
        "data_manifest_hash": manifest_hash(job.data.prepared_dir),
    }


def _say_missing_heads(donor: Donor, use_nsp: bool) -> None:
    """Once per run: the heads the donor lacks start from the family's initialisation (and learn from
    there)."""
    missing = [head for head in donor.missing_heads if head == "MLM" or use_nsp]
    if missing:
        say(
            f"--init-from {redact(donor.source)} has no {' or '.join(missing)} head: "
            f"it starts from {'BERT' if donor.family.name == 'bert' else donor.family.name}'s initialisation"
        )
