"""BERT for pretraining in one readable file: embeddings, encoder, pooler, MLM and NSP heads, and the loss.

Numerically the same network as `transformers.BertForPreTraining` (post-LayerNorm, exact GELU, tied decoder),
built for training speed:
- the MLM head (transform + tied vocabulary projection) runs only on the positions that carry a label;
- query, key and value come from one fused projection; attention is `F.scaled_dot_product_attention`;
- the word embeddings are padded to a multiple of `pad_vocab_multiple` rows (the padded logits are cut off).

Losses are sums divided by a normaliser the caller may pass (the count over the whole global batch), so that
micro-batch losses add up to exactly the loss of one big batch. Counts come back as tensors: nothing in
`forward` calls `.item()`.
HF checkpoint import/export lives beside this file, in `model/hf.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import BertConfig

IGNORE_INDEX = -100


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        hidden = config.hidden_size
        self.word = nn.Embedding(config.padded_vocab_size, hidden, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, hidden)
        self.token_type = nn.Embedding(config.type_vocab_size, hidden)
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        if seq_len > self.position.num_embeddings:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings {self.position.num_embeddings}"
            )
        if token_type_ids is None:
            token_types = self.token_type.weight[0]  # (H,) everything is segment A
        else:
            token_types = self.token_type(token_type_ids.long())  # (B, S, H)
        # Same summation order as HF: word + token type + position.
        x = self.word(input_ids) + token_types + self.position.weight[:seq_len]  # (B, S, H)
        return self.dropout(self.norm(x))


class EncoderLayer(nn.Module):
    """Post-LayerNorm transformer layer: attention -> add & norm -> GELU MLP -> add & norm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.attention_dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.attention_out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.mlp_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        batch, seq_len, hidden = x.shape
        qkv = self.qkv(x).view(batch, seq_len, 3, self.num_heads, hidden // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, S, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attention_mask, dropout_p=self.attention_dropout if self.training else 0.0
        )  # (B, nh, S, hs)
        y = y.transpose(1, 2).reshape(batch, seq_len, hidden)  # (B, S, H)
        x = self.attention_norm(x + self.dropout(self.attention_out(y)))
        return self.mlp_norm(x + self.dropout(self.mlp_out(F.gelu(self.mlp_in(x)))))


class BertModel(nn.Module):
    """The encoder: embeddings, transformer layers and the [CLS] pooler."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.activation_checkpointing = config.activation_checkpointing
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (sequence_output (B, S, H), pooled_output (B, H))."""
        sequence_output = self.encode(input_ids, token_type_ids, attention_mask)
        return sequence_output, self.pool(sequence_output)

    def encode(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)  # (B, S, H)
        mask = _sdpa_mask(attention_mask)
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(layer, x, mask, use_reentrant=False)
            else:
                x = layer(x, mask)
        return x

    def pool(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pooler(sequence_output[:, 0]))  # (B, H) from [CLS]


def _sdpa_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A boolean key mask (B, 1, 1, S) for SDPA, True = attend; None when nothing is padded.

    None lets SDPA pick the flash kernel, which takes no mask; the memory-efficient kernel takes this one.
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


@dataclass
class PretrainingOutput:
    loss: torch.Tensor
    """MLM loss + NSP loss: the scalar to backward."""
    mlm_loss: torch.Tensor
    nsp_loss: torch.Tensor
    """Zero when NSP is off or no label was given."""
    mlm_logits: torch.Tensor | None
    """(N_labelled, vocab_size) at the labelled positions, in row-major (batch, position) order."""
    nsp_logits: torch.Tensor | None
    """(B, 2), None when NSP is off."""
    mlm_correct: torch.Tensor
    mlm_count: torch.Tensor
    nsp_correct: torch.Tensor
    nsp_count: torch.Tensor

    @property
    def mlm_accuracy(self) -> torch.Tensor:
        return self.mlm_correct / self.mlm_count.clamp(min=1)

    @property
    def nsp_accuracy(self) -> torch.Tensor:
        return self.nsp_correct / self.nsp_count.clamp(min=1)


class BertForPreTraining(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm_transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.mlm_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # The decoder weight is tied to bert.embeddings.word; only its bias is separate.
        self.mlm_bias = nn.Parameter(torch.zeros(config.padded_vocab_size))
        self.nsp_head = nn.Linear(config.hidden_size, 2)
        self.reset_parameters()
        if not config.use_nsp:
            # Kept so that exports are complete HF checkpoints, but with NSP off nothing trains them; frozen,
            # DDP and the optimizer skip them instead of finding parameters without gradients.
            self.bert.pooler.requires_grad_(False)
            self.nsp_head.requires_grad_(False)

    def reset_parameters(self) -> None:
        """BERT's initialisation: normal(0, initializer_range) weights, zero biases, LayerNorm 1 and 0."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            word = self.bert.embeddings.word.weight
            word[self.config.pad_token_id].zero_()
            word[self.config.vocab_size :].zero_()  # padding rows: never looked up, never predicted
        nn.init.zeros_(self.mlm_bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        mlm_normalizer: float | torch.Tensor | None = None,
        nsp_normalizer: float | torch.Tensor | None = None,
    ) -> PretrainingOutput:
        """MLM + NSP losses and counts. `mlm_labels` (B, S) holds IGNORE_INDEX where nothing is predicted.

        mlm_loss = sum of token cross-entropies / mlm_normalizer (default: this batch's labelled-token count);
        nsp_loss = sum of example cross-entropies / nsp_normalizer (default: this batch's size).
        Without mlm_labels the MLM head does not run (mlm_logits None, mlm_loss 0).
        """
        sequence_output = self.bert.encode(input_ids, token_type_ids, attention_mask)  # (B, S, H)
        zero_loss = torch.zeros((), device=input_ids.device)
        zero_count = torch.zeros((), dtype=torch.long, device=input_ids.device)

        mlm_logits, mlm_loss, mlm_correct, mlm_count = None, zero_loss, zero_count, zero_count
        if mlm_labels is not None:
            flat_labels = mlm_labels.reshape(-1).long()  # (B*S,)
            is_labelled = flat_labels != IGNORE_INDEX
            positions = is_labelled.nonzero().squeeze(1)  # (N,)
            labels = flat_labels[positions]  # (N,)
            flat_output = sequence_output.reshape(-1, sequence_output.shape[-1])  # (B*S, H)
            hidden = flat_output.index_select(0, positions)  # (N, H)
            hidden = self.mlm_norm(F.gelu(self.mlm_transform(hidden)))
            padded_logits = F.linear(hidden, self.bert.embeddings.word.weight, self.mlm_bias)  # (N, V_padded)
            mlm_logits = padded_logits[:, : self.config.vocab_size]  # (N, V)
            mlm_count = is_labelled.sum()
            normalizer = mlm_count.clamp(min=1) if mlm_normalizer is None else mlm_normalizer
            mlm_loss = F.cross_entropy(mlm_logits, labels, reduction="sum") / normalizer
            mlm_correct = (mlm_logits.argmax(dim=-1) == labels).sum()

        nsp_logits, nsp_loss, nsp_correct, nsp_count = None, zero_loss, zero_count, zero_count
        if self.config.use_nsp:
            nsp_logits = self.nsp_head(self.bert.pool(sequence_output))  # (B, 2)
            if next_sentence_label is not None:
                nsp_labels = next_sentence_label.reshape(-1).long()  # (B,)
                normalizer = nsp_labels.shape[0] if nsp_normalizer is None else nsp_normalizer
                nsp_loss = F.cross_entropy(nsp_logits, nsp_labels, reduction="sum") / normalizer
                nsp_correct = (nsp_logits.argmax(dim=-1) == nsp_labels).sum()
                nsp_count = nsp_labels.new_full((), nsp_labels.shape[0])

        return PretrainingOutput(
            loss=mlm_loss + nsp_loss,
            mlm_loss=mlm_loss,
            nsp_loss=nsp_loss,
            mlm_logits=mlm_logits,
            nsp_logits=nsp_logits,
            mlm_correct=mlm_correct,
            mlm_count=mlm_count,
            nsp_correct=nsp_correct,
            nsp_count=nsp_count,
        )

    @classmethod
    def from_hf(cls, path: str | Path, **config_overrides) -> BertForPreTraining:
        """Load an HF BERT checkpoint directory (BertModel, BertForMaskedLM or BertForPreTraining).

        `config_overrides` set fields that HF's config.json lacks (e.g. use_nsp, activation_checkpointing).
        """
        from model.hf import load_hf

        return load_hf(cls, path, **config_overrides)

    def save_hf(self, path: str | Path) -> None:
        """Write config.json and model.safetensors that `transformers.BertForPreTraining` loads."""
        from model.hf import save_hf

        save_hf(self, path)


def compile_model(model: BertForPreTraining) -> BertForPreTraining:
    """Compile each encoder layer with torch.compile, in place (parameter names stay the same).

    The layers have static shapes; the MLM head works on a data-dependent number of labelled positions, so it
    stays eager rather than recompiling for every count.
    """
    for layer in model.bert.layers:
        layer.compile()
    return model
