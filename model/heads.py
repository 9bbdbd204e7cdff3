"""Fine-tuning heads on the BERT encoder: sequence classification and regression on the pooled [CLS].

`BertForSequenceClassification` is the network of transformers' class of that name: dropout and one linear
layer on the pooler's output; cross-entropy over `num_labels` classes, or the squared error of one number
(`num_labels == 1`, regression). Its weights are named `bert.*` and `classifier.*` in the HF export
(`save_hf`), so that `transformers.BertForSequenceClassification.from_pretrained` (and a `pipeline`) loads it.

The loss is a sum over the batch divided by a normaliser the caller passes (the example count of the whole
global batch), as in pretraining. An example whose label is IGNORE_INDEX (classification) or NaN
(regression) counts nothing: a rank with no example of its own in a step runs one such example, so that DDP
still synchronises its (zero) gradients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from common.batch import IGNORE_INDEX
from model.bert import BertModel
from model.config import BertConfig
from model.hf import CONFIG_FILE, SAFETENSORS_FILE, encoder_hf_state_dict


@dataclass
class ClassificationOutput:
    loss: torch.Tensor
    """Sum of the examples' losses / normalizer: the scalar to backward."""
    logits: torch.Tensor
    """(B, num_labels); for regression (B, 1), the predicted number."""


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor | None, normalizer: float | torch.Tensor | None
) -> torch.Tensor:
    """The summed cross-entropy (or squared error, for one output) of `logits` (B, num_labels) against
    `labels` (B,) / `normalizer` (default: the batch size); IGNORE_INDEX or NaN labels count nothing; 0
    without labels."""
    if labels is None:
        return torch.zeros((), device=logits.device)
    normalizer = labels.shape[0] if normalizer is None else normalizer
    if logits.shape[1] == 1:
        counted = ~labels.isnan()  # a NaN target would make a NaN gradient even when left out
        errors = (logits.squeeze(1).float() - labels.float().nan_to_num(0.0)).square()  # (B,)
        return (errors * counted).sum() / normalizer
    return (
        F.cross_entropy(logits.float(), labels.long(), ignore_index=IGNORE_INDEX, reduction="sum")
        / normalizer
    )


class BertForSequenceClassification(nn.Module):
    def __init__(self, config: BertConfig, num_labels: int):
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

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
        """`labels` (B,): class ids (IGNORE_INDEX: not counted) or numbers (NaN: not counted). The loss is
        their summed cross-entropy or squared error / `normalizer` (default: the batch size); 0 without
        labels."""
        hidden_states, layout = self.bert.encode(input_ids, token_type_ids, attention_mask)
        pooled = self.bert.pool(hidden_states, layout)  # (B, H)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        return ClassificationOutput(loss=classification_loss(logits, labels, normalizer), logits=logits)

    def save_hf(self, path: str | Path, label_names: list[str] | None = None) -> None:
        """Write config.json and model.safetensors that `transformers.BertForSequenceClassification` loads,
        with `id2label`/`label2id` from `label_names` (class id order; regression: None)."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        hf_config = self.config.to_hf_dict()
        hf_config.pop("use_nsp", None)
        hf_config.pop("tie_word_embeddings", None)
        hf_config["architectures"] = ["BertForSequenceClassification"]
        hf_config["problem_type"] = "regression" if self.is_regression else "single_label_classification"
        names = label_names or [f"LABEL_{i}" for i in range(self.num_labels)]
        hf_config["id2label"] = {str(i): name for i, name in enumerate(names)}
        hf_config["label2id"] = {name: i for i, name in enumerate(names)}
        (directory / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        tensors = encoder_hf_state_dict(self.state_dict(), self.config)
        tensors["classifier.weight"] = self.classifier.weight.detach().contiguous().cpu()
        tensors["classifier.bias"] = self.classifier.bias.detach().contiguous().cpu()
        save_file(tensors, directory / SAFETENSORS_FILE, metadata={"format": "pt"})
