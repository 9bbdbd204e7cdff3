"""`bert-pretrain tokenizer train` and the mistakes a new user makes with it: a size below what a WordPiece
vocabulary always holds, --out naming a file, or a folder that holds other things."""

from __future__ import annotations

import pytest

from orchestrator.cli import main
from tests.orchestrator.conftest import write_corpus


@pytest.fixture
def corpus(tmp_path) -> str:
    return str(write_corpus(tmp_path / "corpus.txt", documents=20))


def train(corpus: str, out, *extra: str) -> int:
    return main(["tokenizer", "train", "--corpus", corpus, "--out", str(out), "--min-frequency", "1", *extra])


def test_a_vocabulary_size_below_the_alphabet_is_explained(corpus, tmp_path, capsys):
    assert train(corpus, tmp_path / "tok", "--vocab-size", "3") == 0
    first, second = capsys.readouterr().out.strip().splitlines()
    tokens = int(first.rsplit(": ", 1)[1].split()[0])
    assert tokens > 3 and first == f"wrote a tokenizer to {tmp_path / 'tok'}: {tokens} tokens"
    assert second == (
        "(more than --vocab-size 3: a WordPiece vocabulary always holds the 5 special tokens and every "
        "character of the corpus)"
    )
    assert train(corpus, tmp_path / "tok2", "--vocab-size", "0") == 2
    assert "--vocab-size 0: give a positive size" in capsys.readouterr().err


def test_out_must_be_a_folder_holding_nothing_but_a_tokenizer(corpus, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert train(corpus, a_file) == 2
    assert f"--out {a_file} is a file: give a folder for the tokenizer" in capsys.readouterr().err
    assert a_file.read_text() == "mine"

    assert train(corpus, tmp_path, "--vocab-size", "100") == 2  # holds corpus.txt and notes.txt
    error = capsys.readouterr().err
    assert f"--out {tmp_path} holds other files than a tokenizer (corpus.txt, notes.txt)" in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus.txt", "notes.txt"]

    out = tmp_path / "tokenizer"
    assert train(corpus, out, "--vocab-size", "100") == 0
    assert train(corpus, out, "--vocab-size", "120") == 0
    replaced = capsys.readouterr().out.strip().splitlines()[-1]
    files = "special_tokens_map.json, tokenizer.json, tokenizer_config.json, vocab.txt"
    assert replaced.startswith(f"replaced the tokenizer ({files}) in {out}: ")
