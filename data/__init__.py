"""Corpus reading, tokenizer, sentence-pair examples, masking and the Ray Data pipelines."""
