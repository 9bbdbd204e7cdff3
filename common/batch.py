"""The collated batch, the contract between the data pipeline (which pads and masks) and the model."""

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "mlm_labels", "next_sentence_label")
"""The fields of a collated batch: `input_ids`, `token_type_ids`, `attention_mask`, `mlm_labels` [B, S] and
`next_sentence_label` [B]."""

IGNORE_INDEX = -100
"""The label of a position that is not predicted (PyTorch's cross-entropy default)."""
