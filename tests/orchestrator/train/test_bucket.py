"""A run kept in a bucket, as on a cluster without a shared file system: the corpus, the tokenizer, the
prepared data, the checkpoints, run.json and the final model all live at s3:// URIs (a local S3 server, see
tests/conftest.py), and starting the run again resumes from the bucket's checkpoint."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import transformers

from common import storage
from data import load_manifest
from orchestrator.cli import main
from orchestrator.inference.loading import load_model
from orchestrator.inference.predict import fill_mask
from orchestrator.run_dir import RunDir
from orchestrator.train.checkpoints import load_model_from_checkpoint
from orchestrator.train.driver import train
from tests.orchestrator.conftest import make_job, write_corpus
from tests.orchestrator.reports import ReportRecorder, read_reports


def test_a_run_in_a_bucket_trains_exports_and_resumes_from_there(ray_session, bucket, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", documents=40)
    storage.write_text(f"{bucket}/corpus/part-0.txt", corpus.read_text())
    data = {
        "corpus": [f"{bucket}/corpus/"],
        "tokenizer_dir": f"{bucket}/tokenizer",
        "prepared_dir": f"{bucket}/prepared",
        "tokenizer": {"vocab_size": 200, "min_frequency": 1},
        "prepare": {"max_seq_length": 32},
    }

    def job(max_steps: int):
        return make_job(
            tmp_path,
            data,
            num_workers=1,
            train={"max_steps": max_steps},
            checkpoint={"storage_path": f"{bucket}/runs", "every": 2},
        )

    first = train(job(2))
    run_dir = f"{bucket}/runs/test"
    assert (first.run_dir, first.final_dir) == (run_dir, f"{run_dir}/final")
    assert load_manifest(data["prepared_dir"]).counts["examples"]["train"] > 16
    assert "tokenizer.json" in storage.list_files(data["tokenizer_dir"])

    again = train(job(4), callbacks=[ReportRecorder(tmp_path / "reports.jsonl")])
    assert [r["metrics"][0]["step"] for r in read_reports(tmp_path / "reports.jsonl")] == [3, 4]
    assert again.steps == 4
    files = storage.list_files(run_dir)
    assert {"checkpoint_000000002/model.safetensors", "checkpoint_000000004/model.safetensors"} <= set(files)
    assert RunDir.at(run_dir).read_run_json()["final_dir"] == again.final_dir
    # The final model in the bucket is the last checkpoint's, with its tokenizer.
    with storage.local_input(again.final_dir) as final:
        exported = transformers.BertForPreTraining.from_pretrained(final).eval()
        tokenizer = transformers.BertTokenizerFast.from_pretrained(final)
    with storage.local_input(f"{run_dir}/checkpoint_000000004") as checkpoint:
        trained = load_model_from_checkpoint(Path(checkpoint)).eval()
    batch = tokenizer(["The cat sees the moon.", "A dog likes the river."], padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = exported.bert(**batch).last_hidden_state
        ours, _ = trained.bert(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    torch.testing.assert_close(ours, theirs)
    # The inference commands read a bucket checkpoint and find its tokenizer through the run's config.
    loaded = load_model(f"{run_dir}/checkpoint_000000004")
    assert loaded.tokenizer_dir == data["tokenizer_dir"]
    (predictions,) = fill_mask(loaded, "the cat sees the [MASK].", top_k=3)
    assert len(predictions) == 3


def test_an_unreachable_bucket_is_a_clear_error(s3_server, monkeypatch, capsys):
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{probe.getsockname()[1]}")
    assert main(["data", "inspect", f"{s3_server}/prepared"]) == 2
    error = capsys.readouterr().err
    assert f"{s3_server}/prepared/manifest.json: " in error
    assert "Check the URI, the network and the bucket's credentials" in error
