"""Fixtures of the data tests: generated corpora of real shapes, a tokenizer and a prepared directory.

Shapes: the BERT format; folders of plain-text files of paragraphs wrapped at 80 columns (with boilerplate);
documents of one or two sentences; long documents; one huge document on one line."""

from __future__ import annotations

import contextlib
import random
import textwrap

import pytest

from data import PrepareConfig, TokenizerConfig, prepare, readers, train_tokenizer

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
TEST_PREPARE = PrepareConfig(
    max_seq_length=64, eval_fraction=0.1, examples_per_shard=300, seed=7, input_format="bert"
)
LICENSE = (
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software. "
    "The above copyright notice shall be included in all copies. The software is provided as is, without "
    "warranty of any kind."
)


def make_sentence(rng: random.Random, marker: str, low: int = 4, high: int = 18) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))
    return f"{marker} {words}."


def make_documents(num_documents: int, seed: int = 0, low: int = 3, high: int = 14) -> list[list[str]]:
    """Documents of `low`..`high` sentences; each sentence starts with its marker "DocN sentK"."""
    rng = random.Random(seed)
    return [
        [make_sentence(rng, f"Doc{d} sent{s}") for s in range(rng.randint(low, high))]
        for d in range(num_documents)
    ]


def write_bert_corpus(path, documents: list[list[str]]) -> str:
    """The BERT format: a sentence a line, a blank line between documents."""
    path.write_text("".join("\n".join(sentences) + "\n\n" for sentences in documents), encoding="utf-8")
    return str(path)


def write_text_files(directory, documents: list[list[str]], seed: int = 0, boilerplate: bool = False) -> str:
    """Plain-text files as people write them, one document each: paragraphs of 1-6 sentences wrapped at 80
    columns, a blank line between paragraphs; with `boilerplate`, every fifth file ends with a license."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for d, sentences in enumerate(documents):
        paragraphs, i = [], 0
        while i < len(sentences):
            take = rng.randint(1, 6)
            paragraphs.append(textwrap.fill(" ".join(sentences[i : i + take]), width=80))
            i += take
        if boilerplate and d % 5 == 0:
            paragraphs.append(textwrap.fill(LICENSE, width=80))
        (directory / f"doc{d:05d}.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return str(directory)


def write_one_line_document(path, num_words: int, seed: int = 0) -> str:
    """One huge document on one line (no newline at all): words without sentence punctuation."""
    rng = random.Random(seed)
    path.write_text(" ".join(f"{rng.choice(WORDS)}{i % 97}" for i in range(num_words)), encoding="utf-8")
    return str(path)


@contextlib.contextmanager
def small_units(unit_bytes: int = 8 << 10):
    """Work units of `unit_bytes` (1 MiB normally), so that a test corpus of a few hundred KiB spans many."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(readers, "MIN_UNIT_BYTES", unit_bytes)
        yield


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
    """The BERT-format corpus prepared in work units of 8 KiB (about 20 of them)."""
    out = str(tmp_path_factory.mktemp("prepared") / "out")
    with small_units():
        prepare([corpus_file], tokenizer_dir, out, TEST_PREPARE)
    return out
