"""The encoder families (BERT, ModernBERT): for each, its config class, presets, pretraining model, HF
import/export and what makes two of its networks the same. The rest of the tool asks this module, never
names a family's classes itself.

A family's config class owns its FLOPs (`training_flops`); a family's model class takes the collated batch
and returns `PretrainingOutput`, its encoder is `.bert` (DESIGN.md's encoder contract).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model import bert, hf, modernbert, modernbert_hf
from model.config import ARCHITECTURE_FIELDS, PRESETS, BertConfig
from model.heads import BertForSequenceClassification
from model.hf import CONFIG_FILE, CheckpointError
from model.modernbert import ModernBertConfig, ModernBertForPreTraining
from model.modernbert_heads import ModernBertForSequenceClassification

EncoderConfig = BertConfig | ModernBertConfig
"""The config of any family's model."""
PretrainingModel = bert.BertForPreTraining | ModernBertForPreTraining
"""Any family's pretraining model: `model(**batch)` gives `PretrainingOutput`, `.bert` is the encoder."""

FAMILY_KEY = "family"
"""The key naming the family in a training checkpoint's model_config.json (absent: bert, older runs)."""


@dataclass(frozen=True)
class Family:
    name: str
    config_class: type
    model_class: type
    """The pretraining model: (config) -> `model(**batch)` gives `PretrainingOutput`."""
    classifier_class: type
    """The fine-tuning model: (config, num_labels), its encoder `.bert`, `save_hf(dir, label_names)`."""
    presets: dict[str, dict[str, int]]
    hf_model_type: str
    """`model_type` in an HF config.json of this family."""
    hf_architecture: str
    """The transformers class our exports are (config.json `architectures`)."""
    architecture_fields: tuple[str, ...]
    """What makes two networks of the family the same, besides the vocabulary: weights move only between
    such models, and a checkpoint resumes only into one."""
    donor_fields: tuple[str, ...]
    """What a run started from a checkpoint takes from it (architecture_fields and the initialisation, and
    settings a run may change, such as a rotary theta)."""
    retunable_fields: tuple[str, ...]
    """Fields that a run started from a checkpoint may set to new values (context extension)."""
    has_nsp: bool
    """Whether the family has a next-sentence-prediction head."""
    dropout_fields: tuple[str, ...]
    """The config fields that model.dropout sets."""
    config_from_hf_dict: Callable[[dict[str, Any]], Any]
    read_hf_config: Callable[..., Any]
    copy_hf_weights: Callable[[torch.nn.Module, Path], None]
    pretraining_heads: Callable[[list[str], dict[str, Any]], tuple[bool, bool]]
    """(has an MLM head, has a trained NSP head) from a checkpoint's tensor names and config.json."""
    attention_path: Callable[[Any, torch.device], str]

    def from_preset(self, name: str, **settings: Any) -> EncoderConfig:
        return self.config_class.from_preset(name, **self.own_fields(settings))

    def make_config(self, **settings: Any) -> EncoderConfig:
        return self.config_class(**self.own_fields(settings))

    def own_fields(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings that are fields of this family's config (others are another family's)."""
        names = {f.name for f in dataclasses.fields(self.config_class)}
        return {k: v for k, v in settings.items() if k in names}

    def config_to_json(self, config: EncoderConfig) -> str:
        """A training checkpoint's model_config.json."""
        return json.dumps({FAMILY_KEY: self.name, **dataclasses.asdict(config)}, indent=2)


def _modernbert_heads(names: list[str], hf_config: dict[str, Any]) -> tuple[bool, bool]:
    return any(name.removeprefix("model.").startswith("head.") for name in names), False


_MODERNBERT_ARCHITECTURE = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "hidden_activation",
    "global_attn_every_n_layers",
    "local_attention",
    "local_rope_theta",
    "norm_eps",
    "norm_bias",
    "attention_bias",
    "mlp_bias",
    "classifier_bias",
    "decoder_bias",
    "classifier_activation",
)
# Rotary positions have no table: a longer context and another global theta keep every weight's shape.
_MODERNBERT_RETUNABLE = ("global_rope_theta", "max_position_embeddings")

FAMILIES: dict[str, Family] = {
    "bert": Family(
        name="bert",
        config_class=BertConfig,
        model_class=bert.BertForPreTraining,
        classifier_class=BertForSequenceClassification,
        presets=PRESETS,
        hf_model_type="bert",
        hf_architecture="BertForPreTraining",
        architecture_fields=ARCHITECTURE_FIELDS,
        donor_fields=(*ARCHITECTURE_FIELDS, "initializer_range"),
        retunable_fields=(),
        has_nsp=True,
        dropout_fields=("hidden_dropout_prob", "attention_probs_dropout_prob"),
        config_from_hf_dict=BertConfig.from_hf_dict,
        read_hf_config=hf.read_hf_config,
        copy_hf_weights=hf.copy_hf_weights,
        pretraining_heads=hf.pretraining_heads,
        attention_path=bert.attention_path,
    ),
    "modernbert": Family(
        name="modernbert",
        config_class=ModernBertConfig,
        model_class=ModernBertForPreTraining,
        classifier_class=ModernBertForSequenceClassification,
        presets=modernbert.PRESETS,
        hf_model_type="modernbert",
        hf_architecture=modernbert_hf.ARCHITECTURE,
        architecture_fields=_MODERNBERT_ARCHITECTURE,
        donor_fields=(
            *_MODERNBERT_ARCHITECTURE,
            *_MODERNBERT_RETUNABLE,
            "initializer_range",
            "initializer_cutoff_factor",
            "classifier_pooling",
        ),
        retunable_fields=_MODERNBERT_RETUNABLE,
        has_nsp=False,
        dropout_fields=("embedding_dropout", "attention_dropout", "mlp_dropout"),
        config_from_hf_dict=modernbert_hf.config_from_hf,
        read_hf_config=modernbert_hf.read_hf_config,
        copy_hf_weights=modernbert_hf.copy_hf_weights,
        pretraining_heads=_modernbert_heads,
        attention_path=modernbert.attention_path,
    ),
}
DEFAULT_FAMILY = "bert"


def family_named(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of(config: EncoderConfig) -> Family:
    """The family of a model config (BertConfig, ModernBertConfig)."""
    for family in FAMILIES.values():
        if type(config) is family.config_class:
            return family
    raise TypeError(f"{type(config).__name__} is not the config of a known model family")


def family_of_hf_config(hf_config: dict[str, Any], where: str | Path) -> Family:
    """The family of an HF config.json dict by its model_type; a CheckpointError for any other."""
    model_type = hf_config.get("model_type")
    for family in FAMILIES.values():
        if family.hf_model_type == model_type:
            return family
    known = ", ".join(repr(f.hf_model_type) for f in FAMILIES.values())
    raise CheckpointError(f"{where}: model_type {model_type!r} is not a family this tool has ({known})")


def read_hf_family(directory: Path) -> Family:
    """The family of the HF checkpoint folder `directory` (its config.json's model_type)."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{directory} is not an HF checkpoint: {CONFIG_FILE} not found")
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path}: not valid JSON: {error}") from error
    return family_of_hf_config(hf_config, config_path)


def config_from_checkpoint_json(text: str) -> EncoderConfig:
    """The model config a training checkpoint's model_config.json holds."""
    saved = json.loads(text)
    family = family_named(saved.pop(FAMILY_KEY, DEFAULT_FAMILY))
    return family.config_class(**saved)
