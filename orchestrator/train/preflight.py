"""What `train` checks and builds before Ray Train starts, so that nothing fails the same way on every worker.

- The tokenizer and the prepared data: built when missing; what `train` built itself (it marks it) is rebuilt
  when the recipe's settings change; a tokenizer the user brought is used as it is, and prepared data that
  another command made for other settings is refused with what differs, never replaced by surprise.
- The sequence length against the model's positions, and the prepared data against the model.
- The checkpoint the run resumes from, against the model the run builds.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import data
from common import storage
from common.console import say
from common.errors import UserError
from common.redact import redact
from data.config import PrepareConfig
from data.manifest import FORMAT_VERSION, MANIFEST_FILE
from data.tokenizer import TOKENIZER_FILE, VOCAB_FILE
from model import FAMILIES, EncoderConfig
from orchestrator.config import AUTO_PRESET, JobConfig
from orchestrator.run import Run
from orchestrator.train.checkpoints import ResumePoint, check_resumable
from orchestrator.train.init_from import Donor

TOKENIZER_SETTINGS_FILE = "bert_pretrain_tokenizer.json"  # written beside a tokenizer that `train` built
PREPARED_MARKER_FILE = "bert_pretrain_prepared.json"  # written beside the manifest of data that `train` built


def check_sequence_length(job: JobConfig, donor: Donor | None) -> None:
    """Examples longer than the model's position embeddings cannot be trained on: refuse before preparing."""
    length = job.data.prepare.max_seq_length
    retuned = job.model.retunable_fields().get("max_position_embeddings")
    if retuned is not None:
        positions, model = retuned, "model.max_position_embeddings"
    elif donor is not None:
        positions, model = donor.config.max_position_embeddings, f"--init-from {redact(donor.source)}"
    else:
        preset = "tiny" if job.model.preset == AUTO_PRESET else job.model.preset
        positions = FAMILIES[job.model.family].from_preset(preset).max_position_embeddings
        model = f"model preset {preset!r}"
    if length > positions:
        raise UserError(
            f"data.prepare.max_seq_length={length} is longer than {model} has positions ({positions}): use "
            f"data.prepare.max_seq_length={positions} or less"
        )


def check_data_fits_model(job: JobConfig, manifest: data.Manifest, model: EncoderConfig) -> None:
    """The prepared examples must fit the model: their length within its positions, NSP labels for an NSP
    head."""
    positions = model.max_position_embeddings
    if manifest.settings.max_seq_length > positions:
        raise UserError(
            f"{job.data.prepared_dir} holds examples of {manifest.settings.max_seq_length} tokens, more than "
            f"the model has positions ({positions}): prepare with data.prepare.max_seq_length={positions} "
            "or less"
        )
    if job.model.use_nsp and manifest.settings.objective != "mlm+nsp":
        raise UserError(
            f"{job.data.prepared_dir} was prepared for objective {manifest.settings.objective!r} (no "
            "sentence pairs): set model.use_nsp=false, or prepare with objective mlm+nsp"
        )


def check_resume_keeps_order(config: JobConfig, resume: ResumePoint) -> None:
    """A resume reads exactly the examples the uninterrupted run would have read: refused, before anything
    is built, when a setting the data order is made from differs from the one its checkpoint was trained
    with (the seed, the global batch and its warmup, the partitions and window, the prepared data and its
    settings). A setting that a checkpoint of an earlier version does not record had its default then."""
    saved = resume.train_state.get("config")
    if resume.path is None or not saved:
        return
    now, defaults = redact(config.to_dict()), JobConfig().to_dict()
    for key in ORDER_SETTINGS:
        before, after = _setting(saved, key, _setting(defaults, key)), _setting(now, key)
        if before != after:
            raise UserError(
                f"this run resumes from {_name(resume)}, trained with {key}={before!r}; with {key}={after!r} "
                "it would read other examples than the run would have read. Keep "
                f"{key}={before!r} to resume it exactly, or {_fresh_start(resume)}"
            )


def check_resume_point(resume: ResumePoint, run: Run) -> None:
    """The checkpoint to resume from must hold the model this run builds, and have been trained on the
    prepared examples the run reads now."""
    if resume.path is None:
        return
    check_resumable(resume.path, run.plan.model)
    trained_on = resume.train_state.get("data_order", {}).get("prepared_data")
    if trained_on is not None and trained_on != run.plan.data_order["prepared_data"]:
        raise UserError(
            f"this run resumes from {_name(resume)}, but the examples in {run.config.data.prepared_dir} have "
            "changed since it was written (another run or `prepare` rebuilt them): resuming would read "
            f"other examples. Put back the data it was trained on, or {_fresh_start(resume)}"
        )


ORDER_SETTINGS = (
    "train.seed",
    "train.global_batch_size",
    "train.batch_size_warmup",
    "stream.partitions",
    "stream.shuffle_window",
    "data.prepared_dir",
    *(f"data.prepare.{key}" for key in PrepareConfig().output_settings()),
)


_MISSING = object()


def _setting(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """The value of a dotted key in a config mapping; `default` when the mapping lacks it."""
    for part in dotted.split("."):
        config = config.get(part, _MISSING) if isinstance(config, dict) else _MISSING
        if config is _MISSING:
            return default
    return config


def _name(resume: ResumePoint) -> str:
    return f"{storage.basename(resume.path)} (step {resume.step})"


def _fresh_start(resume: ResumePoint) -> str:
    return (
        f"start a new run from its weights with a fresh order: --init-from {resume.path} --set "
        "checkpoint.run_name=NEW_NAME"
    )


def _refuse_rebuild(resume: ResumePoint, prepared_dir: str, why: str) -> UserError:
    return UserError(
        f"this run resumes from {_name(resume)}, trained on the examples in {prepared_dir}, but {why}; a "
        "resume never rebuilds the examples its checkpoints were trained on. Put back the settings it was "
        f"trained with (its run.json holds them), or {_fresh_start(resume)}"
    )


def ensure_prepared_data(job: JobConfig, resume: ResumePoint | None = None) -> data.Manifest:
    """Train the tokenizer and prepare the examples when missing (or made by `train` with other settings);
    reuse them when they match; refuse prepared data that another command made with other settings. A run
    that `resume`s from a checkpoint uses the data it was trained on, or is refused: nothing is rebuilt."""
    settings = job.data
    resuming = resume is not None and resume.path is not None
    _ensure_tokenizer(job, resume if resuming else None)
    tokenizer_hash = data.tokenizer_hash(settings.tokenizer_dir)
    manifest, unreadable = _read_manifest(settings.prepared_dir)
    why = unreadable or (manifest is not None and _mismatch(job, manifest, tokenizer_hash))
    if manifest is not None and not why:
        return manifest
    if resuming:
        raise _refuse_rebuild(resume, settings.prepared_dir, why or "they are missing")
    if why:
        marker = storage.join(settings.prepared_dir, PREPARED_MARKER_FILE)
        if not (storage.is_file(marker) or settings.rebuild):
            raise UserError(
                f"{settings.prepared_dir} holds prepared data that this run did not make, and it does "
                f"not fit this run: {why}. Set data.prepared_dir to another folder (this run then "
                "prepares its data there), or set data.rebuild=true to replace it"
            )
        say(f"Rebuilding the examples in {settings.prepared_dir} ({why}) ...")
    else:
        say(f"Preparing the examples into {settings.prepared_dir} ...")
    manifest = data.prepare(settings.corpus, settings.tokenizer_dir, settings.prepared_dir, settings.prepare)
    storage.write_text(
        storage.join(settings.prepared_dir, PREPARED_MARKER_FILE),
        json.dumps({"made_by": "bert-pretrain train", "run_name": job.checkpoint.run_name}, indent=2),
    )
    return manifest


def _ensure_tokenizer(job: JobConfig, resume: ResumePoint | None) -> None:
    """A tokenizer the user brought (no marker) is used as it is; one that `train` built is rebuilt when the
    recipe's corpus or tokenizer settings change. A run started --init-from never trains one: its tokenizer
    is the donor's (`init_from.adopt_donor`), whose ids index the donor's embeddings, and another
    run's data may be built on it."""
    settings = job.data
    tokenizer_dir = settings.tokenizer_dir
    wanted = {"corpus": redact(settings.corpus), "tokenizer": dataclasses.asdict(settings.tokenizer)}
    marker = storage.join(tokenizer_dir, TOKENIZER_SETTINGS_FILE)
    tokenizer_files = (storage.join(tokenizer_dir, name) for name in (TOKENIZER_FILE, VOCAB_FILE))
    has_tokenizer = any(storage.is_file(path) for path in tokenizer_files)
    if job.checkpoint.init_from:
        if not has_tokenizer:
            raise UserError(
                f"--init-from {job.checkpoint.init_from} brings no tokenizer and data.tokenizer_dir "
                f"{tokenizer_dir or '(unset)'} holds none: set data.tokenizer_dir to the tokenizer the "
                "checkpoint was trained with"
            )
        return
    if has_tokenizer and not (storage.is_file(marker) and json.loads(storage.read_text(marker)) != wanted):
        return
    if resume is not None:
        why = "its tokenizer would be trained again" if has_tokenizer else "its tokenizer is missing"
        raise _refuse_rebuild(resume, job.data.prepared_dir, why)
    say(f"Training the tokenizer into {tokenizer_dir} ...")
    data.train_tokenizer(
        settings.corpus,
        tokenizer_dir,
        settings.tokenizer,
        settings.prepare.input_format,
        settings.prepare.text_field,
    )
    storage.write_text(marker, json.dumps(wanted, indent=2))


def _read_manifest(prepared_dir: str) -> tuple[data.Manifest | None, str]:
    """(the manifest, "") when there is one; (None, why) when the folder holds one that cannot be read;
    (None, "") when there is none."""
    if not storage.is_file(storage.join(prepared_dir, MANIFEST_FILE)):
        return None, ""
    try:
        return data.load_manifest(prepared_dir), ""
    except data.DataError as error:
        return None, str(error)


def _mismatch(job: JobConfig, manifest: data.Manifest, tokenizer_hash: str) -> str:
    """What differs between the prepared data and what this run would prepare ("" when nothing)."""
    wanted = job.data.prepare.output_settings()
    found = manifest.settings.output_settings()
    differences = [
        f"{key} {found[key]!r} there, {wanted[key]!r} here" for key in wanted if found[key] != wanted[key]
    ]
    if manifest.tokenizer_hash != tokenizer_hash:
        differences.append(f"made with another tokenizer than the one in {job.data.tokenizer_dir}")
    if manifest.corpus != redact(job.data.corpus):
        differences.append(f"made from corpus {manifest.corpus}, not {redact(job.data.corpus)}")
    if manifest.format_version != FORMAT_VERSION:
        differences.append(f"layout version {manifest.format_version}, not {FORMAT_VERSION}")
    return "; ".join(differences)
