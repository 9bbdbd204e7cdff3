"""Corpus reading, tokenizer, sentence-pair examples, masking and the Ray Data pipelines."""

from data.batch_schedule import BatchSchedule
from data.builtin_corpus import builtin_corpus_path
from data.config import MaskingConfig, PrepareConfig, StreamConfig, TokenizerConfig
from data.errors import DataError
from data.manifest import Manifest, load_manifest
from data.order import EpochOrder, batch_slices
from data.prepare import prepare
from data.stream import (
    ExactBatches,
    PadAndCollate,
    PreparedSplit,
    build_train_dataset,
    check_tokenizer,
    load_split,
    make_collate_fn,
    rank_eval_stream,
    rank_train_stream,
)
from data.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer

__all__ = [
    "BatchSchedule",
    "EpochOrder",
    "ExactBatches",
    "PadAndCollate",
    "DataError",
    "MaskingConfig",
    "Manifest",
    "PrepareConfig",
    "PreparedSplit",
    "StreamConfig",
    "TokenizerConfig",
    "batch_slices",
    "build_train_dataset",
    "builtin_corpus_path",
    "check_tokenizer",
    "load_manifest",
    "load_split",
    "load_tokenizer",
    "make_collate_fn",
    "prepare",
    "rank_eval_stream",
    "rank_train_stream",
    "tokenizer_hash",
    "train_tokenizer",
]
