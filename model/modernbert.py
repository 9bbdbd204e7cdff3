"""ModernBERT for masked-language-model pretraining in one readable file: the config and its presets,
embeddings, the encoder of alternating global and sliding-window attention layers, the MLM head and the loss.

Numerically the same network as `transformers.ModernBertForMaskedLM`: pre-LayerNorm layers (the first without
an attention norm), LayerNorms and linear layers without biases unless the config asks for them, rotary
position embeddings with one theta for global and another for local layers, a GeGLU MLP, a global-attention
layer every `global_attn_every_n_layers` layers (layer i with i % n == 0) and a sliding window of
`local_attention // 2` tokens either side in the others, a final norm, and the MLM head (dense, activation,
norm) with a decoder tied to the word embeddings plus a bias. Built for training the way our BERT is:
- a batch with padding is unpadded before the embeddings (`TokenLayout`, shared with BERT): every layer works
  on a (tokens, hidden) tensor of the real tokens and attention runs per sequence, its window included;
- the MLM head runs only on the positions that carry a label;
- the word embeddings are padded to a multiple of `pad_vocab_multiple` rows (the padded logits are cut off).

MLM only: there is no NSP head. `forward(**batch)` takes BERT's collated batch (token_type_ids and
next_sentence_label are ignored) and returns BERT's `PretrainingOutput` with the NSP fields zero, and the
encoder is `.bert` with BERT's call contract, so code written for `BertForPreTraining` runs this one too.
HF checkpoint import/export lives beside this file, in `model/modernbert_hf.py`.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.bert import PretrainingOutput, TokenLayout, masked_lm, nested_attention
from model.compiling import mark_dynamic_tokens, outside_compiled_graphs

# torch >= 2.10; without it CUDA batches with padding take the "sdpa" path. Found here, imported where used:
# importing it imports torch._dynamo (about a second), which a CPU run never needs.
HAS_VARLEN = importlib.util.find_spec("torch.nn.attention.varlen") is not None

# Named sizes (layers, hidden, heads, intermediate) of the family. base and large are the published
# ModernBERT-base and ModernBERT-large; tiny and mini are for tests and smoke runs.
PRESETS: dict[str, dict[str, int]] = {
    name: {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
    }
    for name, (layers, hidden, heads, intermediate) in {
        "tiny": (4, 128, 2, 192),
        "mini": (6, 256, 4, 384),
        "base": (22, 768, 12, 1152),
        "large": (28, 1024, 16, 2624),
    }.items()
}

# The activations of HF's ACT2FN that this implementation has, by the same names and with the same numerics.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
}
CLASSIFIER_POOLING = ("cls", "mean")
# The CUDA kernels for the attention of unpadded batches (ModernBertConfig.unpadded_attention).
UNPADDED_ATTENTION = ("varlen", "sdpa")


@dataclass
class ModernBertConfig:
    vocab_size: int = 50368
    """The tokenizer's true vocabulary size; exports always carry this one."""
    hidden_size: int = 768
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    intermediate_size: int = 1152
    """Width of the GeGLU MLP: its input projection makes twice this (the input and the gate)."""
    max_position_embeddings: int = 8192
    """The longest sequence the model is meant for (rotary positions need no table)."""
    hidden_activation: str = "gelu"
    global_attn_every_n_layers: int = 3
    """Layer i attends over the whole sequence when i % n == 0, the others within a sliding window."""
    local_attention: int = 128
    """The sliding window: a token sees the tokens at most local_attention // 2 positions away either side."""
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    classifier_bias: bool = False
    """Bias of the MLM head's dense layer."""
    decoder_bias: bool = True
    """Bias of the vocabulary projection (its weight is the word embeddings)."""
    classifier_activation: str = "gelu"
    classifier_pooling: str = "cls"
    """The pooled output of the encoder: the first token's hidden state ("cls") or the mean of the real
    tokens' ("mean")."""
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    """Dropout on the attention probabilities and on the attention output projection (as in HF)."""
    mlp_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    """Initial weights are normal, truncated at this many standard deviations."""
    pad_token_id: int = 50283
    cls_token_id: int | None = None
    """Special token ids a checkpoint names (config.json); the network does not use them."""
    sep_token_id: int | None = None
    pad_vocab_multiple: int = 64
    """Embedding rows are padded up to a multiple of this inside the model, for faster matmuls; 1 = off."""
    activation_checkpointing: bool = False
    """Recompute each encoder layer in the backward pass instead of keeping its activations."""
    unpad: bool = True
    """A batch with padding runs on its real tokens only (False: the padding positions are computed too)."""
    unpadded_attention: str = "varlen"
    """The CUDA attention kernel of unpadded batches: "varlen" (torch.nn.attention.varlen.varlen_attn, flash
    with a window for the local layers, without attention dropout) or "sdpa" (nested tensors through
    scaled_dot_product_attention for global layers, one call per sequence for local ones). On CPU each
    sequence runs its own SDPA call, with its window as a mask."""

    use_nsp: ClassVar[bool] = False
    """MLM only: no NSP head (the field the trainer reads on BertConfig)."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}: choose a head count that divides the hidden size"
            )
        if (self.hidden_size // self.num_attention_heads) % 2 != 0:
            raise ValueError(f"the head size {self.head_size} must be even (rotary embeddings rotate pairs)")
        for field, choices in (
            ("hidden_activation", ACTIVATIONS),
            ("classifier_activation", ACTIVATIONS),
            ("classifier_pooling", CLASSIFIER_POOLING),
            ("unpadded_attention", UNPADDED_ATTENTION),
        ):
            if getattr(self, field) not in choices:
                raise ValueError(
                    f"{field} {getattr(self, field)!r} is unknown; choose one of {', '.join(choices)}"
                )
        if self.global_attn_every_n_layers < 1:
            raise ValueError(
                f"global_attn_every_n_layers must be >= 1, got {self.global_attn_every_n_layers}"
            )
        if self.local_attention < 2:
            raise ValueError(
                f"local_attention must be >= 2 (a window of local_attention // 2 either side), got "
                f"{self.local_attention}"
            )
        if self.pad_vocab_multiple < 1:
            raise ValueError(f"pad_vocab_multiple must be >= 1 (1 = off), got {self.pad_vocab_multiple}")

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def attention_windows(self) -> tuple[int | None, ...]:
        """Per layer: None for global attention, else the half-width of its sliding window."""
        return tuple(
            None if i % self.global_attn_every_n_layers == 0 else self.local_attention // 2
            for i in range(self.num_hidden_layers)
        )

    def training_flops(
        self, tokens: float, squared_lengths: float, labelled: float, sequences: float
    ) -> float:
        """Model FLOPs of training (forward and backward) on batches of these totals: real `tokens`, the sum
        of each sequence's squared real length, `labelled` (MLM) positions and `sequences` (unused: no NSP).

        Matmuls only, the backward pass costing twice the forward (so a step is 3x the forward):

            forward = L * T * (8*H^2 + 6*H*I)         QKV, output; GeGLU input (2I wide) and output
                    + 4*H * (G * sum_b len_b^2         attention of the G global layers
                             + (L - G) * min(sum_b len_b^2, T * (local_attention + 1)))   and local ones
                    + N * (2*H^2 + 2*H*V)              MLM transform and decoder

        with L layers, H hidden size, I intermediate size, V the true vocabulary size, T real tokens, N
        labelled positions. A local layer's keys per query are counted as its full window, or the whole
        sequence when that is shorter, from the totals alone: exact when every sequence fits in the window
        or all are much longer, an upper bound in between.
        """
        hidden, inter = self.hidden_size, self.intermediate_size
        windows = self.attention_windows
        global_layers = sum(window is None for window in windows)
        local_keys = min(squared_lengths, tokens * (self.local_attention // 2 * 2 + 1))
        local_layers = len(windows) - global_layers
        attention = 4 * hidden * (global_layers * squared_lengths + local_layers * local_keys)
        encoder = self.num_hidden_layers * tokens * (8 * hidden**2 + 6 * hidden * inter) + attention
        mlm = labelled * (2 * hidden**2 + 2 * hidden * self.vocab_size)
        return 3.0 * (encoder + mlm)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModernBertConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown ModernBERT preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def rotary_cos_sin(
    positions: torch.Tensor, head_size: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., hs) cosines and sines of the rotation angles at these positions, computed in fp32 as HF does."""
    exponents = torch.arange(0, head_size, 2, dtype=torch.float, device=positions.device) / head_size
    inverse_frequencies = 1.0 / (theta**exponents)  # (hs/2,)
    angles = positions[..., None].float() * inverse_frequencies  # (..., hs/2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., hs)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., nh, hs) queries or keys by (..., hs) angles; in fp32, back to x's dtype (as HF)."""
    x_float = x.float()
    first, second = x_float.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (x_float * cos.unsqueeze(-2) + rotated * sin.unsqueeze(-2)).to(x.dtype)


def band_mask(seq_len: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """(S, S) SDPA mask, True where |query - key| <= window; None when every key is in reach (global layers,
    or a sequence no longer than the window), which leaves SDPA free to pick a kernel without a mask."""
    if window is None or seq_len <= window + 1:
        return None
    positions = torch.arange(seq_len, device=device)
    return (positions[:, None] - positions[None, :]).abs() <= window


class Embeddings(nn.Module):
    """Word embeddings, LayerNorm and dropout: positions enter as rotations in attention, not here."""

    def __init__(self, config: ModernBertConfig):
        super().__init__()
        hidden = config.hidden_size
        self.word = nn.Embedding(config.padded_vocab_size, hidden, padding_idx=config.pad_token_id)
        self.norm = nn.LayerNorm(hidden, eps=config.norm_eps, bias=config.norm_bias)
        self.dropout = nn.Dropout(config.embedding_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, S, H), or (T,) -> (T, H) for the real tokens of an unpadded batch."""
        return self.dropout(self.norm(self.word(input_ids)))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm layer: norm -> attention (global or windowed, rotary) -> add; norm -> GeGLU -> add."""

    def __init__(self, config: ModernBertConfig, layer_id: int):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.window = config.attention_windows[layer_id]
        self.attention_dropout = config.attention_dropout
        self.unpadded_attention = config.unpadded_attention
        # The embeddings end in a LayerNorm, so the first layer's would be a second one in a row.
        norm = partial(nn.LayerNorm, hidden, eps=config.norm_eps, bias=config.norm_bias)
        self.attention_norm = nn.Identity() if layer_id == 0 else norm()
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=config.attention_bias)
        self.attention_out = nn.Linear(hidden, hidden, bias=config.attention_bias)
        self.attention_out_dropout = nn.Dropout(config.attention_dropout)
        self.mlp_norm = norm()
        self.mlp_in = nn.Linear(hidden, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.activation = ACTIVATIONS[config.hidden_activation]
        self.mlp_dropout = nn.Dropout(config.mlp_dropout)
        self.mlp_out = nn.Linear(config.intermediate_size, hidden, bias=config.mlp_bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_mask: torch.Tensor | None,
        layout: TokenLayout | None,
    ) -> torch.Tensor:
        """x is (B, S, H) with (S, hs) angles and an SDPA mask (or None), or (T, H) of the real tokens with
        (T, hs) angles and their layout."""
        dropout_p = self.attention_dropout if self.training else 0.0
        qkv = self.qkv(self.attention_norm(x))  # (B, S, 3H) or (T, 3H)
        head_size = qkv.shape[-1] // (3 * self.num_heads)
        # each (B, S, nh, hs), or (T, nh, hs) unpadded
        q, k, v = qkv.unflatten(-1, (3, self.num_heads, head_size)).unbind(-3)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if layout is None:
            y = _dense_attention(q, k, v, attention_mask, dropout_p)
        else:
            y = unpadded_attention(q, k, v, layout, self.window, dropout_p, self.unpadded_attention)
        x = x + self.attention_out_dropout(self.attention_out(y))
        value, gate = self.mlp_in(self.mlp_norm(x)).chunk(2, dim=-1)  # each (..., I)
        return x + self.mlp_out(self.mlp_dropout(self.activation(value) * gate))


def _dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    batch, seq_len, num_heads, head_size = q.shape
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # each (B, nh, S, hs)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout_p)
    return y.transpose(1, 2).reshape(batch, seq_len, num_heads * head_size)  # (B, nh, S, hs) -> (B, S, H)


@outside_compiled_graphs  # its shapes change with every batch's lengths; the compiled layer breaks around it
def unpadded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    window: int | None,
    dropout_p: float,
    cuda_kernel: str,
) -> torch.Tensor:
    """Self-attention within each sequence of the unpadded (T, nh, hs) queries, keys and values, each query
    seeing the keys at most `window` positions away (None: all); (T, H). No work on padding.

    On CUDA with "varlen", one flash call for the whole batch; its window_size (left, right) = (w, w) keeps
    the keys with |query - key| <= w, HF's sliding-window mask. That path needs a CUDA device with flash
    attention and half-precision inputs, so the tests (CPU only) do not run it. With "sdpa", global layers
    take nested tensors through SDPA and local ones one SDPA call per sequence with a band mask, which is
    the path of every layer elsewhere (on CPU faster than one call on the padded batch).
    """
    tokens, num_heads, head_size = q.shape
    if q.is_cuda and cuda_kernel == "varlen" and HAS_VARLEN and q.dtype != torch.float32:
        from torch.nn.attention.varlen import varlen_attn

        offsets, longest = layout.offsets.to(torch.int32), max(layout.lengths)
        window_size = (-1, -1) if window is None else (window, window)
        y = varlen_attn(q, k, v, offsets, offsets, longest, longest, window_size=window_size)  # no dropout
    elif q.is_cuda and window is None:
        y = nested_attention(q, k, v, layout, dropout_p)
    else:
        y = _attention_per_sequence(q, k, v, layout.lengths, window, dropout_p)
    y = y.reshape(tokens, num_heads * head_size)
    mark_dynamic_tokens(y)  # the compiled rest of the layer: one graph for any token count
    return y


def _attention_per_sequence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: tuple[int, ...],
    window: int | None,
    dropout_p: float,
) -> torch.Tensor:
    outputs = []
    for q_b, k_b, v_b in zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True):
        q_b, k_b, v_b = (t.transpose(0, 1).unsqueeze(0) for t in (q_b, k_b, v_b))  # each (1, nh, L, hs)
        mask = band_mask(q_b.shape[2], window, q.device)  # (L, L) or None
        y = F.scaled_dot_product_attention(q_b, k_b, v_b, attn_mask=mask, dropout_p=dropout_p)
        outputs.append(y[0].transpose(0, 1))  # (L, nh, hs)
    return torch.cat(outputs)  # (T, nh, hs)


class ModernBertModel(nn.Module):
    """The encoder: embeddings, the layers and the final norm; `pool` gives one vector per sequence."""

    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (sequence_output (B, S, H), pooled_output (B, H)); unpadded, zeros at the padding.

        `token_type_ids` is accepted for BERT's call contract and ignored: ModernBERT has no segments."""
        x, layout = self.encode(input_ids, attention_mask=attention_mask)
        pooled_output = self.pool(x, layout, attention_mask)
        return (x if layout is None else layout.pad(x)), pooled_output

    def encode(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, TokenLayout | None]:
        """The last hidden states: (T, H) of the real tokens with their layout when the batch has padding
        (and `unpad` is on), else (B, S, H) and None."""
        config = self.config
        layout = TokenLayout.of(attention_mask) if config.unpad else None
        if layout is None:
            seq_len = input_ids.shape[1]
            positions = torch.arange(seq_len, device=input_ids.device)  # (S,)
            x = self.embeddings(input_ids)  # (B, S, H)
            key_mask = None if config.unpad else _key_mask(attention_mask)  # (B, 1, 1, S) or None
            masks = {
                window: _combine(band_mask(seq_len, window, x.device), key_mask)
                for window in set(config.attention_windows)
            }
        else:
            # (T,) each real token's position in its row, as HF counts them. The windows count positions
            # within the real tokens: HF's too while a row's real tokens are contiguous (padding at the ends).
            positions = layout.positions
            x = self.embeddings(layout.unpad(input_ids))  # (T, H)
            mark_dynamic_tokens(x)  # compiled layers: one graph for any token count
            masks = dict.fromkeys(config.attention_windows)
        rotary = {
            theta: rotary_cos_sin(positions, config.head_size, theta, x.dtype)  # each (S, hs) or (T, hs)
            for theta in (config.global_rope_theta, config.local_rope_theta)
        }
        for layer in self.layers:
            theta = config.global_rope_theta if layer.window is None else config.local_rope_theta
            args = (x, *rotary[theta], masks[layer.window], layout)
            if config.activation_checkpointing and self.training:
                x = checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        return self.final_norm(x), layout

    def pool(
        self,
        hidden_states: torch.Tensor,
        layout: TokenLayout | None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, H) from `encode`'s output: the first token's state, or the mean over the real tokens
        (`classifier_pooling`), the input of HF's sequence classification head."""
        if self.config.classifier_pooling == "cls":
            return hidden_states[:, 0] if layout is None else layout.first_tokens(hidden_states)
        if layout is not None:
            batch, seq_len = layout.shape
            sequence_ids = layout.indices // seq_len  # (T,)
            sums = hidden_states.new_zeros(batch, hidden_states.shape[-1])
            sums = sums.index_add(0, sequence_ids, hidden_states)  # (B, H)
            lengths = torch.tensor(layout.lengths, device=sums.device, dtype=sums.dtype)
            return sums / lengths[:, None]
        if attention_mask is None:
            return hidden_states.mean(dim=1)
        weights = attention_mask[..., None].to(hidden_states.dtype)  # (B, S, 1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1)


def _key_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A boolean key mask (B, 1, 1, S) for SDPA, True = attend; None when nothing is padded."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


def _combine(band: torch.Tensor | None, key_mask: torch.Tensor | None) -> torch.Tensor | None:
    if band is None or key_mask is None:
        return band if key_mask is None else key_mask
    return band & key_mask  # (B, 1, S, S)


class ModernBertForPreTraining(nn.Module):
    """The encoder (`.bert`) and the MLM head; `forward(**batch)` gives the loss and the trainer's counts."""

    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.config = config
        # Named `bert` for the encoder contract of DESIGN.md (model.bert(...)), which callers of BERT use.
        self.bert = ModernBertModel(config)
        self.mlm_transform = nn.Linear(config.hidden_size, config.hidden_size, bias=config.classifier_bias)
        self.mlm_activation = ACTIVATIONS[config.classifier_activation]
        self.mlm_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        # The decoder weight is tied to bert.embeddings.word; only its bias is separate.
        self.mlm_bias = nn.Parameter(torch.zeros(config.padded_vocab_size)) if config.decoder_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ModernBERT's initialisation (HF's): normal weights truncated at initializer_cutoff_factor
        standard deviations, initializer_range for embeddings and input projections, initializer_range /
        sqrt(2 L) for the projections back into the residual stream and the MLM transform; zero biases,
        LayerNorm 1 and 0."""
        config = self.config
        std_in = config.initializer_range
        std_out = config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers)

        def init(weight: torch.Tensor, std: float) -> None:
            cutoff = config.initializer_cutoff_factor * std
            nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-cutoff, b=cutoff)

        init(self.bert.embeddings.word.weight, std_in)
        for layer in self.bert.layers:
            init(layer.qkv.weight, std_in)
            init(layer.mlp_in.weight, std_in)
            init(layer.attention_out.weight, std_out)
            init(layer.mlp_out.weight, std_out)
        init(self.mlm_transform.weight, std_out)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        with torch.no_grad():
            word = self.bert.embeddings.word.weight
            word[config.pad_token_id].zero_()
            word[config.vocab_size :].zero_()  # padding rows: never looked up, never predicted
        if self.mlm_bias is not None:
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
        """The MLM loss and counts, in BERT's `PretrainingOutput` (NSP fields zero, nsp_logits None).
        `mlm_labels` (B, S) holds IGNORE_INDEX where nothing is predicted (padding positions never are).

        mlm_loss = sum of token cross-entropies / mlm_normalizer (default: this batch's labelled-token count).
        `token_type_ids`, `next_sentence_label` and `nsp_normalizer` are accepted for BERT's batch and
        ignored. Without mlm_labels the MLM head does not run (mlm_logits None, mlm_loss 0).
        """
        hidden_states, layout = self.bert.encode(input_ids, attention_mask=attention_mask)
        zero_loss = torch.zeros((), device=input_ids.device)
        zero_count = torch.zeros((), dtype=torch.long, device=input_ids.device)

        mlm_logits, mlm_loss, mlm_correct, mlm_count = None, zero_loss, zero_count, zero_count
        if mlm_labels is not None:
            mlm_logits, mlm_loss, mlm_correct, mlm_count = masked_lm(
                hidden_states, layout, mlm_labels, self.mlm_logits, mlm_normalizer
            )

        return PretrainingOutput(
            loss=mlm_loss,
            mlm_loss=mlm_loss,
            nsp_loss=zero_loss,
            mlm_logits=mlm_logits,
            nsp_logits=None,
            mlm_correct=mlm_correct,
            mlm_count=mlm_count,
            nsp_correct=zero_count,
            nsp_count=zero_count,
        )

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The MLM head: (N, H) states of predicted positions -> (N, V) logits (vocabulary padding cut)."""
        hidden = self.mlm_norm(self.mlm_activation(self.mlm_transform(hidden)))
        padded_logits = F.linear(hidden, self.bert.embeddings.word.weight, self.mlm_bias)  # (N, V_padded)
        return padded_logits[:, : self.config.vocab_size]

    @classmethod
    def from_hf(cls, path: str | Path, **config_overrides: Any) -> ModernBertForPreTraining:
        """Load an HF ModernBERT checkpoint directory (ModernBertModel or ModernBertForMaskedLM).

        `config_overrides` set fields that HF's config.json lacks (e.g. unpadded_attention)."""
        from model.modernbert_hf import load_hf

        return load_hf(cls, path, **config_overrides)

    def save_hf(self, path: str | Path) -> None:
        """Write config.json and model.safetensors that `transformers.ModernBertForMaskedLM` loads."""
        from model.modernbert_hf import save_hf

        save_hf(self, path)


def attention_path(config: ModernBertConfig, device: torch.device) -> str:
    """Which attention a batch with padding gets on `device`, in words (a run says it once)."""
    dropout = config.attention_dropout
    if not config.unpad:
        return "batches with padding run padded (unpad off): SDPA with a mask over every position"
    if device.type != "cuda":
        kernel = f"one SDPA call per sequence (local layers with a band mask), attention dropout {dropout:g}"
    elif config.unpadded_attention == "varlen" and HAS_VARLEN:
        kernel = "varlen_attn (flash, local layers windowed) in half precision, without attention dropout" + (
            f" (the configured {dropout:g} is not applied)" if dropout else ""
        )
    else:
        kernel = (
            "nested tensors through SDPA for global layers, one SDPA call per sequence for local ones, "
            f"attention dropout {dropout:g}"
        )
    return f"batches with padding run on their real tokens only: {kernel}; full batches dense SDPA"
