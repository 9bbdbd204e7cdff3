"""What a training checkpoint holds, and how it is written, checked, chosen, read, and turned into the final
HF model.

A checkpoint folder (`RunDir.checkpoint(step)`, reported to Ray Train, under the run directory):
  model.safetensors   the model's own state dict (padded vocabulary, tied weights stored once)
  model_config.json   the model's family and config, to rebuild the model without the job config
  optimizer.pt, scheduler.pt, rng.pt   state dicts and every rank's RNG states (read with weights_only=True)
  train_state.json    step, consumed samples, data epoch and position, world size, the data order's
                      identity, the resolved job config (secrets redacted), rank 0's reports since the
                      previous checkpoint, and the size and SHA-256 of every other file: written last, so a
                      checkpoint is complete when its files are there at those sizes, and intact when their
                      bytes match
Only rank 0 writes it; the other ranks' RNG states reach it through a gather. A run resumes from its newest
complete and intact checkpoint (`find_resume_checkpoint`), whatever was interrupted or damaged after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_model, save_model

from common import storage
from common.errors import UserError
from common.redact import redact
from data.tokenizer import TOKENIZER_FILES
from model import EncoderConfig, PretrainingModel, config_from_checkpoint_json, family_of, read_hf_family
from orchestrator.run_dir import RunDir, checkpoint_step

MODEL_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model_config.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
TRAIN_STATE_FILE = "train_state.json"
STATE_FILES = (MODEL_FILE, MODEL_CONFIG_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE)


class Trainables(NamedTuple):
    """What a checkpoint saves and restores besides the position: the model and its optimizer state."""

    model: PretrainingModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps done."""
    consumed_samples: int = 0
    """Examples trained on: step x global batch size (less while the batch grows)."""
    data_epoch: int = 0
    """Epoch of the data stream the next step reads from (it picks that epoch's masks)."""
    data_step_in_epoch: int = 0
    """Base batches of that epoch already consumed (`data.batch_schedule`): global batches when the batch
    does not grow, else batches of train.batch_size_warmup.start examples."""
    world_size: int = 1
    """Workers of the run that wrote the checkpoint (a resume may use another count)."""
    data_order: dict[str, Any] = field(default_factory=dict)
    """What the order of the examples is made from (`orchestrator.run.RunPlan.data_order`): a resume that
    would read the examples in another order is refused."""


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch RNG states (dropout is the only randomness in the step; masking is seeded)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    directory: Path,
    trainables: Trainables,
    state: TrainState,
    rng_states: list[dict[str, torch.Tensor]],
    job_config: dict[str, Any],
    reports: Sequence[dict[str, Any]] = (),
) -> None:
    """Write everything an exact resume needs into `directory` (rank 0 only); train_state.json last, with
    the sizes of the other files and `reports` ({"timestamp_ms", "metrics"} of each report since the
    previous checkpoint)."""
    model, optimizer, scheduler = trainables
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / MODEL_FILE))
    (directory / MODEL_CONFIG_FILE).write_text(family_of(model.config).config_to_json(model.config))
    torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    torch.save(scheduler.state_dict(), directory / SCHEDULER_FILE)
    torch.save(rng_states, directory / RNG_FILE)
    saved = dataclasses.asdict(state)
    files = {name: (directory / name).stat().st_size for name in STATE_FILES}
    checksums = {name: storage.sha256(directory / name) for name in STATE_FILES}
    contents = {
        **saved,
        "files": files,
        "checksums": checksums,
        "config": redact(job_config),
        "reports": list(reports),
    }
    (directory / TRAIN_STATE_FILE).write_text(json.dumps(contents, indent=2))


def load_checkpoint(directory: Path, trainables: Trainables, rank: int) -> TrainState:
    """Restore model, optimizer, scheduler and this rank's RNG; return the saved position.

    A rank that did not exist in the saved run (more workers now) keeps its seeded RNG. A file that cannot
    be read is a UserError naming it: every restart would meet it again.
    """
    model, optimizer, scheduler = trainables
    with _naming_damaged_file(directory, MODEL_FILE):
        load_model(model, str(directory / MODEL_FILE), device=_device_of(model))
    with _naming_damaged_file(directory, OPTIMIZER_FILE):
        optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True))
    with _naming_damaged_file(directory, SCHEDULER_FILE):
        scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=True))
    with _naming_damaged_file(directory, RNG_FILE):
        rng_states = torch.load(directory / RNG_FILE, weights_only=True)
    if rank < len(rng_states):
        set_rng_state(rng_states[rank])
    return position_of(json.loads((directory / TRAIN_STATE_FILE).read_text()))


@contextlib.contextmanager
def _naming_damaged_file(directory: Path, name: str) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        raise UserError(
            f"checkpoint {directory.name}: {name} cannot be read ({type(error).__name__}: {error}). Delete "
            "that checkpoint folder and run the same command again to resume from the one before"
        ) from error


def read_train_state(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's train_state.json (position, resolved config, reports); local or in a bucket."""
    return json.loads(storage.read_text(storage.join(directory, TRAIN_STATE_FILE)))


def position_of(train_state: dict[str, Any]) -> TrainState:
    """The position (step, samples, data epoch and step, world size) a train_state.json holds."""
    fields = {f.name for f in dataclasses.fields(TrainState)}
    return TrainState(**{k: v for k, v in train_state.items() if k in fields})


def checkpoint_problem(name: str, sizes: dict[str, int], train_state: str | None) -> str | None:
    """Why checkpoint folder `name` cannot be resumed from (None: it is complete and intact), from its
    files' sizes and the text of its train_state.json (None when there is none)."""
    if train_state is None:
        return f"{TRAIN_STATE_FILE} is missing (written last: the checkpoint was not finished)"
    try:
        state = json.loads(train_state)
        step = int(state["step"])
    except (ValueError, KeyError, TypeError) as error:
        return f"{TRAIN_STATE_FILE} is unreadable ({type(error).__name__})"
    if step != checkpoint_step(name):
        return f"{TRAIN_STATE_FILE} says step {step}"
    # A checkpoint of an earlier version records no sizes: its files must be there and not empty.
    expected = state.get("files") or dict.fromkeys(STATE_FILES)
    for file, size in expected.items():
        if not sizes.get(file):
            return f"{file} is missing" if file not in sizes else f"{file} is empty"
        if size is not None and sizes[file] != size:
            return f"{file} is {sizes[file]:,} bytes, not {size:,}"
    return None


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run resumes from, and the newer ones it skips."""

    path: str | None
    """The newest complete and intact checkpoint folder; None: the run starts from step 0."""
    step: int
    skipped: list[tuple[str, str]]
    """(folder name, why) of each newer checkpoint that is damaged or was not finished."""
    train_state: dict[str, Any] = field(default_factory=dict)
    """That checkpoint's train_state.json (position, config, the reports it keeps); {} without one."""

    @property
    def position(self) -> TrainState:
        return position_of(self.train_state)


def checked_checkpoints(run_dir: RunDir) -> list[tuple[str, str | None]]:
    """(folder name, problem or None) of each of the run's checkpoints, newest first."""
    return [(name, problem) for name, problem, _ in _checked_with_state(run_dir)]


def _checked_with_state(run_dir: RunDir) -> list[tuple[str, str | None, str | None]]:
    """`checked_checkpoints` with the text of each one's train_state.json (None when there is none)."""
    found = run_dir.checkpoint_files()
    checked = []
    for name in sorted(found, key=checkpoint_step, reverse=True):
        sizes = found[name]
        state_file = run_dir.join(name, TRAIN_STATE_FILE)
        state = storage.read_text(state_file) if TRAIN_STATE_FILE in sizes else None
        checked.append((name, checkpoint_problem(name, sizes, state), state))
    return checked


def find_resume_checkpoint(run_dir: RunDir, verify: bool = False) -> ResumePoint:
    """The newest checkpoint of the run that is complete (its files at the sizes train_state.json records),
    whatever Ray Train's own list of checkpoints says; and why each newer one is skipped.

    `verify` (the driver, before a run starts) also reads every file of the candidates against its SHA-256,
    and sets a damaged checkpoint aside (`RunDir.set_aside`), so that the workers, which check sizes only,
    never see it."""
    skipped = []
    for name, problem, state in _checked_with_state(run_dir):
        if problem is None:
            train_state = json.loads(state)
            damage = _damage(run_dir.join(name), train_state.get("checksums", {})) if verify else None
            if damage is None:
                step = checkpoint_step(name)
                return ResumePoint(run_dir.checkpoint(step), step, skipped, train_state)
            problem = f"{damage}; set aside as {run_dir.set_aside(name)}"
        skipped.append((name, problem))
    return ResumePoint(None, 0, skipped)


def _damage(directory: str, checksums: dict[str, str]) -> str | None:
    """Which file of a checkpoint does not match its recorded SHA-256 (None: all match, or none recorded)."""
    for file, checksum in checksums.items():
        if storage.sha256(storage.join(directory, file)) != checksum:
            return f"{file} does not match its SHA-256 (its bytes were changed)"
    return None


def prune_checkpoints(run_dir: RunDir, keep: int) -> list[str]:
    """Delete all but the newest `keep` intact checkpoints (damaged and older ones go); return the names
    deleted. For after a run has finished: Ray Train prunes only the checkpoints of its own fit."""
    checked = checked_checkpoints(run_dir)
    kept = [name for name, problem in checked if problem is None][:keep]
    deleted = [name for name, _ in checked if name not in kept]
    for name in deleted:
        storage.remove_dir(run_dir.join(name))
    return deleted


def check_resumable(path: str, expected: EncoderConfig) -> None:
    """A UserError (before any worker starts) when the checkpoint's model is of another family or has other
    sizes than the run's."""
    saved = config_from_checkpoint_json(storage.read_text(storage.join(path, MODEL_CONFIG_FILE)))
    family, expected_family = family_of(saved), family_of(expected)
    if family is not expected_family:
        raise UserError(
            f"the run resumes from {path}, a {family.name} model, but model.family is "
            f"{expected_family.name}: keep model.family: {family.name}, or start a new run with another "
            "checkpoint.run_name"
        )
    different = {
        k: (getattr(saved, k), getattr(expected, k))
        for k in ("vocab_size", *family.architecture_fields, *family.retunable_fields)
        if getattr(saved, k) != getattr(expected, k)
    }
    if different:
        details = ", ".join(f"{k} {a} there vs {b} now" for k, (a, b) in different.items())
        raise UserError(
            f"the run resumes from {path}, whose model has other sizes ({details}): keep the run's "
            "model.preset (or --init-from) and data, or start a new run with another checkpoint.run_name"
        )


def load_model_from_checkpoint(directory: Path) -> PretrainingModel:
    """The pretraining model of a training checkpoint, of its family."""
    config = config_from_checkpoint_json((directory / MODEL_CONFIG_FILE).read_text())
    model = family_of(config).model_class(config)
    load_model(model, str(directory / MODEL_FILE))
    return model


def init_weights_from(model: PretrainingModel, source: str | Path) -> None:
    """Copy the weights of a training checkpoint or an HF model folder (local or in a bucket) into `model`
    (nothing else).

    The family and sizes must match the run's model, which the driver took from this checkpoint
    (`orchestrator.train.init_from`); the family's retunable fields (a rotary theta) may differ. An HF
    folder's vocabulary may have spare rows (NVIDIA pads 30,522 to 30,528): they are dropped. Heads it
    lacks keep the model's initialisation (the driver says so).
    """
    check_init_from(source)
    family = family_of(model.config)
    with storage.local_input(source) as local:
        directory = Path(local)
        from_checkpoint = (directory / MODEL_CONFIG_FILE).is_file()
        if from_checkpoint:
            donor = load_model_from_checkpoint(directory)
            donor_config = donor.config
        else:
            donor_config = read_hf_family(directory).read_hf_config(directory)
        if (donor_family := family_of(donor_config)) is not family:
            raise UserError(f"--init-from {source}: a {donor_family.name} model, not {family.name}")
        sizes = {k: (getattr(donor_config, k), getattr(model.config, k)) for k in family.architecture_fields}
        different = {k: v for k, v in sizes.items() if v[0] != v[1]}
        rows, vocab_size = donor_config.vocab_size, model.config.vocab_size
        if rows < vocab_size or (from_checkpoint and rows != vocab_size):
            different["vocab_size"] = (rows, vocab_size)
        if different:
            details = ", ".join(f"{k} {a} there vs {b} here" for k, (a, b) in different.items())
            raise UserError(f"--init-from {source}: the model sizes differ: {details}")
        if from_checkpoint:
            model.load_state_dict(donor.state_dict())
            return
        with warnings.catch_warnings():  # the driver names the missing heads once, not every rank
            warnings.simplefilter("ignore")
            family.copy_hf_weights(model, directory)


def init_optimizer_state_from(optimizer: torch.optim.Optimizer, source: str | Path) -> None:
    """Take the optimizer state (moments and step counts) of the training checkpoint `source` into
    `optimizer`, which keeps its own hyperparameters (lr, betas, eps, weight decay): the next phase of the
    same training (the driver checked that the checkpoint's optimizer and model are the run's)."""
    with (
        storage.local_input(storage.join(source, OPTIMIZER_FILE)) as local,
        _naming_damaged_file(Path(local).parent, OPTIMIZER_FILE),
    ):
        saved = torch.load(local, weights_only=True)
    ours = optimizer.state_dict()
    counts = [len(group["params"]) for group in ours["param_groups"]]
    saved_counts = [len(group["params"]) for group in saved["param_groups"]]
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    different = [
        index
        for index, state in saved["state"].items()
        if index >= len(parameters) or state["exp_avg"].shape != parameters[index].shape
    ]
    if counts != saved_counts or different:
        raise UserError(
            f"--init-from {source}: its optimizer state is for other parameters (tensors per group "
            f"{saved_counts} there vs {counts} here): drop checkpoint.init_optimizer_state"
        )
    optimizer.load_state_dict({"state": saved["state"], "param_groups": ours["param_groups"]})


def check_init_from(source: str | Path) -> None:
    """A UserError unless `source` is a training checkpoint or an HF model folder."""
    if not any(storage.is_file(storage.join(source, name)) for name in (MODEL_CONFIG_FILE, "config.json")):
        raise UserError(
            f"--init-from {source}: not a training checkpoint ({MODEL_CONFIG_FILE}) nor an HF model folder "
            "(config.json)"
        )


def export_final(checkpoint_dir: Path, tokenizer_dir: str | Path, out_dir: Path) -> Path:
    """Write the checkpoint's model in HF format plus the tokenizer files (local or in a bucket) into the
    local folder `out_dir`."""
    model = load_model_from_checkpoint(checkpoint_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_hf(out_dir)
    for name in TOKENIZER_FILES:
        source = storage.join(tokenizer_dir, name)
        if storage.is_file(source):
            (out_dir / name).write_text(storage.read_text(source), encoding="utf-8")
    return out_dir


def _device_of(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).device)
