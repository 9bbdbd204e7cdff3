"""Counter-based random numbers: splitmix64 over uint64 keys, vectorised in NumPy.

Every random choice of the pipeline is a pure function of (seed, what it is about), never of the order in
which blocks, workers or batches see the data; that is what makes the output the same on any cluster.
"""

from __future__ import annotations

import hashlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TWO_TO_53 = float(1 << 53)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser applied elementwise to uint64 values (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(values, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def combine(key: np.ndarray | int, value: np.ndarray | int) -> np.ndarray:
    """Hash `value` into the stream named by `key` (both uint64, broadcast)."""
    with np.errstate(over="ignore"):
        return splitmix64(np.asarray(key, dtype=np.uint64) ^ splitmix64(np.asarray(value, dtype=np.uint64)))


def to_unit_float(hashes: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from 64-bit hashes (their top 53 bits)."""
    return (hashes >> np.uint64(11)).astype(np.float64) / _TWO_TO_53


def stream_key(*parts: int | str) -> int:
    """A uint64 key for a named random stream, e.g. stream_key(seed, "masking", epoch)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def text_key(text: str) -> int:
    """A document's stable identity: a 64-bit hash of its (normalised) text."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
