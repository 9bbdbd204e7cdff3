"""Shared fixtures for the training tests: one local Ray for the session and one small prepared corpus."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import ray
import ray.cloudpickle
import torch
import transformers

from data import load_tokenizer
from data.tokenizer import TOKENIZER_FILES
from model import BertConfig, BertForPreTraining
from orchestrator.config import JobConfig, config_from_dict
from orchestrator.train.preflight import ensure_prepared_data
from tests.orchestrator import reports

# The Ray Train controller unpickles the test callback: send its code along instead of importing `tests`.
ray.cloudpickle.register_pickle_by_value(reports)

SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "a bird", "the old man", "our neighbour"]
VERBS = ["sees", "likes", "finds", "follows", "paints", "helps", "calls"]
OBJECTS = ["the ball", "a red car", "the river", "a small house", "the garden", "an apple", "the moon"]
PLACES = ["in the morning", "at night", "near the school", "after dinner", "in the park", "every day"]


def write_corpus(path: Path, documents: int, seed: int = 0) -> Path:
    """Plain text: documents of simple, learnable sentences, a blank line between documents."""
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(documents):
        sentences = [
            f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
            f"{rng.choice(PLACES)}."
            for _ in range(rng.randint(4, 9))
        ]
        paragraphs.append(" ".join(sentences))
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


@pytest.fixture(scope="session")
def prepared_corpus(tmp_path_factory, ray_session) -> dict:
    """A tokenizer and prepared examples (max length 32, an eval split) built the way `train` builds them.

    64 documents (blank-line separated) give 172 training examples: 5 global batches of 32 an epoch, and
    even, as the exact-batch test needs."""
    root = tmp_path_factory.mktemp("corpus")
    data = corpus_data(root)
    manifest = ensure_prepared_data(make_job(root, data))
    return {"data": data, "train_examples": manifest.counts["examples"]["train"]}


def corpus_data(root: Path) -> dict:
    """The data section of a run on 64 generated documents under `root` (tokenizer and examples built by
    `train` there when missing): max length 32, an eval split."""
    return {
        "corpus": [str(write_corpus(root / "corpus.txt", documents=64))],
        "tokenizer_dir": str(root / "tokenizer"),
        "prepared_dir": str(root / "prepared"),
        "tokenizer": {"vocab_size": 200, "min_frequency": 1},
        "prepare": {"max_seq_length": 32, "eval_fraction": 0.1, "documents": "blank-line"},
    }


def make_job(
    root: Path, data: dict, num_workers: int | tuple[int, int] | None = None, **sections: dict
) -> JobConfig:
    """A tiny-model job on the prepared corpus, CPU workers of half a CPU each, storage under `root`."""
    raw = {
        "model": {"preset": "tiny"},
        "data": data,
        "train": {"global_batch_size": 16, "micro_batch_size": 8, "max_steps": 4, "log_every": 1},
        "optim": {"lr": 2e-3, "warmup_steps": 1},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5, "data_cpus": 1},
        "checkpoint": {"storage_path": str(root / "runs"), "run_name": "test", "every": 100},
        "mlflow": {"enabled": False},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    if num_workers is not None:  # as --num-workers N or MIN-MAX
        low, high = num_workers if isinstance(num_workers, tuple) else (None, num_workers)
        raw["scaling"] |= {"num_workers": high, "min_workers": low}
    return config_from_dict(raw)


RANDOM_MODEL_HIDDEN = 32


def save_random_model(directory: Path, tokenizer_dir: str, seed: int, **config: float) -> Path:
    """A random tiny model (hidden 32, 2 layers) saved in the final/ layout: HF files plus the tokenizer."""
    torch.manual_seed(seed)
    model_config = BertConfig(
        vocab_size=load_tokenizer(tokenizer_dir).get_vocab_size(),
        hidden_size=RANDOM_MODEL_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **config,
    )
    BertForPreTraining(model_config).save_hf(directory)
    copy_tokenizer_files(tokenizer_dir, directory)
    return directory


def copy_tokenizer_files(tokenizer_dir: str, model_dir: Path) -> None:
    """The tokenizer files a run's final/ folder holds, as `export_final` copies them."""
    for name in TOKENIZER_FILES:
        shutil.copy(f"{tokenizer_dir}/{name}", model_dir / name)


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = sorted({w for phrase in SUBJECTS + VERBS + OBJECTS + PLACES for w in phrase.split()} | {"."})
VOCAB = SPECIALS + WORDS
DONOR_SHAPE = {"num_hidden_layers": 3, "hidden_size": 96, "num_attention_heads": 4, "intermediate_size": 160}
HF_CLASSES = {
    "BertModel": transformers.BertModel,
    "BertForMaskedLM": transformers.BertForMaskedLM,
    "BertForPreTraining": transformers.BertForPreTraining,
}


def save_donor(
    directory: Path, kind: str = "BertForPreTraining", padded_rows: int = 0, seed: int = 0
) -> Path:
    """A random transformers BERT of DONOR_SHAPE and its tokenizer (vocab.txt -> BertTokenizerFast files)."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB) + padded_rows, max_position_embeddings=64, **DONOR_SHAPE
    )
    HF_CLASSES[kind](config).save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizerFast.from_pretrained(directory).save_pretrained(directory)
    return directory
