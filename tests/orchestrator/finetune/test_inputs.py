"""What finetune reads and refuses, before any worker starts, and how it scores: no Ray Train fit here.

Bad input is one line from the command (exit status 2); the labelled sets' formats (CSV, JSONL, Parquet, a
saved HF dataset), labels, pairs and truncation; the scores against their definitions (and SciPy's, where
it is installed)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data import load_tokenizer
from data.labelled import Fields, load_labelled_data, read_labelled
from orchestrator.cli import main
from orchestrator.finetune.metrics import (
    classification_scores,
    regression_scores,
    summarize_seeds,
)
from tests.orchestrator.finetune.conftest import write_csv, write_jsonl


def finetune_error(labelled_set: dict, *flags: str, train: str | None = None, eval: str | None = None) -> str:
    """The command's one line on standard error (it must exit with status 2, without starting Ray)."""
    argv = [
        "finetune",
        labelled_set["model"],
        "--train",
        train or labelled_set["train"],
        "--eval",
        eval or labelled_set["eval"],
        "--out",
        str(labelled_set["root"] / "unused"),
        "--no-mlflow",
        *flags,
    ]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main(argv) == 2
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("bert-pretrain finetune: error: ")
    return lines[0]


def test_a_field_missing_from_every_row_is_named_with_the_file(labelled_set):
    line = finetune_error(labelled_set, "--label-field", "category")
    assert (
        "train.csv: row 1 has no field 'category' (its fields: text, label); pass --label-field NAME" in line
    )


def test_the_first_row_without_the_field_is_named(labelled_set, tmp_path):
    rows = [dict(row) for row in labelled_set["eval_rows"][:5]]
    del rows[2]["label"]
    line = finetune_error(labelled_set, eval=str(write_jsonl(tmp_path / "eval.jsonl", rows)))
    assert "eval.jsonl: row 3 has no 'label' (the first row without it)" in line


def test_an_eval_label_never_seen_in_training(labelled_set, tmp_path):
    rows = [*labelled_set["eval_rows"][:3], {"text": "The tree grows.", "label": "plant"}]
    line = finetune_error(labelled_set, eval=str(write_jsonl(tmp_path / "eval.jsonl", rows)))
    assert (
        "eval.jsonl: row 4 has the label 'plant', which no training row has (training labels: animal, person)"
        in line
    )


def test_a_regression_label_that_is_not_a_number(labelled_set, tmp_path):
    rows = [{"text": "One.", "label": 0.5}, {"text": "Two.", "label": "high"}]
    train = str(write_jsonl(tmp_path / "train.jsonl", rows))
    line = finetune_error(labelled_set, "--task", "regression", train=train)
    assert "train.jsonl: row 2 has the label 'high', which is not a number" in line


def test_an_empty_split(labelled_set, tmp_path):
    empty = tmp_path / "eval.csv"
    empty.write_text("text,label\n")
    line = finetune_error(labelled_set, eval=str(empty))
    assert f"{empty} holds no rows: the eval set must not be empty" in line


def test_workers_that_do_not_divide_the_batch(labelled_set):
    line = finetune_error(labelled_set, "--batch-size", "15", "--num-workers", "2")
    assert "2 workers do not divide --batch-size=15" in line


def test_a_negative_worker_count(labelled_set):
    line = finetune_error(labelled_set, "--num-workers", "-1")
    assert "--num-workers must be >= 0 (0: in this process), got -1" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only where torch sees no GPU")
def test_a_gpu_in_process_where_there_is_none(labelled_set):
    line = finetune_error(labelled_set, "--num-workers", "0", "--gpu")
    assert "--gpu with --num-workers 0: torch sees no CUDA GPU in this process" in line


def test_a_negative_first_seed(labelled_set):
    line = finetune_error(labelled_set, "--first-seed", "-1")
    assert "--first-seed must be >= 0, got -1" in line


def test_a_missing_model_folder(labelled_set, tmp_path):
    argv_model = str(tmp_path / "nothing")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(
            ["finetune", argv_model, "--train", "a.csv", "--eval", "b.csv", "--out", "o", "--no-mlflow"]
        )
    assert code == 2
    assert f"model folder {argv_model} does not exist" in stderr.getvalue()


@pytest.fixture
def tokenizer(labelled_set):
    tokenizer = load_tokenizer(f"{labelled_set['model']}/tokenizer.json")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def test_long_texts_are_cut_and_counted(labelled_set, tokenizer):
    data = load_labelled_data(
        labelled_set["train"], labelled_set["eval"], Fields(), "classification", tokenizer, 8
    )
    full_lengths = [len(tokenizer.encode(row["text"]).ids) for row in labelled_set["train_rows"]]
    assert data.train.truncated == sum(length > 8 for length in full_lengths) > 0
    assert data.train.lengths.max() == 8
    assert data.label_names == ["animal", "person"]
    expected = [data.label_names.index(row["label"]) for row in labelled_set["train_rows"]]
    assert data.train.labels.tolist() == expected


def test_pairs_get_their_segment_ids(tokenizer, tmp_path):
    rows = [{"a": "The cat sees", "b": "a red car.", "y": 1}, {"a": "A dog", "b": "finds the moon.", "y": 0}]
    path = str(write_csv(tmp_path / "pairs.csv", rows))
    data = load_labelled_data(path, path, Fields("a", "b", "y"), "classification", tokenizer, 64)
    batch = data.train.batch(np.array([0, 1]), pad_token_id=0)
    for row, (a, b) in enumerate([("The cat sees", "a red car."), ("A dog", "finds the moon.")]):
        expected = tokenizer.encode(a, b)
        length = len(expected.ids)
        assert batch["input_ids"][row, :length].tolist() == expected.ids
        assert batch["token_type_ids"][row, :length].tolist() == expected.type_ids
        assert batch["attention_mask"][row].sum() == length
    assert 1 in batch["token_type_ids"][0].tolist()
    assert data.label_names == ["0", "1"]  # integer labels, in numeric order
    assert data.train.labels.tolist() == [1, 0]


def test_integer_labels_sort_as_numbers(tokenizer, tmp_path):
    rows = [{"text": f"Text {i}.", "label": label} for i, label in enumerate([10, 2, 2, 10, 33])]
    path = str(write_jsonl(tmp_path / "rows.jsonl", rows))
    data = load_labelled_data(path, path, Fields(), "classification", tokenizer, 16)
    assert data.label_names == ["2", "10", "33"]
    assert data.train.labels.tolist() == [1, 0, 0, 1, 2]


def test_parquet_and_a_saved_hf_dataset_read_alike(tmp_path):
    import datasets

    rows = {"sentence": ["One.", "Two.", "Three."], "score": [0.5, 1.5, 2.5]}
    pq.write_table(pa.table(rows), tmp_path / "rows.parquet")
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "hf"))
    fields = Fields(text="sentence", label="score")
    from_parquet = read_labelled(str(tmp_path / "rows.parquet"), fields)
    from_hf = read_labelled(str(tmp_path / "hf"), fields, "eval")
    assert from_parquet.texts == from_hf.texts == rows["sentence"]
    assert from_parquet.labels.to_pylist() == from_hf.labels.to_pylist() == rows["score"]


def test_regression_labels_as_numbers(tokenizer, tmp_path):
    rows = [{"text": "One.", "label": "0.25"}, {"text": "Two.", "label": 3}]
    path = str(write_jsonl(tmp_path / "rows.jsonl", rows))
    data = load_labelled_data(path, path, Fields(), "regression", tokenizer, 16)
    assert data.label_names is None and data.num_labels == 1
    assert data.train.labels.tolist() == [0.25, 3.0]


def test_classification_scores_by_their_definitions():
    labels = np.array([0, 0, 1, 1, 1, 0])
    predictions = np.array([0, 1, 1, 1, 0, 0])
    scores = classification_scores(predictions, labels)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    # class 0: tp 2, fp 1, fn 1 -> F1 2/3; class 1 the same
    assert scores["f1_macro"] == pytest.approx(2 / 3)
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert scores["matthews"] == pytest.approx(expected)
    three = classification_scores(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert "matthews" not in three
    assert three["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_regression_scores_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=50).astype(float)  # ties, as STS-B's scores have
    predictions = labels + rng.normal(size=50)
    predictions[:5] = predictions[0]
    scores = regression_scores(predictions, labels)
    assert scores["pearson"] == pytest.approx(stats.pearsonr(predictions, labels)[0])
    assert scores["spearman"] == pytest.approx(stats.spearmanr(predictions, labels)[0])


def test_seed_summary_is_median_and_spread():
    medians, spread = summarize_seeds([{"accuracy": 0.8}, {"accuracy": 0.9}, {"accuracy": 0.7}])
    assert medians == {"accuracy": 0.8}
    assert spread["accuracy"]["min"] == 0.7 and spread["accuracy"]["max"] == 0.9
    assert spread["accuracy"]["std"] == pytest.approx(np.std([0.8, 0.9, 0.7]))


def test_help_lists_the_issue_flags():
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit):
        main(["finetune", "--help"])
    for flag in (
        "--train",
        "--eval",
        "--out",
        "--text-field",
        "--pair-field",
        "--label-field",
        "--task",
        "--epochs",
        "--lr",
        "--batch-size",
        "--max-seq-length",
        "--seeds",
        "--first-seed",
        "--num-workers",
        "--gpu",
        "--json",
    ):
        assert flag in stdout.getvalue()


def test_json_is_the_scores_then_seeds(tmp_path):
    from orchestrator.finetune.driver import FinetuneResult

    result = FinetuneResult(
        scores={"pearson": 0.5, "spearman": 0.4},
        per_seed=[{"seed": 0, "epoch": 1, "pearson": 0.5, "spearman": 0.4}],
        spread={},
        best_seed=0,
        final_dir=str(tmp_path),
        task="regression",
        label_names=None,
        predictions=[],
        truncated={},
    )
    assert json.loads(json.dumps(result.to_json())) == {"pearson": 0.5, "spearman": 0.4}
    assert Path(result.final_dir).exists()


def test_sets_in_a_bucket_read_as_local_ones(labelled_set, tokenizer, bucket, tmp_path):
    import datasets

    from common import storage

    for name in ("train.csv", "eval.jsonl"):
        storage.write_text(f"{bucket}/{name}", Path(labelled_set[name.split(".")[0]]).read_text())
    rows = {"text": ["One.", "Two."], "label": ["a", "b"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "hf"))
    storage.copy_dir(str(tmp_path / "hf"), f"{bucket}/hf")

    local = load_labelled_data(
        labelled_set["train"], labelled_set["eval"], Fields(), "classification", tokenizer, 32
    )
    remote = load_labelled_data(
        f"{bucket}/train.csv", f"{bucket}/eval.jsonl", Fields(), "classification", tokenizer, 32
    )
    for split in ("train", "eval"):
        assert np.array_equal(getattr(local, split).ids, getattr(remote, split).ids)
        assert np.array_equal(getattr(local, split).labels, getattr(remote, split).labels)
    assert read_labelled(f"{bucket}/hf", Fields()).texts == rows["text"]


def test_a_worker_runs_as_many_threads_as_it_has_cpus():
    from orchestrator.finetune.driver import _scaling
    from orchestrator.finetune.run import FinetuneSettings

    def threads(**flags) -> int:
        return _scaling(FinetuneSettings(model="m", train="t", eval="e", out="o", **flags)).threads_per_worker

    assert threads() == 1
    assert threads(num_workers=2, cpus_per_worker=4) == 4
    assert threads(cpus_per_worker=0.5) == 1
    assert threads(num_workers=0) == torch.get_num_threads()
