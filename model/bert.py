"""BERT for pretraining in one readable file: embeddings, encoder, pooler, MLM and NSP heads, and the loss.

Numerically the same network as `transformers.BertForPreTraining` (post-LayerNorm, exact GELU, tied decoder),
built for training speed:
- a batch with padding is unpadded before the embeddings: every layer works on a (tokens, hidden) tensor of
  the real tokens, and attention runs per sequence on them (`TokenLayout`); a batch without padding keeps
  the dense (batch, seq, hidden) path;
- the MLM head (transform + tied vocabulary projection) runs only on the positions that carry a label;
- query, key and value come from one fused projection; attention is `F.scaled_dot_product_attention`;
- the word embeddings are padded to a multiple of `pad_vocab_multiple` rows (the padded logits are cut off).

Losses are sums divided by a normaliser the caller may pass (the count over the whole global batch), so that
micro-batch losses add up to exactly the loss of one big batch. Counts come back as tensors: nothing in
`forward` calls `.item()`.
HF checkpoint import/export lives beside this file, in `model/hf.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from common.batch import IGNORE_INDEX
from model.compiling import keep_registered_out_of_graphs, mark_dynamic_tokens, outside_compiled_graphs
from model.config import BertConfig


@dataclass(frozen=True)
class TokenLayout:
    """Where the real tokens of a padded (B, S) batch are, once the batch is flattened to them (T tokens).

    Sequence b holds the tokens offsets[b]:offsets[b+1], in position order; any mask pattern works, padding
    on the right is the usual one.
    """

    indices: torch.Tensor
    """(T,) the flat positions b * S + s of the real tokens, row by row."""
    positions: torch.Tensor
    """(T,) each real token's position s in its row."""
    offsets: torch.Tensor
    """(B + 1,) int64: where each sequence starts in the unpadded tensor, and the total T at the end."""
    lengths: tuple[int, ...]
    """The real length of each sequence, on the host."""
    shape: tuple[int, int]
    """(B, S) of the padded batch."""

    @classmethod
    def of(cls, attention_mask: torch.Tensor | None) -> TokenLayout | None:
        """The layout of a (B, S) mask (1 = real token); None when nothing is padded.

        Reads the lengths on the host (one synchronisation); the positions are found without another.
        """
        if attention_mask is None:
            return None
        batch, seq_len = attention_mask.shape
        real = attention_mask.bool()
        row_lengths = real.sum(dim=1)  # (B,)
        lengths = tuple(row_lengths.tolist())
        if min(lengths) == seq_len:
            return None
        if min(lengths) == 0:
            raise ValueError(
                f"row {lengths.index(0)} of the batch has no real token (its attention_mask is all 0): "
                "every sequence needs at least its [CLS] token"
            )
        indices = torch.nonzero_static(real.reshape(-1), size=sum(lengths)).squeeze(1)  # (T,), no sync
        offsets = F.pad(row_lengths.cumsum(0), (1, 0))  # (B + 1,)
        return cls(indices, indices % seq_len, offsets, lengths, (batch, seq_len))

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, S, ...) -> (T, ...): the values at the real tokens."""
        return padded.reshape(-1, *padded.shape[2:]).index_select(0, self.indices)

    def pad(self, unpadded: torch.Tensor) -> torch.Tensor:
        """(T, ...) -> (B, S, ...), zeros at the padding positions."""
        rest = unpadded.shape[1:]
        padded = unpadded.new_zeros(self.shape[0] * self.shape[1], *rest)
        return padded.index_copy(0, self.indices, unpadded).view(*self.shape, *rest)

    def first_tokens(self, unpadded: torch.Tensor) -> torch.Tensor:
        """(T, H) -> (B, H): each sequence's first real token ([CLS])."""
        return unpadded.index_select(0, self.offsets[:-1])


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        hidden = config.hidden_size
        self.word = nn.Embedding(config.padded_vocab_size, hidden, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, hidden)
        self.token_type = nn.Embedding(config.type_vocab_size, hidden)
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, layout: TokenLayout | None
    ) -> torch.Tensor:
        """(B, S, H), or (T, H) of the real tokens when a layout is given."""
        seq_len = input_ids.shape[1]
        if seq_len > self.position.num_embeddings:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings {self.position.num_embeddings}"
            )
        if layout is None:
            positions = self.position.weight[:seq_len]  # (S, H)
        else:
            input_ids, positions = layout.unpad(input_ids), self.position(layout.positions)  # (T,), (T, H)
            token_type_ids = None if token_type_ids is None else layout.unpad(token_type_ids)
        if token_type_ids is None:
            token_types = self.token_type.weight[0]  # (H,) everything is segment A
        else:
            token_types = self.token_type(token_type_ids.long())  # (B, S, H) or (T, H)
        # Same summation order as HF: word + token type + position.
        x = self.word(input_ids) + token_types + positions
        return self.dropout(self.norm(x))


class EncoderLayer(nn.Module):
    """Post-LayerNorm transformer layer: attention -> add & norm -> GELU MLP -> add & norm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.attention_dropout = config.attention_probs_dropout_prob
        self.unpadded_attention = config.unpadded_attention
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.attention_out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.mlp_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None, layout: TokenLayout | None
    ) -> torch.Tensor:
        """x is (B, S, H) with an SDPA mask (or None), or (T, H) of the real tokens with their layout."""
        dropout_p = self.attention_dropout if self.training else 0.0
        qkv = self.qkv(x)  # (B, S, 3H) or (T, 3H)
        if layout is None:
            y = _dense_attention(qkv, attention_mask, self.num_heads, dropout_p)
        else:
            y = unpadded_attention(qkv, layout, self.num_heads, dropout_p, self.unpadded_attention)
        x = self.attention_norm(x + self.dropout(self.attention_out(y)))
        return self.mlp_norm(x + self.dropout(self.mlp_out(F.gelu(self.mlp_in(x)))))


def _dense_attention(
    qkv: torch.Tensor, attention_mask: torch.Tensor | None, num_heads: int, dropout_p: float
) -> torch.Tensor:
    batch, seq_len, three_hidden = qkv.shape
    hidden = three_hidden // 3
    q, k, v = qkv.view(batch, seq_len, 3, num_heads, hidden // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout_p)
    return y.transpose(1, 2).reshape(batch, seq_len, hidden)  # (B, nh, S, hs) -> (B, S, H)


@outside_compiled_graphs  # its shapes change with every batch's lengths; the compiled layer breaks around it
def unpadded_attention(
    qkv: torch.Tensor, layout: TokenLayout, num_heads: int, dropout_p: float, cuda_kernel: str
) -> torch.Tensor:
    """Self-attention within each sequence of the unpadded (T, 3H) projections; (T, H). No work on padding.

    On CUDA one variable-length kernel call (`cuda_kernel`, see BertConfig.unpadded_attention); elsewhere one
    SDPA call per sequence, which on CPU is faster than one call on the padded batch or on nested tensors.
    """
    tokens, three_hidden = qkv.shape
    hidden = three_hidden // 3
    q, k, v = qkv.view(tokens, 3, num_heads, hidden // num_heads).unbind(1)  # each (T, nh, hs)
    if not qkv.is_cuda:
        y = _attention_per_sequence(q, k, v, layout.lengths, dropout_p)
    elif cuda_kernel == "varlen":
        from torch.nn.attention.varlen import varlen_attn

        offsets, longest = layout.offsets.to(torch.int32), max(layout.lengths)
        y = varlen_attn(q, k, v, offsets, offsets, longest, longest)  # no dropout: this kernel has none
    else:
        y = nested_attention(q, k, v, layout, dropout_p)
    y = y.reshape(tokens, hidden)
    mark_dynamic_tokens(y)  # the compiled rest of the layer: one graph for any token count
    return y


def _attention_per_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: tuple[int, ...], dropout_p: float
) -> torch.Tensor:
    outputs = []
    for q_b, k_b, v_b in zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True):
        q_b, k_b, v_b = (t.transpose(0, 1).unsqueeze(0) for t in (q_b, k_b, v_b))  # each (1, nh, L, hs)
        y = F.scaled_dot_product_attention(q_b, k_b, v_b, dropout_p=dropout_p)  # (1, nh, L, hs)
        outputs.append(y[0].transpose(0, 1))  # (L, nh, hs)
    return torch.cat(outputs)  # (T, nh, hs)


def nested_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout, dropout_p: float
) -> torch.Tensor:
    """(T, nh, hs) each -> (T, nh, hs): SDPA over nested jagged tensors (flash or memory-efficient on CUDA).

    The lengths are passed in, so that the kernel's metadata costs no synchronisation.
    """

    def nested(values: torch.Tensor) -> torch.Tensor:
        jagged = torch.nested.nested_tensor_from_jagged(
            values, layout.offsets, min_seqlen=min(layout.lengths), max_seqlen=max(layout.lengths)
        )  # (B, j, nh, hs)
        return jagged.transpose(1, 2)  # (B, nh, j, hs)

    y = F.scaled_dot_product_attention(nested(q), nested(k), nested(v), dropout_p=dropout_p)
    return y.transpose(1, 2).values()  # (T, nh, hs)


class BertModel(nn.Module):
    """The encoder: embeddings, transformer layers and the [CLS] pooler."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.activation_checkpointing = config.activation_checkpointing
        self.unpad = config.unpad
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (sequence_output (B, S, H), pooled_output (B, H)); unpadded, zeros at the padding."""
        x, layout = self.encode(input_ids, token_type_ids, attention_mask)
        pooled_output = self.pool(x, layout)
        return (x if layout is None else layout.pad(x)), pooled_output

    def encode(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, TokenLayout | None]:
        """The last hidden states: (T, H) of the real tokens with their layout when the batch has padding
        (and `unpad` is on), else (B, S, H) and None."""
        layout = TokenLayout.of(attention_mask) if self.unpad else None
        mask = None if self.unpad else _sdpa_mask(attention_mask)  # unpadded, a batch without layout is full
        x = self.embeddings(input_ids, token_type_ids, layout)
        if layout is not None:
            mark_dynamic_tokens(x)  # compiled layers: one graph for any token count
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(layer, x, mask, layout, use_reentrant=False)
            else:
                x = layer(x, mask, layout)
        return x, layout

    def pool(self, hidden_states: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
        """(B, H) from each sequence's [CLS], given `encode`'s output."""
        cls = hidden_states[:, 0] if layout is None else layout.first_tokens(hidden_states)
        return torch.tanh(self.pooler(cls))


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
        """MLM + NSP losses and counts. `mlm_labels` (B, S) holds IGNORE_INDEX where nothing is predicted
        (padding positions are never predicted).

        mlm_loss = sum of token cross-entropies / mlm_normalizer (default: this batch's labelled-token count);
        nsp_loss = sum of example cross-entropies / nsp_normalizer (default: this batch's size).
        Without mlm_labels the MLM head does not run (mlm_logits None, mlm_loss 0).
        """
        hidden_states, layout = self.bert.encode(input_ids, token_type_ids, attention_mask)
        zero_loss = torch.zeros((), device=input_ids.device)
        zero_count = torch.zeros((), dtype=torch.long, device=input_ids.device)

        mlm_logits, mlm_loss, mlm_correct, mlm_count = None, zero_loss, zero_count, zero_count
        if mlm_labels is not None:
            mlm_logits, mlm_loss, mlm_correct, mlm_count = masked_lm(
                hidden_states, layout, mlm_labels, self.mlm_logits, mlm_normalizer
            )

        nsp_logits, nsp_loss, nsp_correct, nsp_count = None, zero_loss, zero_count, zero_count
        if self.config.use_nsp:
            nsp_logits = self.nsp_head(self.bert.pool(hidden_states, layout))  # (B, 2)
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

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The MLM head: (N, H) states of predicted positions -> (N, V) logits (vocabulary padding cut)."""
        hidden = self.mlm_norm(F.gelu(self.mlm_transform(hidden)))
        padded_logits = F.linear(hidden, self.bert.embeddings.word.weight, self.mlm_bias)  # (N, V_padded)
        return padded_logits[:, : self.config.vocab_size]

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


def masked_lm(
    hidden_states: torch.Tensor,
    layout: TokenLayout | None,
    mlm_labels: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    normalizer: float | torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MLM head run on the labelled positions only: (logits (N, V), loss, correct, count).

    loss = sum of token cross-entropies / `normalizer` (default: the labelled count), the normalizer at least
    1, so that a (global) batch without labelled tokens has loss 0 instead of 0/0."""
    # Row-major order either way: (B*S,) labels for (B*S, H) states, or (T,) for (T, H) unpadded.
    flat_labels = (mlm_labels.reshape(-1) if layout is None else layout.unpad(mlm_labels)).long()
    is_labelled = flat_labels != IGNORE_INDEX
    positions = is_labelled.nonzero().squeeze(1)  # (N,)
    labels = flat_labels[positions]  # (N,)
    flat_states = hidden_states.reshape(-1, hidden_states.shape[-1])
    logits = head(flat_states.index_select(0, positions))  # (N, V)
    count = is_labelled.sum()
    normalizer = count if normalizer is None else torch.as_tensor(normalizer)
    loss = F.cross_entropy(logits, labels, reduction="sum") / normalizer.clamp(min=1)
    return logits, loss, (logits.argmax(dim=-1) == labels).sum(), count


def attention_path(config: BertConfig, device: torch.device) -> str:
    """Which attention a batch with padding gets on `device`, in words (a run says it once)."""
    dropout = config.attention_probs_dropout_prob
    if not config.unpad:
        return "batches with padding run padded (unpad off): SDPA with a mask over every position"
    if device.type != "cuda":
        kernel = f"one SDPA call per sequence, attention dropout {dropout:g}"
    elif config.unpadded_attention == "varlen":
        kernel = "varlen_attn (flash), without attention dropout" + (
            f" (the configured {dropout:g} is not applied)" if dropout else ""
        )
    else:
        kernel = f"nested tensors through SDPA, attention dropout {dropout:g}"
    return f"batches with padding run on their real tokens only: {kernel}; full batches dense SDPA"


def compile_model(model: BertForPreTraining, backend: str | Callable = "inductor") -> BertForPreTraining:
    """Compile each encoder layer with torch.compile, in place (parameter names stay the same).

    The unpadded token count changes with every batch: after the first change, the layers are compiled for a
    dynamic count, and the per-sequence attention (`unpadded_attention`) stays outside the compiled graphs.
    The MLM head works on a data-dependent number of labelled positions, so it stays eager. `backend` is
    torch.compile's (tests count compilations with one of their own).
    """
    keep_registered_out_of_graphs()  # here, not at import: plain runs need not import torch._dynamo
    for layer in model.bert.layers:
        layer.compile(backend=backend)
    return model
