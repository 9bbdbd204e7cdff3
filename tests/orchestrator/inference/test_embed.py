"""`embed --input`: Ray Data actors write one vector a document, equal to the encoder's own output."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from common import storage
from data import DataError
from data.hashing import text_key
from orchestrator.cli import main
from orchestrator.inference.embed import CorpusEmbedder, EmbedSettings, embed_corpus
from orchestrator.inference.loading import load_model
from tests.orchestrator.conftest import RANDOM_MODEL_HIDDEN, save_random_model

TEXTS = [
    "The cat sees the moon at night.",
    "A dog likes the river.",
    "My friend paints a small house in the park every day after dinner.",
    "The teacher calls.",
    "Our neighbour helps the old man near the school in the morning.",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, prepared_corpus):
    """A random tiny model saved as a final/ folder with the prepared corpus's tokenizer."""
    directory = tmp_path_factory.mktemp("embed_model") / "final"
    return save_random_model(directory, prepared_corpus["data"]["tokenizer_dir"], seed=0)


def encoder_output(model_dir, text: str) -> torch.Tensor:
    """model.bert on the text alone (no batch, no padding): (S, H)."""
    loaded = load_model(model_dir)
    encoding = loaded.tokenizer.encode(text)
    sequence_output, _ = loaded.model.bert(torch.tensor([encoding.ids]), torch.tensor([encoding.type_ids]))
    return sequence_output[0].detach()


@pytest.mark.parametrize("place", ["local", "bucket"])
def test_corpus_vectors_equal_the_encoder_and_parquet_has_a_row_per_document(
    model_dir, tmp_path, ray_session, s3_server, place
):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text, "other": 1}) + "\n" for text in TEXTS))
    source, out = str(model_dir), str(tmp_path / "vectors")
    if place == "bucket":  # the model read from a bucket and the vectors written to it
        source, out = f"{s3_server}/embed/final", f"{s3_server}/embed/vectors"
        storage.copy_dir(model_dir, source)
    settings = EmbedSettings(pooling="mean", batch_size=2, num_workers=1, cpus_per_worker=0.5)
    assert embed_corpus(source, [str(corpus)], out, settings) == len(TEXTS)

    table = pq.read_table(out)
    assert table.num_rows == len(TEXTS)
    assert table.schema.field("embedding").type.list_size == RANDOM_MODEL_HIDDEN
    rows = {row["text"]: row for row in table.to_pylist()}
    assert sorted(rows) == sorted(TEXTS)
    for text in TEXTS:
        expected = encoder_output(model_dir, text)
        assert rows[text]["id"] == f"{text_key(text):016x}"
        assert rows[text]["num_tokens"] == expected.shape[0]
        torch.testing.assert_close(torch.tensor(rows[text]["embedding"]), expected.mean(dim=0))


def test_cls_pooling_is_the_encoder_output_at_cls(model_dir):
    embedder = CorpusEmbedder(str(model_dir), None, EmbedSettings(pooling="cls"))
    vectors, num_tokens, _ = embedder.embed(TEXTS)  # one padded batch
    for text, vector, count in zip(TEXTS, vectors, num_tokens, strict=True):
        expected = encoder_output(model_dir, text)
        assert count == expected.shape[0]
        torch.testing.assert_close(torch.from_numpy(vector), expected[0])


def test_token_rows_hold_every_token_and_its_vector(model_dir):
    embedder = CorpusEmbedder(str(model_dir), None, EmbedSettings(pooling="tokens"))
    table = embedder(pa.table({"text": TEXTS}))  # what one map_batches call returns
    assert table.num_rows == len(TEXTS)
    loaded = load_model(model_dir)
    for row in table.to_pylist():
        assert row["tokens"] == loaded.tokenizer.encode(row["text"]).tokens
        expected = encoder_output(model_dir, row["text"])
        assert row["num_tokens"] == len(row["tokens"]) == expected.shape[0]
        torch.testing.assert_close(torch.tensor(row["embedding"]), expected)


def test_empty_corpus_is_a_clear_error(model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    status = main(["embed", str(model_dir), "--input", str(empty), "--out", str(tmp_path / "out")])
    assert status == 2
    assert "is empty (0 bytes): there is nothing to embed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_blank_corpus_is_a_clear_error(model_dir, tmp_path, ray_session):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n  \n\n")
    settings = EmbedSettings(num_workers=1, cpus_per_worker=0.5)
    with pytest.raises(DataError, match="holds no documents"):
        embed_corpus(str(model_dir), [str(blank)], str(tmp_path / "out"), settings)
    assert not (tmp_path / "out").exists()
