"""Held-out evaluation of a model on prepared data: MLM loss, perplexity and accuracy, NSP accuracy.

The masks are those of the training stream for a fixed seed (epoch 0), so they depend only on the seed and
the examples: two models evaluated with the same seed see exactly the same masked tokens. The numbers are the
ones the training loop reports as eval_* (same masking, same sums), computed here in one process.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from common import storage
from common.errors import UserError
from common.local_ray import init_ray
from data import MaskingConfig, build_train_dataset, load_manifest, make_collate_fn, tokenizer_hash
from data.manifest import TOKENIZER_DIR, Manifest
from orchestrator.inference.loading import LoadedModel

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "mlm_labels", "next_sentence_label")


@dataclass
class EvalResult:
    examples: int
    mlm_tokens: int
    """Masked (predicted) tokens over the split."""
    mlm_loss: float
    """Sum of the token cross-entropies / mlm_tokens."""
    perplexity: float
    mlm_accuracy: float
    nsp_accuracy: float | None
    """None when the model has no NSP head or the data has no sentence pairs (objective mlm)."""

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if v is not None}


def evaluate(
    loaded: LoadedModel,
    prepared_dir: str,
    split: str = "eval",
    seed: int = 0,
    batch_size: int = 32,
    masking: MaskingConfig | None = None,
) -> EvalResult:
    """Evaluate `loaded` over one split of `prepared_dir` with the masks of `seed` (Ray Data reads it)."""
    masking = masking or MaskingConfig()
    manifest = load_manifest(prepared_dir)
    _check_compatible(loaded, prepared_dir, manifest)
    init_ray(include_dashboard=False)
    dataset = build_train_dataset(prepared_dir, masking, seed=seed, epoch=0, split=split)
    collate_fn = make_collate_fn(masking, manifest.settings.max_seq_length, manifest.special_token_ids["pad"])
    with_nsp = loaded.has_nsp_head and manifest.settings.objective == "mlm+nsp"
    sums = torch.zeros(5, dtype=torch.float64)  # mlm loss sum, mlm correct, mlm count, nsp correct, examples
    with torch.no_grad():
        for batch in dataset.iter_torch_batches(batch_size=batch_size, collate_fn=collate_fn):
            inputs = {name: batch[name].to(loaded.device) for name in MODEL_INPUTS}
            out = loaded.model(**inputs, mlm_normalizer=1.0, nsp_normalizer=1.0)  # losses as sums
            nsp_correct = out.nsp_correct if with_nsp else 0
            values = (out.mlm_loss, out.mlm_correct, out.mlm_count, nsp_correct, len(batch["input_ids"]))
            sums += torch.tensor([float(v) for v in values], dtype=torch.float64)
    loss_sum, mlm_correct, mlm_count, nsp_correct, examples = sums.tolist()
    if examples == 0:
        raise UserError(f"the {split!r} split of {prepared_dir} holds no examples")
    mlm_loss = loss_sum / max(mlm_count, 1)
    return EvalResult(
        examples=int(examples),
        mlm_tokens=int(mlm_count),
        mlm_loss=mlm_loss,
        perplexity=math.exp(min(mlm_loss, 50.0)),  # capped: an untrained model would overflow
        mlm_accuracy=mlm_correct / max(mlm_count, 1),
        nsp_accuracy=nsp_correct / examples if with_nsp else None,
    )


def _check_compatible(loaded: LoadedModel, prepared_dir: str, manifest: Manifest) -> None:
    """The model must have an MLM head, positions for the examples' length, and use the tokenizer the data
    was prepared with."""
    positions = loaded.model.config.max_position_embeddings
    if manifest.settings.max_seq_length > positions:
        raise UserError(
            f"{prepared_dir} holds examples of up to {manifest.settings.max_seq_length} tokens, but the "
            f"model has {positions} positions: evaluate on data prepared with --max-seq-length {positions} "
            "or less"
        )
    if not loaded.has_mlm_head:
        raise UserError(f"{loaded.source} has no MLM head: a bare encoder cannot be evaluated on MLM")
    model_tokenizer_hash = tokenizer_hash(loaded.tokenizer_dir)
    if model_tokenizer_hash != manifest.tokenizer_hash:
        raise UserError(
            f"the model's tokenizer ({loaded.tokenizer_dir}) is not the one {prepared_dir} was prepared with "
            f"({storage.join(prepared_dir, TOKENIZER_DIR)}): prepare the held-out data with the model's "
            "tokenizer, or pass --tokenizer if the model folder holds the wrong one"
        )


def log_to_mlflow(result: EvalResult, run_id: str, tracking_uri: str, split: str) -> None:
    """Log the numbers to an existing MLflow run as heldout_<split>_<name> (e.g. heldout_eval_mlm_loss)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
        for name, value in result.metrics().items():
            client.log_metric(run_id, f"heldout_{split}_{name}", value)
    except MlflowException as error:
        raise UserError(f"cannot log to MLflow run {run_id} at {tracking_uri}: {error.message}") from error
