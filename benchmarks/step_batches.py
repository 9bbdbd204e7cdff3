"""The batches of the model-step benchmarks: a collated pretraining batch, with or without half padding."""

from __future__ import annotations

import argparse

import torch

from model import IGNORE_INDEX

MASKED_FRACTION = 0.15
PADDINGS = ("full", "half")


def parse_workload(text: str) -> tuple[str, int, int]:
    """'half:8x512' -> ('half', 8, 512)."""
    padding, _, shape = text.partition(":")
    batch, _, seq = shape.partition("x")
    if padding not in PADDINGS or not batch.isdigit() or not seq.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected PADDING:BATCHxSEQ, PADDING one of {PADDINGS}")
    return padding, int(batch), int(seq)


def make_batch(
    vocab_size: int, batch_size: int, seq_len: int, padding: str, device: str
) -> dict[str, torch.Tensor]:
    """Two segments per row, round(15%) of each row's real positions labelled; with padding "half", real
    lengths evenly spread from seq/8 to 7*seq/8. The same batch every time (seeded)."""
    generator = torch.Generator().manual_seed(0)
    if padding == "half":
        lengths = torch.linspace(seq_len / 8, 7 * seq_len / 8, batch_size).round().long()
    else:
        lengths = torch.full((batch_size,), seq_len)
    attention_mask = (torch.arange(seq_len) < lengths[:, None]).long()
    input_ids = torch.randint(5, vocab_size, (batch_size, seq_len), generator=generator) * attention_mask
    token_type_ids = ((torch.arange(seq_len) >= lengths[:, None] // 2) & attention_mask.bool()).long()
    scores = torch.rand(batch_size, seq_len, generator=generator).masked_fill(
        attention_mask == 0, 2.0
    )  # padding sorts last
    mlm_labels = torch.full((batch_size, seq_len), IGNORE_INDEX)
    for row, length in enumerate(lengths.tolist()):
        picked = scores[row].argsort()[: round(MASKED_FRACTION * length)]
        mlm_labels[row, picked] = input_ids[row, picked]
    batch = {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "mlm_labels": mlm_labels,
        "next_sentence_label": torch.randint(0, 2, (batch_size,), generator=generator),
    }
    return {key: value.to(device) for key, value in batch.items()}
