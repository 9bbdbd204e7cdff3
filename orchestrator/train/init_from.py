"""Continued pretraining: what `--init-from` brings, read on the driver before Ray Train starts.

A donor is an HF folder of a family this tool has (BERT or ModernBERT, by config.json's model_type:
config.json + weights, with or without heads, its tokenizer beside it or not)
or one of our training checkpoints (model_config.json + model.safetensors), local or in a bucket. It decides
the run's model: its sizes (layers, hidden, heads, intermediate, positions, type vocabulary, vocabulary rows,
LayerNorm eps) replace the preset, and a preset that says otherwise is refused. Its tokenizer is the run's
tokenizer, because the embedding rows are indexed by its ids: another one is refused. A family's retunable
fields (ModernBERT's global rotary theta and positions: context extension) may be set anew by the run; a
donor of another family than model.family is refused. Only the header of the weights is read here; the
workers load the weights themselves (`init_weights_from`), and with `checkpoint.init_optimizer_state` a
training checkpoint's optimizer state (`init_optimizer_state_from`), once its optimizer and heads are found
to be the run's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from dataclasses import dataclass

from common import storage
from common.console import say
from common.errors import UserError
from common.redact import redact
from data import load_tokenizer
from data.tokenizer import TOKENIZER_FILE, VOCAB_FILE
from model import FAMILIES, EncoderConfig, Family, config_from_checkpoint_json, family_of
from model.families import family_of_hf_config
from model.hf import CONFIG_FILE, SAFETENSORS_FILE, tensor_names
from orchestrator.config import AUTO_PRESET, JobConfig
from orchestrator.train.checkpoints import (
    MODEL_CONFIG_FILE,
    OPTIMIZER_FILE,
    TRAIN_STATE_FILE,
    check_init_from,
)


@dataclass(frozen=True)
class Donor:
    source: str
    """The folder or bucket URI given to --init-from."""
    config: EncoderConfig
    """Its family's config with its sizes as stored; vocab_size is its number of embedding rows (NVIDIA pads
    30,522 to 30,528)."""
    tokenizer_dir: str | None
    """Where its own tokenizer is: the folder itself, or the run's tokenizer of a training checkpoint."""
    has_mlm_head: bool
    has_nsp_head: bool
    config_hash: str
    """sha256 of its config file (16 hex digits): which donor a run started from."""
    optimizer: str | None = None
    """The optimizer (optim.name) whose state a training checkpoint holds; None for an HF folder."""

    @property
    def family(self) -> Family:
        return family_of(self.config)

    @property
    def missing_heads(self) -> list[str]:
        """The heads of its family that it lacks (a family without NSP misses none)."""
        heads = {"MLM": self.has_mlm_head}
        if self.family.has_nsp:
            heads["NSP"] = self.has_nsp_head
        return [name for name, present in heads.items() if not present]

    def describe(self) -> str:
        c = self.config
        return f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads"


def read_donor(source: str) -> Donor:
    """The sizes, tokenizer and heads of the checkpoint or HF folder at `source` (a clear error otherwise)."""
    check_init_from(source)
    checkpoint_config = storage.join(source, MODEL_CONFIG_FILE)
    try:
        if storage.is_file(checkpoint_config):
            text = storage.read_text(checkpoint_config)
            config = config_from_checkpoint_json(text)
            run_config = _run_config(source)
            return Donor(
                source,
                config,
                _run_tokenizer(run_config),
                True,
                config.use_nsp,
                _hash(text),
                _optimizer_name(source, run_config),
            )
        text = storage.read_text(storage.join(source, CONFIG_FILE))
        hf_config = json.loads(text)
        family = family_of_hf_config(hf_config, f"--init-from {source}")
        config = family.config_from_hf_dict(hf_config)
        has_mlm, has_nsp = family.pretraining_heads(_tensor_names(source), hf_config)
    except (ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
        raise UserError(f"--init-from {source}: not a usable checkpoint: {error}") from None
    own_tokenizer = any(storage.is_file(storage.join(source, name)) for name in (TOKENIZER_FILE, VOCAB_FILE))
    return Donor(source, config, source if own_tokenizer else None, has_mlm, has_nsp, _hash(text))


def adopt_donor(job: JobConfig, donor: Donor) -> JobConfig:
    """The job with the donor's tokenizer; refuses a family, a preset, a tokenizer or (with
    checkpoint.init_optimizer_state) an optimizer that contradicts the donor."""
    if donor.family.name != job.model.family:
        raise UserError(
            f"--init-from {donor.source} is a {donor.family.name} model but model.family is "
            f"{job.model.family}: set model.family: {donor.family.name}, or start from a {job.model.family} "
            "checkpoint"
        )
    if job.checkpoint.init_optimizer_state:
        _check_optimizer_donor(job, donor)
    if job.model.preset != AUTO_PRESET:
        preset = donor.family.presets[job.model.preset]
        theirs = {name: getattr(donor.config, name) for name in preset}
        if preset != theirs:
            raise UserError(
                f"model.preset={job.model.preset} ({_shape(preset)}) contradicts --init-from {donor.source} "
                f"({_shape(theirs)}): the checkpoint decides the model; drop the preset "
                f"(--set model.preset={AUTO_PRESET}, as configs/continue.yaml does) or start from another "
                "checkpoint"
            )
    tokenizer_dir = job.data.tokenizer_dir
    if donor.tokenizer_dir is None:
        return job
    if tokenizer_dir and _holds_tokenizer(tokenizer_dir):
        if not _same_tokenizer(tokenizer_dir, donor.tokenizer_dir):
            raise UserError(
                f"data.tokenizer_dir {tokenizer_dir} is not the tokenizer of --init-from {donor.source} "
                f"(its vocabulary or casing differ), and the checkpoint's embeddings are indexed by its own "
                f"tokenizer's ids: drop data.tokenizer_dir (--set data.tokenizer_dir=) to use "
                f"{donor.tokenizer_dir}, --init-from a model trained with {tokenizer_dir}, or train from "
                "scratch without --init-from"
            )
        return job
    say(f"Using the tokenizer of --init-from: {donor.tokenizer_dir}")
    return dataclasses.replace(job, data=dataclasses.replace(job.data, tokenizer_dir=donor.tokenizer_dir))


def _check_optimizer_donor(job: JobConfig, donor: Donor) -> None:
    """The donor's optimizer state fits the run: same optimizer, same parameters (the heads included)."""
    drop = "or drop checkpoint.init_optimizer_state to start the optimizer afresh"
    if donor.optimizer is None:
        raise UserError(
            f"checkpoint.init_optimizer_state: --init-from {donor.source} holds no optimizer state (an HF "
            f"folder or a run's final/ has the weights only): give one of the run's checkpoints "
            f"(RUN/checkpoint_N), {drop}"
        )
    if donor.optimizer != job.optim.name:
        raise UserError(
            f"checkpoint.init_optimizer_state: --init-from {donor.source} holds the state of "
            f"optim.name={donor.optimizer}, this run uses {job.optim.name}: set "
            f"optim.name={donor.optimizer}, {drop}"
        )
    if donor.family.has_nsp and donor.has_nsp_head != job.model.use_nsp:
        raise UserError(
            f"checkpoint.init_optimizer_state: --init-from {donor.source} was trained with "
            f"model.use_nsp={str(donor.has_nsp_head).lower()}, so its optimizer state is for other "
            f"parameters: set model.use_nsp={str(donor.has_nsp_head).lower()}, {drop}"
        )
    say(f"Taking the optimizer state of --init-from {redact(donor.source)} as well ({donor.optimizer}).")


def model_config(
    job: JobConfig, vocab_size: int, special_ids: dict[str, int], donor: Donor | None
) -> EncoderConfig:
    """The run's model config (of model.family): the donor's sizes or the preset's, with the prepared data's
    vocabulary and special tokens, and the section's own settings (dropout, retuned fields, ...)."""
    family = FAMILIES[job.model.family]
    settings = {
        "vocab_size": vocab_size,
        "pad_token_id": special_ids["pad"],
        "cls_token_id": special_ids.get("cls"),
        "sep_token_id": special_ids.get("sep"),
        "use_nsp": job.model.use_nsp,
        "activation_checkpointing": job.model.activation_checkpointing,
        "unpadded_attention": job.model.unpadded_attention,
        **dict.fromkeys(family.dropout_fields, job.model.dropout),
        **job.model.retunable_fields(),
    }
    if donor is None:
        preset = "tiny" if job.model.preset == AUTO_PRESET else job.model.preset
        return family.from_preset(preset, **settings)
    if vocab_size > donor.config.vocab_size:
        raise UserError(
            f"the tokenizer has {vocab_size:,} tokens but --init-from {donor.source} has embeddings for "
            f"{donor.config.vocab_size:,}: use the checkpoint's own tokenizer"
        )
    taken = {name: getattr(donor.config, name) for name in family.donor_fields}
    return family.make_config(**taken | settings)


def donor_tags(donor: Donor) -> dict[str, str]:
    """MLflow tags naming the donor (the path is redacted when logged)."""
    return {
        "init_from": donor.source,
        "init_from_config_hash": donor.config_hash,
        "init_from_missing_heads": ", ".join(donor.missing_heads) or "none",
    }


def _tensor_names(source: str) -> list[str]:
    """Tensor names from the safetensors header alone (no download of the weights from a bucket)."""
    path = storage.join(source, SAFETENSORS_FILE)
    if not storage.is_file(path):  # pytorch_model.bin: it has no header to read apart
        with storage.local_input(source) as local:
            from pathlib import Path

            return tensor_names(Path(local))
    filesystem, inner = storage.resolve(path)
    with filesystem.open_input_file(inner) as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        header = json.loads(stream.read(length))
    return [name for name in header if name != "__metadata__"]


def _run_config(checkpoint: str) -> dict:
    """The resolved config of the run that wrote a training checkpoint ({} when it has none)."""
    state_file = storage.join(checkpoint, TRAIN_STATE_FILE)
    if not storage.is_file(state_file):
        return {}
    return json.loads(storage.read_text(state_file)).get("config", {})


def _optimizer_name(checkpoint: str, run_config: dict) -> str | None:
    if not storage.is_file(storage.join(checkpoint, OPTIMIZER_FILE)):
        return None
    return run_config.get("optim", {}).get("name")


def _run_tokenizer(run_config: dict) -> str | None:
    """The tokenizer of the run that wrote a training checkpoint, when it is still there."""
    tokenizer_dir = run_config.get("data", {}).get("tokenizer_dir")
    return tokenizer_dir if tokenizer_dir and _holds_tokenizer(tokenizer_dir) else None


def _holds_tokenizer(directory: str) -> bool:
    return any(storage.is_file(storage.join(directory, name)) for name in (TOKENIZER_FILE, VOCAB_FILE))


def _same_tokenizer(first: str, second: str) -> bool:
    """Same tokens at the same ids, and the same normalisation (casing, accents)."""
    a, b = load_tokenizer(first), load_tokenizer(second)
    probe = "Ünïcödé Casing, MIXED café"

    def normalised(tokenizer) -> str:
        return tokenizer.normalizer.normalize_str(probe) if tokenizer.normalizer else probe

    return a.get_vocab() == b.get_vocab() and normalised(a) == normalised(b)


def _shape(sizes: dict[str, int]) -> str:
    return ", ".join(f"{name} {value}" for name, value in sizes.items())


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
