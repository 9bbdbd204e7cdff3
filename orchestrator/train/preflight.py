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

import data
from common import storage
from common.console import say
from common.errors import UserError
from common.redact import redact
from data.manifest import FORMAT_VERSION, MANIFEST_FILE
from data.tokenizer import TOKENIZER_FILE, VOCAB_FILE
from model import BertConfig
from orchestrator.config import AUTO_PRESET, JobConfig
from orchestrator.train.checkpoints import ResumePoint, check_resumable
from orchestrator.train.init_from import Donor

TOKENIZER_SETTINGS_FILE = "bert_pretrain_tokenizer.json"  # written beside a tokenizer that `train` built
PREPARED_MARKER_FILE = "bert_pretrain_prepared.json"  # written beside the manifest of data that `train` built


def check_sequence_length(job: JobConfig, donor: Donor | None) -> None:
    """Examples longer than the model's position embeddings cannot be trained on: refuse before preparing."""
    length = job.data.prepare.max_seq_length
    if donor is not None:
        positions, model = donor.config.max_position_embeddings, f"--init-from {redact(donor.source)}"
    else:
        preset = "tiny" if job.model.preset == AUTO_PRESET else job.model.preset
        positions, model = BertConfig.from_preset(preset).max_position_embeddings, f"model preset {preset!r}"
    if length > positions:
        raise UserError(
            f"data.prepare.max_seq_length={length} is longer than {model} has positions ({positions}): use "
            f"data.prepare.max_seq_length={positions} or less"
        )


def check_data_fits_model(job: JobConfig, manifest: data.Manifest, model: BertConfig) -> None:
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


def check_resume_point(resume: ResumePoint, model: BertConfig) -> None:
    """The checkpoint to resume from must hold the model this run builds."""
    if resume.path is not None:
        check_resumable(resume.path, model)


def ensure_prepared_data(job: JobConfig) -> data.Manifest:
    """Train the tokenizer and prepare the examples when missing (or made by `train` with other settings);
    reuse them when they match; refuse prepared data that another command made with other settings."""
    settings = job.data
    _ensure_tokenizer(job)
    tokenizer_hash = data.tokenizer_hash(settings.tokenizer_dir)
    manifest, unreadable = _read_manifest(settings.prepared_dir)
    why = unreadable or (manifest is not None and _mismatch(job, manifest, tokenizer_hash))
    if manifest is not None and not why:
        return manifest
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


def _ensure_tokenizer(job: JobConfig) -> None:
    """A tokenizer the user brought (no marker) is used as it is; one that `train` built is rebuilt when the
    recipe's corpus or tokenizer settings change."""
    settings = job.data
    tokenizer_dir = settings.tokenizer_dir
    wanted = {"corpus": redact(settings.corpus), "tokenizer": dataclasses.asdict(settings.tokenizer)}
    marker = storage.join(tokenizer_dir, TOKENIZER_SETTINGS_FILE)
    tokenizer_files = (storage.join(tokenizer_dir, name) for name in (TOKENIZER_FILE, VOCAB_FILE))
    has_tokenizer = any(storage.is_file(path) for path in tokenizer_files)
    if has_tokenizer and not (storage.is_file(marker) and json.loads(storage.read_text(marker)) != wanted):
        return
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
