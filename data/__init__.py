"""Corpus reading, tokenizer, sentence-pair examples, masking and the Ray Data pipelines."""

from data.builtin_corpus import builtin_corpus_path
from data.config import MaskingConfig, PrepareConfig, TokenizerConfig
from data.errors import DataError
from data.manifest import Manifest, load_manifest
from data.prepare import prepare
from data.stream import ExactBatches, PadAndCollate, build_train_dataset, check_tokenizer, make_collate_fn
from data.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer

__all__ = [
    "ExactBatches",
    "PadAndCollate",
    "DataError",
    "MaskingConfig",
    "Manifest",
    "PrepareConfig",
    "TokenizerConfig",
    "build_train_dataset",
    "builtin_corpus_path",
    "check_tokenizer",
    "load_manifest",
    "load_tokenizer",
    "make_collate_fn",
    "prepare",
    "tokenizer_hash",
    "train_tokenizer",
]
