"""`eval`: held-out MLM and NSP numbers equal a direct computation with transformers on the same masks, and
can be logged to an existing MLflow run."""

from __future__ import annotations

import json
import math
import os

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import transformers

from data import MaskingConfig, PrepareConfig, load_manifest, load_tokenizer, prepare
from data.manifest import TOKENIZER_DIR
from data.masking import MaskingVocab
from data.stream import mask_batch
from model import IGNORE_INDEX
from orchestrator.cli import main
from tests.orchestrator.conftest import save_random_model

SEED = 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, prepared_corpus):
    """A random tiny model (final/ layout: HF files + the prepared corpus's tokenizer)."""
    directory = tmp_path_factory.mktemp("eval_model") / "final"
    # initializer_range 0.2: a model with opinions, so the accuracies are away from 0 and 1/2.
    return save_random_model(
        directory, prepared_corpus["data"]["tokenizer_dir"], seed=1, initializer_range=0.2
    )


def direct_metrics(model_dir, prepared_dir: str) -> dict[str, float]:
    """transformers' BertForPreTraining over each example of the eval split on its own (no padding, no Ray),
    masked by the masking function of the training stream with the same seed."""
    reference = transformers.BertForPreTraining.from_pretrained(model_dir).eval()
    manifest = load_manifest(prepared_dir)
    vocab = MaskingVocab.from_tokenizer(load_tokenizer(os.path.join(prepared_dir, TOKENIZER_DIR)))
    shards = pq.read_table([os.path.join(prepared_dir, path) for path in manifest.shards["eval"]])
    rows = mask_batch(shards, seed=SEED, epoch=0, config=MaskingConfig(), vocab=vocab).to_pylist()
    loss_sum, mlm_correct, mlm_count, nsp_correct = 0.0, 0, 0, 0
    with torch.no_grad():
        for row in rows:
            out = reference(
                input_ids=torch.tensor(row["input_ids"], dtype=torch.long)[None],
                token_type_ids=torch.tensor(row["token_type_ids"], dtype=torch.long)[None],
            )
            labels = torch.tensor(row["mlm_labels"], dtype=torch.long)
            labelled = labels != IGNORE_INDEX
            logits = out.prediction_logits[0][labelled]
            loss_sum += F.cross_entropy(logits, labels[labelled], reduction="sum").item()
            mlm_correct += (logits.argmax(-1) == labels[labelled]).sum().item()
            mlm_count += labelled.sum().item()
            nsp_correct += int(out.seq_relationship_logits[0].argmax().item() == row["next_sentence_label"])
    return {
        "examples": len(rows),
        "mlm_tokens": mlm_count,
        "mlm_loss": loss_sum / mlm_count,
        "perplexity": math.exp(loss_sum / mlm_count),
        "mlm_accuracy": mlm_correct / mlm_count,
        "nsp_accuracy": nsp_correct / len(rows),
    }


def test_eval_equals_a_direct_computation_and_is_logged_to_mlflow(
    model_dir, prepared_corpus, tmp_path, capsys
):
    from mlflow import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("eval-test")).info.run_id
    prepared_dir = prepared_corpus["data"]["prepared_dir"]
    argv = [
        "eval",
        str(model_dir),
        "--data",
        prepared_dir,
        "--seed",
        str(SEED),
        "--batch-size",
        "4",
        "--json",
    ]
    assert main([*argv, "--mlflow-run", run_id, "--tracking-uri", tracking_uri]) == 0
    result = json.loads(capsys.readouterr().out)

    expected = direct_metrics(model_dir, prepared_dir)
    assert result["examples"] == expected["examples"] > 0
    assert result["mlm_tokens"] == expected["mlm_tokens"] > 0
    for name in ("mlm_loss", "perplexity", "mlm_accuracy", "nsp_accuracy"):
        assert result[name] == pytest.approx(expected[name], rel=1e-5), name
    logged = client.get_run(run_id).data.metrics
    assert logged == {f"heldout_eval_{name}": value for name, value in result.items()}


def test_eval_with_another_tokenizer_is_a_clear_error(model_dir, prepared_corpus, tmp_path, capsys):
    other = tmp_path / "other_tokenizer"
    other.mkdir()
    vocab = load_tokenizer(str(model_dir)).get_vocab()
    # The same tokens in another order: a different tokenizer of the same size.
    tokens = sorted(vocab, key=lambda token: (vocab[token] >= 5, token))
    (other / "vocab.txt").write_text("\n".join(tokens) + "\n")
    argv = [
        "eval",
        str(model_dir),
        "--data",
        prepared_corpus["data"]["prepared_dir"],
        "--tokenizer",
        str(other),
    ]
    assert main(argv) == 2
    assert "is not the one" in capsys.readouterr().err


def test_eval_on_examples_longer_than_the_models_positions_is_a_clear_error(
    model_dir, prepared_corpus, tmp_path, capsys
):
    settings = prepared_corpus["data"]
    longer = str(tmp_path / "prepared-128")
    prepare(settings["corpus"], settings["tokenizer_dir"], longer, PrepareConfig(max_seq_length=128))
    capsys.readouterr()
    assert main(["eval", str(model_dir), "--data", longer, "--split", "train"]) == 2
    assert (
        f"{longer} holds examples of up to 128 tokens, but the model has 64 positions: evaluate on data "
        "prepared with --max-seq-length 64 or less" in capsys.readouterr().err
    )
