"""Dynamic MLM masking of a batch of examples, vectorised in NumPy over the flat (unpadded) token array.

Each token's random numbers are a counter-based hash of (seed, epoch, example_id, position), so the mask of an
example depends on nothing else: not on blocks, workers, batch boundaries or the order rows arrive in. A new
epoch gives new masks; the same epoch gives the same masks again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.batch import IGNORE_INDEX
from data.config import MaskingConfig
from data.hashing import splitmix64, stream_key
from data.tokenizer import SPECIAL_TOKENS

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_TWO_TO_32 = float(1 << 32)


@dataclass(frozen=True)
class MaskingVocab:
    """What masking needs to know about the tokenizer."""

    mask_id: int
    """Id of [MASK]."""
    is_special: np.ndarray
    """bool[vocab_size]: never masked, never drawn as a random token."""
    is_continuation: np.ndarray
    """bool[vocab_size]: a WordPiece that continues a word ("##..."), for whole-word masking."""
    random_candidates: np.ndarray
    """int32 ids a random replacement is drawn from (all non-special tokens)."""

    @classmethod
    def from_tokenizer(cls, tokenizer) -> MaskingVocab:
        vocab = tokenizer.get_vocab()
        size = max(vocab.values()) + 1
        is_special = np.zeros(size, dtype=bool)
        is_continuation = np.zeros(size, dtype=bool)
        special_names = set(SPECIAL_TOKENS)
        special_names.update(t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special)
        for token, token_id in vocab.items():
            is_special[token_id] = token in special_names
            is_continuation[token_id] = token.startswith("##")
        return cls(
            mask_id=vocab["[MASK]"],
            is_special=is_special,
            is_continuation=is_continuation,
            random_candidates=np.flatnonzero(~is_special).astype(np.int32),
        )


def mask_tokens(
    input_ids: np.ndarray,
    offsets: np.ndarray,
    example_ids: np.ndarray,
    seed: int,
    epoch: int,
    config: MaskingConfig,
    vocab: MaskingVocab,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask the examples whose tokens are `input_ids[offsets[i]:offsets[i + 1]]`.

    Returns (masked input_ids, mlm_labels), both flat like `input_ids`; labels hold the original id where a
    token is to be predicted and IGNORE_INDEX elsewhere.
    """
    num_tokens = len(input_ids)
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(num_tokens, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    with np.errstate(over="ignore"):
        example_stream = splitmix64(
            np.uint64(stream_key(seed, "masking", epoch)) ^ example_ids.astype(np.uint64)
        )
        select_hash = splitmix64(example_stream[row] + position.astype(np.uint64) * _GOLDEN)  # (N,)
        action_hash = splitmix64(select_hash)  # (N,)
    maskable = ~vocab.is_special[input_ids]
    select_hash_used = select_hash
    if config.whole_word_masking:
        # Every piece of a word takes the draw of the word's first piece.
        starts_word = ~vocab.is_continuation[input_ids] | (position == 0)
        word_start = np.maximum.accumulate(np.where(starts_word, np.arange(num_tokens), 0))
        select_hash_used = select_hash[word_start]
    selected = maskable & (select_hash_used < np.uint64(int(config.mlm_probability * 2**64)))
    action = (action_hash >> np.uint64(32)).astype(np.float64) / _TWO_TO_32
    to_mask = selected & (action < config.mask_token_fraction)
    to_random = selected & ~to_mask & (action < config.mask_token_fraction + config.random_token_fraction)
    masked = input_ids.copy()
    masked[to_mask] = vocab.mask_id
    random_at = np.flatnonzero(to_random)
    draw = (action_hash[random_at] & np.uint64(0xFFFFFFFF)) % np.uint64(len(vocab.random_candidates))
    masked[random_at] = vocab.random_candidates[draw.astype(np.int64)]
    labels = np.where(selected, input_ids, IGNORE_INDEX).astype(input_ids.dtype)
    return masked, labels
