"""Corpus reading, tokenizer, sentence-pair examples, masking and the Ray Data pipelines.

The stream's names load on first use (PEP 562): `prepare`'s Ray tasks import `data.build`, and through this
package they would import Ray Data (a second or more of every worker's start) without using it.
"""

from __future__ import annotations

import importlib

from data.batch_schedule import BatchSchedule
from data.builtin_corpus import builtin_corpus_path
from data.config import MaskingConfig, PrepareConfig, StreamConfig, TokenizerConfig
from data.errors import DataError
from data.manifest import Manifest, load_manifest
from data.order import EpochOrder, batch_slices
from data.prepare import prepare
from data.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer

_STREAM_NAMES = (
    "ExactBatches",
    "PadAndCollate",
    "PreparedSplit",
    "build_train_dataset",
    "check_tokenizer",
    "load_split",
    "make_collate_fn",
    "rank_eval_stream",
    "rank_train_stream",
)

__all__ = [
    "BatchSchedule",
    "EpochOrder",
    "DataError",
    "MaskingConfig",
    "Manifest",
    "PrepareConfig",
    "StreamConfig",
    "TokenizerConfig",
    "batch_slices",
    "builtin_corpus_path",
    "load_manifest",
    "load_tokenizer",
    "prepare",
    "tokenizer_hash",
    "train_tokenizer",
    *_STREAM_NAMES,
]


def __getattr__(name: str):
    if name not in _STREAM_NAMES:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module("data.stream"), name)
