"""Shared pieces of the model tests: tiny configs, random batches, HF reference models with random weights."""

from __future__ import annotations

import torch
import transformers

from model import IGNORE_INDEX, BertConfig


def tiny_config(**overrides) -> BertConfig:
    sizes = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
    )
    return BertConfig(**{**sizes, **overrides})


def hf_reference(config: BertConfig, cls=transformers.BertForPreTraining, seed: int = 0):
    """An HF model of these sizes whose every weight (biases and LayerNorms too) is random, in eval mode."""
    torch.manual_seed(seed)
    model = cls(transformers.BertConfig(**config.to_hf_dict(), attn_implementation="sdpa"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def random_batch(
    config: BertConfig,
    batch_size: int = 4,
    seq_len: int = 16,
    padded: bool = True,
    token_types: bool = True,
    mask_rate: float = 0.3,
    seed: int = 0,
    lengths: list[int] | None = None,
) -> dict[str, torch.Tensor]:
    """A pretraining batch; with `padded`, rows after the first end early and are padded with pad_token_id.

    `lengths` (one per row) sets the real lengths instead."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = batch_size if lengths is None else len(lengths)
    input_ids = torch.randint(1, config.vocab_size, (batch_size, seq_len), generator=generator)
    if lengths is None:
        lengths = [seq_len] * batch_size
        if padded:
            shorter = torch.randint(seq_len // 2, seq_len, (batch_size - 1,), generator=generator)
            lengths[1:] = shorter.tolist()
    lengths = torch.tensor(lengths)
    attention_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, config.pad_token_id)
    labelled = (torch.rand(batch_size, seq_len, generator=generator) < mask_rate) & (attention_mask == 1)
    labelled[:, 1] = attention_mask[:, 1] == 1  # at least one label in each row longer than [CLS]
    targets = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)
    mlm_labels = torch.where(labelled, targets, IGNORE_INDEX)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mlm_labels": mlm_labels,
        "next_sentence_label": torch.randint(0, 2, (batch_size,), generator=generator),
    }
    if token_types:
        second_segment = torch.arange(seq_len)[None, :] >= (lengths[:, None] // 2)
        batch["token_type_ids"] = (second_segment & (attention_mask == 1)).long()
    return batch
