"""Using a loaded encoder: fill in [MASK]s, score sentence pairs, read contextual token representations."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.batch import IGNORE_INDEX
from common.errors import UserError
from data.tokenizer import MASK
from model.hf import NSP_HEAD_TENSOR
from orchestrator.inference.loading import LoadedModel


@dataclass(frozen=True)
class Prediction:
    token: str
    token_id: int
    probability: float


def encode(loaded: LoadedModel, text: str, pair: str | None = None) -> dict[str, torch.Tensor]:
    """input_ids, token_type_ids and attention_mask (1, S) of `[CLS] text [SEP] (pair [SEP])`."""
    encoding = loaded.tokenizer.encode(text, pair)
    limit = loaded.model.config.max_position_embeddings
    if len(encoding.ids) > limit:
        raise UserError(f"the input is {len(encoding.ids)} tokens long; this model reads at most {limit}")
    return {
        "input_ids": torch.tensor([encoding.ids], device=loaded.device),
        "token_type_ids": torch.tensor([encoding.type_ids], device=loaded.device),
        "attention_mask": torch.tensor([encoding.attention_mask], device=loaded.device),
    }


@torch.no_grad()
def fill_mask(loaded: LoadedModel, text: str, top_k: int = 5) -> list[list[Prediction]]:
    """For each [MASK] in `text`, in order: the `top_k` most probable tokens (softmax over the vocabulary)."""
    if top_k < 1:
        raise UserError(f"--top-k is {top_k}; use 1 or more")
    if not loaded.has_mlm_head:
        raise UserError(
            f"{loaded.source} has no MLM head: it is a bare encoder, fill-mask needs a BertForMaskedLM, "
            "BertForPreTraining or ModernBertForMaskedLM checkpoint"
        )
    mask_id = loaded.tokenizer.token_to_id(MASK)
    if mask_id is None:
        raise UserError(f"the tokenizer at {loaded.tokenizer_dir} has no {MASK} token")
    batch = encode(loaded, text)
    is_mask = batch["input_ids"] == mask_id  # (1, S)
    if not is_mask.any():
        raise UserError(f"no {MASK} in {text!r}: write {MASK} where a word is to be predicted")
    # The model runs its MLM head on the labelled positions only; the label values themselves do not matter.
    labels = torch.where(is_mask, batch["input_ids"], IGNORE_INDEX)
    logits = loaded.model(**batch, mlm_labels=labels).mlm_logits  # (N_masks, V)
    probabilities = logits.float().softmax(dim=-1)
    top = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
    return [
        [
            Prediction(loaded.tokenizer.id_to_token(token_id), token_id, probability)
            for token_id, probability in zip(ids, values, strict=True)
        ]
        for ids, values in zip(top.indices.tolist(), top.values.tolist(), strict=True)
    ]


@torch.no_grad()
def next_sentence_probability(loaded: LoadedModel, first: str, second: str) -> float:
    """P(second follows first) from the NSP head (its index 0 = IsNext, as in HF BertForPreTraining)."""
    if not first.strip() or not second.strip():
        raise UserError("nsp needs two sentences: FIRST and SECOND must not be empty")
    if not loaded.has_nsp_head:
        raise UserError(
            f"{loaded.source} has no trained next-sentence head: it was trained without NSP (model.use_nsp "
            f"false) or its checkpoint lacks {NSP_HEAD_TENSOR}; nsp needs a model pretrained with MLM + NSP"
        )
    logits = loaded.model(**encode(loaded, first, second)).nsp_logits  # (1, 2)
    return logits.float().softmax(dim=-1)[0, 0].item()


@torch.no_grad()
def token_representations(loaded: LoadedModel, text: str) -> tuple[list[str], torch.Tensor]:
    """The tokens of `[CLS] text [SEP]` and their last-layer representations (S, hidden_size)."""
    batch = encode(loaded, text)
    sequence_output, _ = loaded.model.bert(**batch)  # (1, S, H)
    tokens = [loaded.tokenizer.id_to_token(i) for i in batch["input_ids"][0].tolist()]
    return tokens, sequence_output[0].float().cpu()
