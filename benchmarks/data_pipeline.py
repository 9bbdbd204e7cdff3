"""Benchmark of the corpus pipeline against a named peer, on this project's own code.

1. Masking, per CPU: masked examples per second of our stream as the trainer reads it (`build_train_dataset`,
   cut by `ExactBatches` and padded by `make_collate_fn`, Ray limited to one CPU), and of our masking alone
   (`mask_tokens` + padding), against `transformers.DataCollatorForLanguageModeling` (MLM, same prepared
   examples, same batch size).
2. `prepare` throughput in MB/s of corpus on a Ray of 1 and of 2 CPUs.

Usage: .venv/bin/python benchmarks/data_pipeline.py [--documents 20000] [--batch-size 256]
Timings on a shared machine are noisy; the ratios are the figures to read.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.data
from tests.data.conftest import make_documents, write_bert_corpus  # noqa: E402 (the data tests' corpus)


def time_prepare(corpus: str, tokenizer_dir: str, num_cpus: int, work_dir: str) -> float:
    """MB/s of `prepare` in a fresh process whose Ray has `num_cpus` CPUs (worker start-up included)."""
    script = (
        "import ray, sys; from data import prepare, PrepareConfig; "
        f"ray.init(num_cpus={num_cpus}, include_dashboard=False, logging_level='ERROR'); "
        "from ray.data import DataContext; DataContext.get_current().enable_progress_bars = False; "
        f"m = prepare([{corpus!r}], {tokenizer_dir!r}, {os.path.join(work_dir, f'cpu{num_cpus}')!r}, "
        "PrepareConfig(max_seq_length=128)); print('ELAPSED', m.elapsed_seconds)"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    elapsed = float(output.split("ELAPSED")[-1])
    return os.path.getsize(corpus) / 1e6 / elapsed


def time_stream(prepared_dir: str, batch_size: int, repeats: int) -> tuple[float, float, float]:
    """The stream as a trainer reads it (Ray Data read + mask, cut into exact batches, padded to torch), on
    this process's one-CPU Ray, one dataset per epoch: (examples/s over whole epochs, steady examples/s after
    each epoch's first batch, seconds to an epoch's first batch)."""
    from data import ExactBatches, build_train_dataset, load_manifest, make_collate_fn

    manifest = load_manifest(prepared_dir)
    collate = make_collate_fn(None, manifest.settings.max_seq_length)
    batches = manifest.counts["examples"]["train"] // batch_size
    whole = steady = first = 0.0
    for epoch in range(repeats):
        started = time.perf_counter()
        dataset = build_train_dataset(prepared_dir, epoch=epoch)
        rows = ExactBatches(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
        collate.collate_table(rows.take(batch_size))
        first_batch = time.perf_counter()
        for _ in range(batches - 1):
            collate.collate_table(rows.take(batch_size))
        rows.close()
        ended = time.perf_counter()
        whole, steady, first = (
            whole + ended - started,
            steady + ended - first_batch,
            first + first_batch - started,
        )
    examples = batches * batch_size * repeats
    return examples / whole, (batches - 1) * batch_size * repeats / steady, first / repeats


def load_examples(prepared_dir: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data import load_manifest

    manifest = load_manifest(prepared_dir)
    table = pa.concat_tables([pq.read_table(os.path.join(prepared_dir, p)) for p in manifest.shards["train"]])
    return {name: table.column(name).to_pylist() for name in ("example_id", "input_ids")}


def time_our_masking(prepared_dir: str, examples: dict, batch_size: int, repeats: int) -> float:
    """Examples/s of `mask_batch` (the UDF the stream runs) + padding to torch, batch by batch, here."""
    import pyarrow as pa

    from data import MaskingConfig, load_tokenizer, make_collate_fn
    from data.masking import MaskingVocab
    from data.stream import mask_batch

    vocab = MaskingVocab.from_tokenizer(load_tokenizer(os.path.join(prepared_dir, "tokenizer")))
    collate = make_collate_fn(None, 128)
    n = len(examples["example_id"])
    tables = [
        pa.table(
            {
                "example_id": pa.array(examples["example_id"][s : s + batch_size], pa.int64()),
                "input_ids": pa.array(examples["input_ids"][s : s + batch_size], pa.list_(pa.int32())),
                "token_type_ids": pa.array(
                    [[0] * len(ids) for ids in examples["input_ids"][s : s + batch_size]], pa.list_(pa.int8())
                ),
                "next_sentence_label": pa.array(
                    [0] * len(examples["example_id"][s : s + batch_size]), pa.int8()
                ),
            }
        )
        for s in range(0, n, batch_size)
    ]
    config = MaskingConfig()
    started = time.perf_counter()
    for epoch in range(repeats):
        for table in tables:
            collate.collate_table(mask_batch(table, 0, epoch, config, vocab))
    return n * repeats / (time.perf_counter() - started)


def time_hf_collator(prepared_dir: str, examples: dict, batch_size: int, repeats: int) -> float:
    """Examples/s of transformers.DataCollatorForLanguageModeling on the same examples and batch size."""
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

    tokenizer = BertTokenizerFast.from_pretrained(os.path.join(prepared_dir, "tokenizer"))
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm=True, mlm_probability=0.15, pad_to_multiple_of=8
    )
    features = [{"input_ids": ids} for ids in examples["input_ids"]]
    started = time.perf_counter()
    for _ in range(repeats):
        for s in range(0, len(features), batch_size):
            collator(features[s : s + batch_size])
    return len(features) * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--documents", type=int, default=20000, help="documents in the generated corpus")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="epochs over the examples per measurement")
    args = parser.parse_args()

    import ray
    import torch

    torch.set_num_threads(1)  # per CPU: the collator's torch ops on one thread, like our NumPy
    from data import PrepareConfig, TokenizerConfig, prepare, train_tokenizer

    with tempfile.TemporaryDirectory() as work:
        corpus = write_bert_corpus(Path(work) / "corpus.txt", make_documents(args.documents))
        tokenizer_dir = train_tokenizer([corpus], os.path.join(work, "tok"), TokenizerConfig(vocab_size=2000))
        size_mb = os.path.getsize(corpus) / 1e6
        prepare_rates = {cpus: time_prepare(corpus, tokenizer_dir, cpus, work) for cpus in (1, 2)}

        ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        prepared = os.path.join(work, "prepared")
        prepare([corpus], tokenizer_dir, prepared, PrepareConfig(max_seq_length=128))
        examples = load_examples(prepared)
        hf = time_hf_collator(prepared, examples, args.batch_size, args.repeats)
        ours = time_our_masking(prepared, examples, args.batch_size, args.repeats)
        stream, steady, first_batch_s = time_stream(prepared, args.batch_size, args.repeats)

    print(
        f"corpus: {size_mb:.1f} MB, {len(examples['example_id']):,} examples of up to 128 tokens, "
        f"batch size {args.batch_size}"
    )
    print(f"masking, transformers DataCollatorForLanguageModeling (1 thread): {hf:,.0f} examples/s")
    print(
        f"masking, ours (mask_batch + collate, 1 thread):                   {ours:,.0f} examples/s "
        f"= {ours / hf:.2f}x the collator"
    )
    print(
        f"stream, ours (Ray Data on 1 CPU: read + mask, cut + pad), whole epochs: {stream:,.0f} examples/s "
        f"= {stream / hf:.2f}x the collator"
    )
    print(
        f"stream, ours, after each epoch's first batch ({first_batch_s:.2f} s): {steady:,.0f} examples/s "
        f"= {steady / hf:.2f}x the collator"
    )
    print(
        f"prepare: {prepare_rates[1]:.2f} MB/s on 1 CPU, {prepare_rates[2]:.2f} MB/s on 2 CPUs "
        f"= {prepare_rates[2] / prepare_rates[1]:.2f}x"
    )


if __name__ == "__main__":
    main()
