"""Fixtures of the data tests: one Ray instance, a generated corpus, a tokenizer and a prepared directory."""

from __future__ import annotations

import random

import pytest

from data import PrepareConfig, TokenizerConfig, prepare, train_tokenizer

WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "it",
    "at",
    "from",
    "his",
    "an",
    "were",
    "are",
    "which",
    "be",
    "this",
    "has",
    "also",
    "or",
    "had",
    "their",
    "not",
    "he",
    "but",
    "its",
    "first",
    "new",
    "one",
    "all",
    "after",
    "been",
    "who",
    "more",
    "two",
    "they",
    "other",
    "into",
    "can",
    "her",
    "during",
    "over",
    "she",
    "time",
    "only",
    "year",
    "some",
    "most",
    "between",
    "when",
    "where",
    "used",
    "would",
    "there",
    "later",
    "river",
    "mountain",
    "station",
    "language",
]
TEST_PREPARE = PrepareConfig(max_seq_length=64, eval_fraction=0.1, examples_per_shard=300, seed=7)


def make_documents(num_documents: int, seed: int = 0) -> list[list[str]]:
    """Documents of 3..14 sentences; each sentence starts with its marker "docN sentK"."""
    rng = random.Random(seed)
    documents = []
    for d in range(num_documents):
        sentences = []
        for s in range(rng.randint(3, 14)):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 18)))
            sentences.append(f"doc{d} sent{s} {words}.")
        documents.append(sentences)
    return documents


def write_bert_corpus(path, documents: list[list[str]]) -> str:
    path.write_text("".join("\n".join(sentences) + "\n\n" for sentences in documents), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def documents() -> list[list[str]]:
    return make_documents(400)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, documents) -> str:
    return write_bert_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt", documents)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_file) -> str:
    out = str(tmp_path_factory.mktemp("tokenizer"))
    return train_tokenizer([corpus_file], out, TokenizerConfig(vocab_size=1000, min_frequency=1))


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory, ray_session, corpus_file, tokenizer_dir) -> str:
    out = str(tmp_path_factory.mktemp("prepared") / "out")
    prepare([corpus_file], tokenizer_dir, out, TEST_PREPARE)
    return out
