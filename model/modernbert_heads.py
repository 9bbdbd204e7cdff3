"""Fine-tuning head on the ModernBERT encoder: sequence classification and regression.

`ModernBertForSequenceClassification` is the network of transformers' class of that name: the encoder's
pooled output (`classifier_pooling`: the first token, or the mean of the real tokens), the `head` (dense,
activation, norm, as the MLM head's transform), dropout and the `classifier` linear layer. The loss is BERT's
head's (`model.heads.classification_loss`): a sum over the batch / the caller's normaliser. `save_hf` writes
a folder that `transformers.ModernBertForSequenceClassification` (and a text-classification pipeline) loads.
The dropout before the classifier is the config's mlp_dropout (exported as HF's classifier_dropout).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from model.heads import ClassificationOutput, classification_loss
from model.hf import CONFIG_FILE, SAFETENSORS_FILE
from model.modernbert import ACTIVATIONS, ModernBertConfig, ModernBertModel
from model.modernbert_hf import config_to_hf, hf_key_map

ARCHITECTURE = "ModernBertForSequenceClassification"
# Our head's parameters -> HF's names (HF names the classification head's transform as the MLM head's).
_HEAD_KEYS = {"head_dense": "head.dense", "head_norm": "head.norm", "classifier": "classifier"}


class ModernBertForSequenceClassification(nn.Module):
    def __init__(self, config: ModernBertConfig, num_labels: int):
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.bert = ModernBertModel(config)  # `bert`: the encoder contract of DESIGN.md
        self.head_dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.classifier_bias)
        self.head_activation = ACTIVATIONS[config.classifier_activation]
        self.head_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        self.dropout = nn.Dropout(config.mlp_dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.reset_head()

    def reset_head(self) -> None:
        """HF's initialisation of the head: truncated normal weights, the dense layer's std that of the
        projections back into the residual stream, the classifier's hidden_size ** -0.5; zero biases."""
        config = self.config
        for layer, std in (
            (self.head_dense, config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers)),
            (self.classifier, config.hidden_size**-0.5),
        ):
            cutoff = config.initializer_cutoff_factor * std
            nn.init.trunc_normal_(layer.weight, mean=0.0, std=std, a=-cutoff, b=cutoff)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        normalizer: float | torch.Tensor | None = None,
    ) -> ClassificationOutput:
        """As `BertForSequenceClassification.forward`; `token_type_ids` is ignored (no segments)."""
        hidden_states, layout = self.bert.encode(input_ids, attention_mask=attention_mask)
        pooled = self.bert.pool(hidden_states, layout, attention_mask)  # (B, H)
        pooled = self.head_norm(self.head_activation(self.head_dense(pooled)))
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        return ClassificationOutput(loss=classification_loss(logits, labels, normalizer), logits=logits)

    def save_hf(self, path: str | Path, label_names: list[str] | None = None) -> None:
        """Write config.json and model.safetensors that `transformers.ModernBertForSequenceClassification`
        loads, with `id2label`/`label2id` from `label_names` (class id order; regression: None)."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        names = label_names or [f"LABEL_{i}" for i in range(self.num_labels)]
        hf_config = config_to_hf(self.config) | {
            "architectures": [ARCHITECTURE],
            "problem_type": "regression" if self.is_regression else "single_label_classification",
            "classifier_dropout": self.config.mlp_dropout,
            "id2label": {str(i): name for i, name in enumerate(names)},
            "label2id": {name: i for i, name in enumerate(names)},
        }
        (directory / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        ours = self.state_dict()
        tensors = {
            f"model.{theirs}": ours[name] for name, theirs in hf_key_map(self.config).items() if name in ours
        }
        word = "model.embeddings.tok_embeddings.weight"
        tensors[word] = tensors[word][: self.config.vocab_size]  # the vocabulary padding cut off
        for name, tensor in ours.items():
            module, _, kind = name.rpartition(".")
            if module in _HEAD_KEYS:
                tensors[f"{_HEAD_KEYS[module]}.{kind}"] = tensor
        tensors = {key: tensor.detach().contiguous().cpu() for key, tensor in tensors.items()}
        save_file(tensors, directory / SAFETENSORS_FILE, metadata={"format": "pt"})
