"""Shared fixtures of the fine-tuning tests: a small labelled set whose label a tiny model learns quickly (is
the sentence's subject an animal or a person), a tokenizer trained on it, and a random tiny model in the
final/ layout to fine-tune."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from data import TokenizerConfig, train_tokenizer
from tests.orchestrator.conftest import OBJECTS, PLACES, VERBS, save_random_model

ANIMALS = ["the cat", "a dog", "a bird", "the horse"]
PEOPLE = ["my friend", "the teacher", "the old man", "our neighbour"]


def labelled_rows(count: int, seed: int) -> list[dict]:
    """Sentences labelled "animal" or "person" by their subject."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.choice(["animal", "person"])
        subject = rng.choice(ANIMALS if label == "animal" else PEOPLE)
        text = f"{subject.capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}."
        rows.append({"text": text, "label": label})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def labelled_set(tmp_path_factory) -> dict:
    """train.csv (192 rows), eval.jsonl (64 rows), a tokenizer trained on their texts and a random tiny
    model (hidden 32, 2 layers, 64 positions) with it, in the final/ layout."""
    root = tmp_path_factory.mktemp("labelled")
    train_rows, eval_rows = labelled_rows(192, seed=1), labelled_rows(64, seed=2)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(row["text"] for row in train_rows + eval_rows) + "\n")
    tokenizer_dir = train_tokenizer(
        [str(corpus)], str(root / "tokenizer"), TokenizerConfig(vocab_size=200, min_frequency=1)
    )
    model = save_random_model(root / "model", tokenizer_dir, seed=0)
    return {
        "root": root,
        "model": str(model),
        "train": str(write_csv(root / "train.csv", train_rows)),
        "eval": str(write_jsonl(root / "eval.jsonl", eval_rows)),
        "train_rows": train_rows,
        "eval_rows": eval_rows,
    }
