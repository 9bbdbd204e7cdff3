"""Benchmark of the corpus pipeline against a named peer, on this project's own code.

1. Masking, per CPU: masked examples per second of our stream (`build_train_dataset` + `make_collate_fn`
   through `iter_torch_batches`, Ray limited to one CPU), and of our masking alone (`mask_tokens` + padding),
   against `transformers.DataCollatorForLanguageModeling` (MLM, same prepared examples, same batch size).
2. `prepare` throughput in MB/s of corpus on a Ray of 1 and of 2 CPUs.

Usage: .venv/bin/python benchmarks/data_pipeline.py [--documents 4000] [--batch-size 256]
Timings on a shared machine are noisy; the ratios are the figures to read.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "it",
    "at",
    "from",
    "his",
    "an",
    "were",
    "are",
    "which",
    "be",
    "this",
    "has",
    "also",
    "or",
    "had",
    "their",
    "not",
    "he",
    "but",
    "its",
    "first",
    "new",
    "one",
    "all",
    "after",
    "been",
    "who",
    "more",
    "two",
    "they",
    "other",
    "into",
    "can",
    "her",
    "during",
    "over",
    "she",
    "time",
    "only",
    "year",
    "some",
    "most",
    "between",
    "when",
    "where",
    "used",
    "would",
    "there",
    "later",
    "river",
    "mountain",
    "station",
    "language",
]


def write_corpus(path: str, num_documents: int, seed: int = 0) -> None:
    """A BERT-format corpus of random sentences (3..14 a document)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as file:
        for d in range(num_documents):
            for s in range(rng.randint(3, 14)):
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 30)))
                file.write(f"Document {d} sentence {s}: {words}.\n")
            file.write("\n")


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


def time_stream(prepared_dir: str, batch_size: int, repeats: int) -> float:
    """Examples/s of the Ray Data stream with collate, on this process's one-CPU Ray."""
    from data import build_train_dataset, load_manifest, make_collate_fn

    manifest = load_manifest(prepared_dir)
    collate = make_collate_fn(None, manifest.settings.max_seq_length)
    count = 0
    started = time.perf_counter()
    for epoch in range(repeats):
        dataset = build_train_dataset(prepared_dir, epoch=epoch)
        for batch in dataset.iter_torch_batches(batch_size=batch_size, collate_fn=collate):
            count += len(batch["next_sentence_label"])
    return count / (time.perf_counter() - started)


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
            masked = mask_batch(table, 0, epoch, config, vocab)
            collate(
                {name: masked.column(name).to_numpy(zero_copy_only=False) for name in masked.column_names}
            )
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
    parser.add_argument("--documents", type=int, default=4000, help="documents in the generated corpus")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="epochs over the examples per measurement")
    args = parser.parse_args()

    import ray
    import torch

    torch.set_num_threads(1)  # per CPU: the collator's torch ops on one thread, like our NumPy
    from data import PrepareConfig, TokenizerConfig, prepare, train_tokenizer

    with tempfile.TemporaryDirectory() as work:
        corpus = os.path.join(work, "corpus.txt")
        write_corpus(corpus, args.documents)
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
        stream = time_stream(prepared, args.batch_size, args.repeats)

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
        f"stream, ours (Ray Data on 1 CPU: read + mask + iter_torch_batches): {stream:,.0f} examples/s "
        f"= {stream / hf:.2f}x the collator"
    )
    print(
        f"prepare: {prepare_rates[1]:.2f} MB/s on 1 CPU, {prepare_rates[2]:.2f} MB/s on 2 CPUs "
        f"= {prepare_rates[2] / prepare_rates[1]:.2f}x"
    )


if __name__ == "__main__":
    main()
