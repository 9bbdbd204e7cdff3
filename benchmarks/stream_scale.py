"""Stream scaling: examples/s delivered to 1, 4 and 16 consumers that only read, on a 4-node
`ray.cluster_utils.Cluster`; ours against Ray's `streaming_split`.

- ours: each consumer executes its own Ray Data stream of its slice of every global batch
  (`data.rank_train_stream`, what a training rank does), and cuts its share of each batch with `ExactBatches`.
- Ray's: one dataset of the masked epoch (`data.build_train_dataset`, the same reading and masking UDF code)
  split with `streaming_split(n, equal=True)`, what Ray Train's default DataConfig does: one SplitCoordinator
  actor runs the execution and hands every consumer its blocks; each consumer reads batches of its share
  with `iter_batches`.

Consumers are actors spread over the nodes. Each reads `--steps` global batches of `--batch` examples (its
share of each), timing every wait for a batch. Printed per case: examples/s per consumer (median over the
consumers), examples/s in total (all rows over the wall time of the slowest consumer), and the waits for a
batch (median, p95, the longest: the first batch included). Each case is timed alike, from the prepared
directory (ours reads its `load_split` inside the timer, as Ray's side builds its dataset there) to the last
batch; `--rounds` rounds alternate which side goes first, and the medians are printed with the totals'
spread (min-max). All nodes share this machine's cores: the totals are bounded by them, and the ratios and
the waits are the figures to read.

    .venv/bin/python benchmarks/stream_scale.py [--documents 12000] [--batch 256] [--steps 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.data
from data import (  # noqa: E402
    EpochOrder,
    ExactBatches,
    MaskingConfig,
    PrepareConfig,
    TokenizerConfig,
    batch_slices,
    build_train_dataset,
    load_split,
    prepare,
    rank_train_stream,
    train_tokenizer,
)
from data.stream import mask_batch, read_examples  # noqa: E402
from tests.data.conftest import make_documents, write_bert_corpus  # noqa: E402 (the data tests' corpus)

CONSUMERS = (1, 4, 16)


@ray.remote(num_cpus=0)
class Consumer:
    """Reads its share of `steps` global batches and times each wait."""

    def ours(self, split, order, rank: int, world_size: int, steps: int) -> dict:
        start, stop = batch_slices(order.global_batch_size, world_size)[rank]
        began = time.perf_counter()
        stream = rank_train_stream(split, order, MaskingConfig(), rank, world_size, 0, 0, steps)
        rows = ExactBatches(stream.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2))
        waits = []
        for _ in range(steps):
            asked = time.perf_counter()
            rows.take(stop - start)
            waits.append(time.perf_counter() - asked)
        rows.close()
        return {"rows": steps * (stop - start), "seconds": time.perf_counter() - began, "waits": waits}

    def rays(self, shard, share: int, steps: int) -> dict:
        began = time.perf_counter()
        batches = iter(shard.iter_batches(batch_size=share, batch_format="pyarrow", prefetch_batches=2))
        waits = []
        for _ in range(steps):
            asked = time.perf_counter()
            next(batches)
            waits.append(time.perf_counter() - asked)
        return {"rows": steps * share, "seconds": time.perf_counter() - began, "waits": waits}


def run_case(kind: str, consumers: int, prepared: str, order, steps: int) -> dict:
    """One case, timed from the prepared directory (read by each side inside the timer) to the last batch."""
    actors = [Consumer.options(scheduling_strategy="SPREAD").remote() for _ in range(consumers)]
    ray.get([actor.__ray_ready__.remote() for actor in actors])
    began = time.perf_counter()
    if kind == "ours":
        split = load_split(prepared)
        calls = [a.ours.remote(split, order, rank, consumers, steps) for rank, a in enumerate(actors)]
    else:
        shards = build_train_dataset(prepared, seed=order.seed).streaming_split(consumers, equal=True)
        share = order.global_batch_size // consumers
        calls = [a.rays.remote(shard, share, steps) for a, shard in zip(actors, shards, strict=True)]
    results = ray.get(calls)
    wall = time.perf_counter() - began
    for actor in actors:
        ray.kill(actor)
    waits = np.concatenate([r["waits"] for r in results]) * 1000
    return {
        "per_consumer": statistics.median(r["rows"] / r["seconds"] for r in results),
        "total": sum(r["rows"] for r in results) / wall,
        "wait_ms": (np.median(waits), np.percentile(waits, 95), waits.max()),
    }


def prepare_corpus(work: str, documents: int) -> str:
    """The data tests' generated corpus, prepared at seq 128 in shards of 2,048 examples."""
    corpus = write_bert_corpus(Path(work) / "corpus.txt", make_documents(documents))
    tokenizer_dir = train_tokenizer([corpus], os.path.join(work, "tok"), TokenizerConfig(vocab_size=2000))
    prepared = os.path.join(work, "prepared")
    config = PrepareConfig(max_seq_length=128, examples_per_shard=2048, input_format="bert")
    prepare([corpus], tokenizer_dir, prepared, config)
    return prepared


def disk_and_masking(split) -> tuple[float, float]:
    """(Parquet bytes per prepared example, examples/s `mask_batch` masks on this one thread)."""
    indices = np.arange(split.num_examples)
    rows = read_examples(split, indices)
    began = time.perf_counter()
    for offset in range(0, rows.num_rows, 8192):
        mask_batch(rows.slice(offset, 8192), 0, 0, MaskingConfig(), split.vocab)
    masking = rows.num_rows / (time.perf_counter() - began)
    return sum(os.path.getsize(path) for path in split.shard_paths) / split.num_examples, masking


def rows_read_per_row(split, order, consumers: int, steps: int) -> float:
    """Rows our read tasks decode per row they deliver: a task reads each shard it needs once, whole (the
    prepared shards here are one row group each)."""
    starts = np.cumsum(split.shard_sizes)
    read = 0
    for start, stop in batch_slices(order.global_batch_size, consumers):
        for epoch, first, last in order.units(0, 0, steps):
            shards = np.unique(
                np.searchsorted(starts, order.examples(epoch, first, last, start, stop), "right")
            )
            read += sum(split.shard_sizes[shard] for shard in shards)
    return read / (steps * order.global_batch_size)


def print_case(consumers: int, name: str, cases: list[dict]) -> None:
    """Medians over the rounds, with the spread (min-max) of the totals."""
    totals = [case["total"] for case in cases]
    median, p95, longest = (statistics.median(case["wait_ms"][i] for case in cases) for i in range(3))
    spread = f"{statistics.median(totals):,.0f} ({min(totals):,.0f}-{max(totals):,.0f})"
    print(
        f"{consumers:>9}  {name:<19} {statistics.median(c['per_consumer'] for c in cases):>15,.0f} "
        f"{spread:>23}  {median:>21.1f} / {p95:.1f} / {longest:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--documents", type=int, default=12000, help="documents in the generated corpus")
    parser.add_argument("--batch", type=int, default=256, help="global batch (examples per step)")
    parser.add_argument("--steps", type=int, default=100, help="global batches each case reads")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each case, the order alternating")
    args = parser.parse_args()

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    for _ in range(3):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        with tempfile.TemporaryDirectory() as work:
            prepared = prepare_corpus(work, args.documents)
            split = load_split(prepared)
            order = EpochOrder(split.shard_sizes, args.batch)
            steps = min(args.steps, order.steps_per_epoch)  # Ray's split is one epoch
            bytes_per_example, masking = disk_and_masking(split)
            print(
                f"{split.num_examples:,} examples of up to 128 tokens in {len(split.shard_paths)} shards, "
                f"{bytes_per_example:.0f} bytes each in Parquet; masking alone: {masking:,.0f} examples/s "
                f"on one CPU\nglobal batch {args.batch}, {steps} steps; 4 nodes of 2 CPUs on this "
                f"machine's {os.cpu_count()} cores\n"
            )
            print(
                f"{'consumers':>9}  {'stream':<19} {'examples/s each':>15} {'in total (min-max)':>23}  "
                f"{'wait for a batch, ms: median / p95 / max':>40}"
            )
            for consumers in CONSUMERS:
                cases: dict[str, list[dict]] = {"rays": [], "ours": []}
                for round_ in range(args.rounds):
                    for kind in ("rays", "ours") if round_ % 2 == 0 else ("ours", "rays"):
                        cases[kind].append(run_case(kind, consumers, prepared, order, steps))
                print_case(consumers, "Ray streaming_split", cases["rays"])
                print_case(consumers, "ours, per rank", cases["ours"])
                ratio = statistics.median(c["total"] for c in cases["ours"]) / statistics.median(
                    c["total"] for c in cases["rays"]
                )
                print(
                    f"{'':>9}  ours / Ray's: {ratio:.2f}x in total (medians); ours read "
                    f"{rows_read_per_row(split, order, consumers, steps):.2f} rows per row delivered"
                )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
