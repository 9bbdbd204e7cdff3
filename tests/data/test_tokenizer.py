"""The WordPiece tokenizer: transformers loads it and agrees on every id; loading and hashing."""

from __future__ import annotations

import shutil

import pytest
from transformers import BertTokenizerFast

from data import DataError, TokenizerConfig, load_tokenizer, tokenizer_hash, train_tokenizer
from data.tokenizer import SPECIAL_TOKENS

SAMPLES = [
    "Doc3 sent1 the river was used by the station.",
    "Café MOUNTAIN, naïve résumé — 42 rivers!",
    "unseenwordpieces and 中文 characters",
]


def test_special_tokens_have_fixed_ids(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]


def test_ids_equal_bert_tokenizer_fast(tokenizer_dir):
    ours = load_tokenizer(tokenizer_dir)
    reference = BertTokenizerFast.from_pretrained(tokenizer_dir)
    for text in SAMPLES:
        assert reference(text)["input_ids"] == ours.encode(text).ids
    pair = reference(SAMPLES[0], SAMPLES[1])
    encoding = ours.encode(SAMPLES[0], SAMPLES[1])
    assert pair["input_ids"] == encoding.ids
    assert pair["token_type_ids"] == encoding.type_ids


def test_vocab_txt_alone_gives_the_same_ids(tokenizer_dir, tmp_path):
    shutil.copy(f"{tokenizer_dir}/vocab.txt", tmp_path / "vocab.txt")
    shutil.copy(f"{tokenizer_dir}/tokenizer_config.json", tmp_path / "tokenizer_config.json")
    from_vocab = load_tokenizer(str(tmp_path / "vocab.txt"))
    ours = load_tokenizer(tokenizer_dir)
    for text in SAMPLES:
        assert from_vocab.encode(text).ids == ours.encode(text).ids


def test_cased_tokenizer_keeps_case(corpus_file, tmp_path):
    out = train_tokenizer([corpus_file], str(tmp_path), TokenizerConfig(vocab_size=300, lowercase=False))
    tokenizer = load_tokenizer(out)
    assert tokenizer.encode("The").tokens != tokenizer.encode("the").tokens
    assert (
        BertTokenizerFast.from_pretrained(out)("The River")["input_ids"] == tokenizer.encode("The River").ids
    )


def test_hash_follows_content_not_location(tokenizer_dir, corpus_file, tmp_path):
    copy = shutil.copytree(tokenizer_dir, tmp_path / "copy")
    assert tokenizer_hash(str(copy)) == tokenizer_hash(tokenizer_dir)
    other = train_tokenizer([corpus_file], str(tmp_path / "other"), TokenizerConfig(vocab_size=400))
    assert tokenizer_hash(other) != tokenizer_hash(tokenizer_dir)


def test_missing_tokenizer_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="tokenizer train"):
        load_tokenizer(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="neither tokenizer.json nor vocab.txt"):
        load_tokenizer(str(tmp_path))
