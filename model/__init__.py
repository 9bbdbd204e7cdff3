"""The BERT encoder and its pretraining heads, in plain torch (no Ray, no MLflow).

`BertConfig` and its `PRESETS`; `BertForPreTraining` (`.bert` is the encoder) with HF import/export
(`from_hf`, `save_hf`); `BertForSequenceClassification`, the fine-tuning head (`model.heads`);
`TokenLayout`, how a padded batch runs unpadded, and `attention_path` in words; `compile_model` to apply
torch.compile from outside.
The second family, ModernBERT (model/modernbert.py): `ModernBertConfig` and its `MODERNBERT_PRESETS`,
`ModernBertForPreTraining` (MLM only, the same batch and output as BERT's), HF import/export beside it.
`Family` and `FAMILIES` (model/families.py): per family its config, presets, model, HF import/export.
"""

from model.bert import (
    IGNORE_INDEX,
    BertForPreTraining,
    BertModel,
    PretrainingOutput,
    TokenLayout,
    attention_path,
    compile_model,
)
from model.config import ARCHITECTURE_FIELDS, PRESETS, BertConfig
from model.families import (
    FAMILIES,
    EncoderConfig,
    Family,
    PretrainingModel,
    config_from_checkpoint_json,
    family_named,
    family_of,
    read_hf_family,
)
from model.heads import BertForSequenceClassification, ClassificationOutput
from model.hf import CheckpointError
from model.modernbert import PRESETS as MODERNBERT_PRESETS
from model.modernbert import ModernBertConfig, ModernBertForPreTraining, ModernBertModel

__all__ = [
    "ARCHITECTURE_FIELDS",
    "FAMILIES",
    "IGNORE_INDEX",
    "MODERNBERT_PRESETS",
    "PRESETS",
    "BertConfig",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "BertModel",
    "CheckpointError",
    "ClassificationOutput",
    "EncoderConfig",
    "Family",
    "ModernBertConfig",
    "ModernBertForPreTraining",
    "ModernBertModel",
    "PretrainingModel",
    "PretrainingOutput",
    "TokenLayout",
    "attention_path",
    "compile_model",
    "config_from_checkpoint_json",
    "family_named",
    "family_of",
    "read_hf_family",
]
