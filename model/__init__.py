"""The BERT encoder and its pretraining heads, in plain torch (no Ray, no MLflow).

`BertConfig` and its `PRESETS`; `BertForPreTraining` (`.bert` is the encoder) with HF import/export
(`from_hf`, `save_hf`); `BertForSequenceClassification`, the fine-tuning head (`model.heads`);
`TokenLayout`, how a padded batch runs unpadded, and `attention_path` in words; `compile_model` to apply
torch.compile from outside.
The second family, ModernBERT (model/modernbert.py): `ModernBertConfig` and its `MODERNBERT_PRESETS`,
`ModernBertForPreTraining` (MLM only, the same batch and output as BERT's), HF import/export beside it.
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
from model.heads import BertForSequenceClassification, ClassificationOutput
from model.hf import CheckpointError
from model.modernbert import PRESETS as MODERNBERT_PRESETS
from model.modernbert import ModernBertConfig, ModernBertForPreTraining, ModernBertModel

__all__ = [
    "ARCHITECTURE_FIELDS",
    "IGNORE_INDEX",
    "MODERNBERT_PRESETS",
    "PRESETS",
    "BertConfig",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "BertModel",
    "CheckpointError",
    "ClassificationOutput",
    "ModernBertConfig",
    "ModernBertForPreTraining",
    "ModernBertModel",
    "PretrainingOutput",
    "TokenLayout",
    "attention_path",
    "compile_model",
]
