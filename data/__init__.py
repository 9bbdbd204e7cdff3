"""Corpus reading, tokenizer, sentence-pair examples, masking and the Ray Data pipelines."""

from data.builtin_corpus import builtin_corpus_path
from data.config import MaskingConfig, PrepareConfig, StreamConfig, TokenizerConfig
from data.errors import DataError
from data.manifest import Manifest, load_manifest
from data.order import EpochOrder, batch_slices
from data.prepare import prepare
from data.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer

# The Ray Data pipelines import ray.data (seconds): only when a name of theirs is asked for, so that the
# commands and Ray Train workers that only read labelled sets, the order or the config do without it.
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


def __getattr__(name: str) -> object:
    if name in _STREAM_NAMES:
        import data.stream

        return getattr(data.stream, name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")


__all__ = [
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
