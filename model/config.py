"""BERT model configuration: the sizes, the named presets, and the mapping to and from HF `config.json`.

Field names are those of `transformers.BertConfig`, so an HF `config.json` maps onto this class one to one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# Named sizes (layers, hidden, heads) of the BERT family; intermediate size is 4 x hidden throughout.
PRESETS: dict[str, dict[str, int]] = {
    name: {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
    }
    for name, (layers, hidden, heads) in {
        "tiny": (2, 128, 2),
        "mini": (4, 256, 4),
        "small": (4, 512, 8),
        "medium": (8, 512, 8),
        "base": (12, 768, 12),
        "large": (24, 1024, 16),
    }.items()
}

ARCHITECTURE_FIELDS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
)
"""What makes two BERTs the same network, besides the vocabulary: weights move only between such models."""

# The CUDA kernels for the attention of unpadded batches (BertConfig.unpadded_attention).
UNPADDED_ATTENTION = ("sdpa", "varlen")

# HF config fields that this implementation does not have a switch for: other values would silently change
# the architecture, so they must hold these values.
_FIXED_HF_FIELDS = {"hidden_act": "gelu", "position_embedding_type": "absolute", "is_decoder": False}


@dataclass
class BertConfig:
    vocab_size: int = 30522
    """The tokenizer's true vocabulary size; exports always carry this one."""
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    use_nsp: bool = True
    """False: MLM only (the NSP head and the pooler get no training signal and are frozen)."""
    pad_vocab_multiple: int = 64
    """Embedding rows are padded up to a multiple of this inside the model, for faster matmuls; 1 = off."""
    activation_checkpointing: bool = False
    """Recompute each encoder layer in the backward pass instead of keeping its activations."""
    unpad: bool = True
    """A batch with padding runs on its real tokens only (False: the padding positions are computed too)."""
    unpadded_attention: str = "sdpa"
    """The CUDA attention kernel of unpadded batches: "sdpa" (nested jagged tensors through
    scaled_dot_product_attention, with attention dropout) or "varlen" (torch.nn.attention.varlen.varlen_attn,
    without attention dropout). On CPU each sequence runs its own SDPA call, with dropout."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}: choose a head count that divides the hidden size"
            )
        if self.unpadded_attention not in UNPADDED_ATTENTION:
            raise ValueError(
                f"unpadded_attention {self.unpadded_attention!r} is unknown; choose one of "
                f"{', '.join(UNPADDED_ATTENTION)}"
            )
        if self.pad_vocab_multiple < 1:
            raise ValueError(f"pad_vocab_multiple must be >= 1 (1 = off), got {self.pad_vocab_multiple}")

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple

    def training_flops(
        self, tokens: float, squared_lengths: float, labelled: float, sequences: float
    ) -> float:
        """Model FLOPs of training (forward and backward) on batches of these totals: real `tokens`, the sum
        of each sequence's squared real length, `labelled` (MLM) positions and `sequences`.

        Matmuls only, the backward pass costing twice the forward (so a step is 3x the forward):

            forward = L * (T * (8*H^2 + 4*H*I) + 4*H * sum_b len_b^2)   QKV, output; MLP; attention
                    + N * (2*H^2 + 2*H*V)                               MLM transform and decoder
                    + B * (2*H^2 + 4*H)                                 pooler and NSP head (NSP on)

        with L layers, H hidden size, I intermediate size, V the true vocabulary size, T real tokens, N
        labelled positions, B sequences. Embedding lookups, norms, softmax and elementwise work are not
        counted, nor work on padding: the work BERT pretraining needs, whatever an implementation does.
        """
        hidden, inter = self.hidden_size, self.intermediate_size
        encoder = self.num_hidden_layers * (
            tokens * (8 * hidden**2 + 4 * hidden * inter) + 4 * hidden * squared_lengths
        )
        mlm = labelled * (2 * hidden**2 + 2 * hidden * self.vocab_size)
        nsp = sequences * (2 * hidden**2 + 4 * hidden) if self.use_nsp else 0.0
        return 3.0 * (encoder + mlm + nsp)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> BertConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` of an HF `BertForPreTraining` with these sizes (true vocabulary size).

        `use_nsp` stays in it (transformers keeps unknown keys as attributes), so that a model trained without
        NSP says that its NSP head is untrained."""
        ours_only = {"pad_vocab_multiple", "activation_checkpointing", "unpad", "unpadded_attention"}
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ours_only}
        return {
            "model_type": "bert",
            "architectures": ["BertForPreTraining"],
            **fields,
            **_FIXED_HF_FIELDS,
            "tie_word_embeddings": True,
        }

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides: Any) -> BertConfig:
        """The sizes from an HF BERT `config.json` dict; `overrides` set our own fields (e.g. use_nsp)."""
        if hf.get("model_type") != "bert":
            raise ValueError(f"model_type is {hf.get('model_type')!r}, expected 'bert'")
        for key, expected in _FIXED_HF_FIELDS.items():
            if key in hf and hf[key] != expected:
                raise ValueError(f"{key} is {hf[key]!r}; only {expected!r} is supported")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in hf.items() if k in names}, **overrides})
