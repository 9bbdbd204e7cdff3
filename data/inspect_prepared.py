"""What the model will see: decoded masked examples and one epoch's masking statistics of a prepared dir."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from common import storage
from common.batch import IGNORE_INDEX
from data.config import MaskingConfig
from data.manifest import TOKENIZER_DIR, load_manifest
from data.stream import build_train_dataset
from data.tokenizer import load_tokenizer


def masking_statistics(
    prepared_dir: str,
    masking: MaskingConfig | None = None,
    seed: int = 0,
    epoch: int = 0,
    split: str = "train",
) -> dict:
    """Over one epoch: the share of maskable tokens predicted, the [MASK]/random/kept shares, NSP share."""
    manifest = load_manifest(prepared_dir)
    dataset = build_train_dataset(prepared_dir, masking, seed, epoch, split)
    parts = dataset.map_batches(
        _batch_counts,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={
            "mask_id": manifest.special_token_ids["mask"],
            "special_ids": sorted(manifest.special_token_ids.values()),
        },
    ).take_all()
    totals = {key: sum(int(part[key]) for part in parts) for key in parts[0]} if parts else {}
    predicted = max(totals.get("predicted", 0), 1)
    return {
        "examples": totals.get("examples", 0),
        "maskable_tokens": totals.get("maskable", 0),
        "predicted_tokens": totals.get("predicted", 0),
        "mask_rate": totals.get("predicted", 0) / max(totals.get("maskable", 0), 1),
        "mask_token_share": totals.get("as_mask", 0) / predicted,
        "random_token_share": totals.get("as_random", 0) / predicted,
        "kept_share": totals.get("kept", 0) / predicted,
        "nsp_random_share": totals.get("nsp_random", 0) / max(totals.get("examples", 0), 1),
    }


def _batch_counts(batch: pa.Table, mask_id: int, special_ids: list[int]) -> dict:
    inputs = batch.column("input_ids").combine_chunks().flatten().to_numpy()
    labels = batch.column("mlm_labels").combine_chunks().flatten().to_numpy()
    predicted = labels != IGNORE_INDEX
    # Special tokens are never chosen, so the original ids of unpredicted tokens tell what was maskable.
    originals = np.where(predicted, labels, inputs)
    maskable = ~np.isin(originals, special_ids)
    return {
        "examples": np.array([batch.num_rows]),
        "maskable": np.array([maskable.sum()]),
        "predicted": np.array([predicted.sum()]),
        "as_mask": np.array([(predicted & (inputs == mask_id)).sum()]),
        "kept": np.array([(predicted & (inputs == labels)).sum()]),
        "as_random": np.array([(predicted & (inputs != mask_id) & (inputs != labels)).sum()]),
        "nsp_random": np.array([pa.compute.sum(batch.column("next_sentence_label")).as_py() or 0]),
    }


def decoded_examples(
    prepared_dir: str,
    count: int = 5,
    masking: MaskingConfig | None = None,
    seed: int = 0,
    epoch: int = 0,
    split: str = "train",
) -> list[dict]:
    """First `count` examples as tokens; a predicted token shows as `[MASK]->word`, `x->word` or `(word)`."""
    tokenizer = load_tokenizer(storage.join(prepared_dir, TOKENIZER_DIR))
    rows = build_train_dataset(prepared_dir, masking, seed, epoch, split).take(count)
    examples = []
    for row in rows:
        shown = []
        for token_id, label in zip(row["input_ids"], row["mlm_labels"], strict=True):
            token = tokenizer.id_to_token(int(token_id))
            if label == IGNORE_INDEX:
                shown.append(token)
            elif label == token_id:
                shown.append(f"({token})")
            else:
                shown.append(f"{token}->{tokenizer.id_to_token(int(label))}")
        examples.append(
            {
                "example_id": int(row["example_id"]),
                "next_sentence_label": int(row["next_sentence_label"]),
                "tokens": " ".join(shown),
            }
        )
    return examples
