"""Benchmark of the corpus pipeline against HF `datasets` and transformers, on real text this machine has.

1. `prepare`, whole commands as a user waits for them, start-up included on both sides, each in a fresh
   process: ours is `bert-pretrain prepare` (interpreter, imports, a local Ray's start, the build, shutdown);
   the peer is a script set up as HF's `run_mlm.py` does it (imports, `load_dataset("text",
   sample_by="paragraph")`, `map(tokenize, batched=True, num_proc=N)` with `return_special_tokens_mask=True`,
   `map(group_texts, batched=True, num_proc=N)` to 128 tokens, `save_to_disk(num_proc=N)`), N the machine's
   CPUs, as many as our Ray gets. Printed per side: the whole command's seconds (from launch to exit), the
   steady state (the same run less its start-up: ours from the local Ray being up, as the manifest's
   `elapsed_seconds`; the peer's from its imports being done), and the peak resident memory of the whole
   process tree (Ray's processes and `datasets`' workers included), sampled the same way for both. Rounds
   alternate which side goes first; medians with the spread (min-max) over the rounds. Corpora: documentation
   files under 64 KiB from /usr/share/doc, /usr/share/common-licenses and the installed Python packages
   (repeated from the start to reach the larger size, as real corpora repeat), at two sizes.
2. Masking, per CPU: our `mask_batch` + padding against `transformers.DataCollatorForLanguageModeling` on the
   same rows, each given what its own pipeline hands it: Arrow tables for ours, dicts with
   `special_tokens_mask` (as `run_mlm.py`'s tokenization leaves them) for the collator; after a warm-up, in
   alternating rounds, the median with the spread.

Usage: .venv/bin/python benchmarks/data_pipeline.py [--sizes 12 94] [--rounds 3] [--lock /tmp/machine.lock]
With --lock, each round (one command of each side) holds that file's exclusive lock (flock), and no longer.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("/usr/share/doc", "/usr/share/common-licenses", sysconfig.get_paths()["purelib"])
DOC_SUFFIXES = {"", ".txt", ".md", ".rst", ".gz"}
SEQUENCE = 128
RSS_INTERVAL_S = 0.2

PEER = """
import glob, json, os, sys, time
from itertools import chain
import datasets
from transformers import BertTokenizerFast
datasets.disable_progress_bars()
imported = time.time()
corpus, tokenizer_dir, out, cache = sys.argv[1:5]
num_proc, size = int(sys.argv[5]), int(sys.argv[6])
tokenizer = BertTokenizerFast.from_pretrained(tokenizer_dir)
files = sorted(p for p in glob.glob(corpus + "/**", recursive=True) if os.path.isfile(p))
raw = datasets.load_dataset(
    "text", data_files=files, sample_by="paragraph", encoding_errors="replace", cache_dir=cache
)["train"]
def tokenize(batch):
    return tokenizer(batch["text"], return_special_tokens_mask=True)
def group_texts(batch):
    joined = {k: list(chain(*batch[k])) for k in batch}
    total = len(joined["input_ids"]) // size * size
    return {k: [v[i : i + size] for i in range(0, total, size)] for k, v in joined.items()}
tokens = raw.map(tokenize, batched=True, num_proc=num_proc, remove_columns=["text"])
grouped = tokens.map(group_texts, batched=True, num_proc=num_proc)
grouped.save_to_disk(out, num_proc=num_proc)
print("RESULT", json.dumps({"steady_s": time.time() - imported, "examples": len(grouped)}))
"""


def collect_corpora(work: Path, sizes_mb: list[int]) -> dict[int, Path]:
    """Folders of real documentation files (each under 64 KiB) from this machine, one per size in MB."""
    texts = work / "texts"
    if not texts.exists():
        for source in SOURCES:
            for path in sorted(Path(source).rglob("*")):
                if path.is_file() and path.suffix in DOC_SUFFIXES and not path.name.startswith("."):
                    _copy_text(path, texts / _flat_name(path))
    small = sorted(p for p in texts.iterdir() if p.stat().st_size < 64 << 10)
    return {size: _take(small, size << 20, work / f"small{size}") for size in sizes_mb}


def _flat_name(path: Path) -> str:
    return str(path).strip("/").replace("/", "__").removesuffix(".gz")


def _copy_text(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        raw = gzip.decompress(source.read_bytes()) if source.suffix == ".gz" else source.read_bytes()
    except OSError:  # not gzip after all, or unreadable
        return
    if raw.strip() and b"\0" not in raw[:8192]:
        target.write_bytes(raw)


def _take(files: list[Path], total: int, folder: Path) -> Path:
    """`total` bytes of `files` in order, again from the start (as a copy/ folder) when they run out."""
    if folder.exists():
        return folder
    taken, copy = 0, 0
    while taken < total:
        for path in files:
            if taken >= total:
                break
            target = folder / (f"copy{copy}" if copy else "") / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            taken += path.stat().st_size
        copy += 1
    return folder


@contextlib.contextmanager
def exclusive(lock: str | None) -> Iterator[None]:
    """The machine's lock held exclusively (a quiet machine) for one measurement, when one is named."""
    if not lock:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_command(command: list[str]) -> tuple[float, float, str]:
    """(seconds from launch to exit, peak GB resident in the whole process tree, stdout) of `command`.
    The tree's resident memory is summed every RSS_INTERVAL_S (shared pages count in each process, alike on
    both sides)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(root))
        time.sleep(RSS_INTERVAL_S)
    stdout = process.stdout.read()
    seconds = time.perf_counter() - began
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{stdout[-2000:]}")
    return seconds, peak / 2**30, stdout


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
    return total


def ours(corpus: Path, tokenizer_dir: str, out: Path, objective: str) -> dict:
    command = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "prepare",
        "--corpus",
        str(corpus),
        "--tokenizer",
        tokenizer_dir,
        "--out",
        str(out),
        "--format",
        "text",
        "--max-seq-length",
        str(SEQUENCE),
        "--objective",
        objective,
    ]
    seconds, rss_gb, _ = run_command(command)
    manifest = json.loads((out / "manifest.json").read_text())
    examples = sum(manifest["counts"]["examples"].values())
    return {
        "whole_s": seconds,
        "steady_s": manifest["elapsed_seconds"],
        "rss_gb": rss_gb,
        "examples": examples,
    }


def peer(corpus: Path, tokenizer_dir: str, out: Path) -> dict:
    command = [
        sys.executable,
        "-c",
        PEER,
        str(corpus),
        tokenizer_dir,
        str(out / "hf"),
        str(out / "cache"),
        str(os.cpu_count()),
        str(SEQUENCE),
    ]
    seconds, rss_gb, stdout = run_command(command)
    result = json.loads(stdout.split("RESULT", 1)[1])
    return {
        "whole_s": seconds,
        "steady_s": result["steady_s"],
        "rss_gb": rss_gb,
        "examples": result["examples"],
    }


def prepare_table(
    corpora: dict[int, Path],
    tokenizer_dir: str,
    objectives: list[str],
    rounds: int,
    work: Path,
    lock: str | None,
) -> None:
    sides: dict[str, Callable[[Path, Path], dict]] = {
        "HF datasets": lambda corpus, out: peer(corpus, tokenizer_dir, out)
    }
    for objective in objectives:
        sides[f"ours {objective}"] = lambda corpus, out, objective=objective: ours(
            corpus, tokenizer_dir, out, objective
        )
    print(
        f"prepare, {os.cpu_count()} CPUs (the peer's num_proc, our Ray's CPUs), seq {SEQUENCE}; "
        f"median (min-max) of {rounds} rounds, the order alternating\n"
    )
    print(
        "| corpus | side | whole command s | MB/s | steady state s | MB/s | peak RSS GB (tree) | examples | "
        "speed vs HF, whole / steady |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for corpus in corpora.values():
        megabytes = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file()) / 1e6
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        for round_ in range(rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            with exclusive(lock):
                for name in order:
                    out = Path(tempfile.mkdtemp(dir=work))
                    result = sides[name](corpus, out / "prepared")
                    runs[name].append(result)
                    shutil.rmtree(out)
                    print(
                        f"  round {round_ + 1}, {name}: whole {result['whole_s']:.2f} s, steady "
                        f"{result['steady_s']:.2f} s, peak RSS {result['rss_gb']:.2f} GB",
                        file=sys.stderr,
                        flush=True,
                    )
        peer_median = {
            key: statistics.median(r[key] for r in runs["HF datasets"]) for key in ("whole_s", "steady_s")
        }
        for name, results in runs.items():
            cells = {key: _spread([r[key] for r in results]) for key in ("whole_s", "steady_s", "rss_gb")}
            median = {key: statistics.median(r[key] for r in results) for key in ("whole_s", "steady_s")}
            speed = (
                ""
                if name == "HF datasets"
                else (
                    f"{peer_median['whole_s'] / median['whole_s']:.2f}x / "
                    f"{peer_median['steady_s'] / median['steady_s']:.2f}x"
                )
            )
            print(
                f"| {megabytes:.1f} MB | {name} | {cells['whole_s']} | {megabytes / median['whole_s']:.2f} | "
                f"{cells['steady_s']} | {megabytes / median['steady_s']:.2f} | {cells['rss_gb']} | "
                f"{results[0]['examples']:,} | {speed} |",
                flush=True,
            )


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def masking_comparison(tokenizer_dir: str, corpus: Path, work: Path, batch_size: int, rounds: int) -> None:
    """Ours and the collator on the same rows, each as its own pipeline hands them over; rounds alternate."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

    from data import MaskingConfig, PrepareConfig, load_manifest, load_tokenizer, make_collate_fn, prepare
    from data.masking import MaskingVocab
    from data.stream import mask_batch

    torch.set_num_threads(1)
    prepared = str(work / "masking")
    prepare([str(corpus)], tokenizer_dir, prepared, PrepareConfig(max_seq_length=SEQUENCE))
    manifest = load_manifest(prepared)
    table = pa.concat_tables([pq.read_table(os.path.join(prepared, p)) for p in manifest.shards["train"]])
    tables = [table.slice(start, batch_size) for start in range(0, table.num_rows, batch_size)]
    hf_tokenizer = BertTokenizerFast.from_pretrained(os.path.join(prepared, "tokenizer"))
    special = np.array(hf_tokenizer.all_special_ids)
    peer_rows = [
        [
            {
                "input_ids": ids,
                "token_type_ids": types,
                "special_tokens_mask": np.isin(ids, special).astype(int).tolist(),
            }
            for ids, types in zip(
                batch["input_ids"].to_pylist(), batch["token_type_ids"].to_pylist(), strict=True
            )
        ]
        for batch in tables
    ]
    vocab = MaskingVocab.from_tokenizer(load_tokenizer(os.path.join(prepared, "tokenizer")))
    collate, config = make_collate_fn(None, SEQUENCE), MaskingConfig()
    collator = DataCollatorForLanguageModeling(hf_tokenizer, mlm_probability=0.15, pad_to_multiple_of=8)

    def ours_masking(epoch: int) -> None:
        for batch in tables:
            collate.collate_table(mask_batch(batch, 0, epoch, config, vocab))

    def peer_masking(epoch: int) -> None:
        for rows in peer_rows:
            collator(rows)

    timings: dict[str, list[float]] = {"ours": [], "peer": []}
    for round_ in range(rounds + 1):  # round 0 warms both up
        sides = [("ours", ours_masking), ("peer", peer_masking)]
        for name, function in sides if round_ % 2 else reversed(sides):
            started = time.perf_counter()
            function(round_)
            if round_:
                timings[name].append(time.perf_counter() - started)
    rates = {name: [table.num_rows / seconds for seconds in times] for name, times in timings.items()}
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"\nmasking {table.num_rows:,} examples of up to {SEQUENCE} tokens, batch {batch_size}, 1 thread, "
        f"median (min-max) of {rounds} alternating rounds: transformers DataCollatorForLanguageModeling "
        f"(rows with special_tokens_mask) {median['peer']:,.0f}/s ({min(rates['peer']):,.0f}-"
        f"{max(rates['peer']):,.0f}), "
        f"ours (mask_batch + collate) {median['ours']:,.0f}/s ({min(rates['ours']):,.0f}-"
        f"{max(rates['ours']):,.0f}) = {median['ours'] / median['peer']:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 94], help="corpus sizes in MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--objectives",
        nargs="+",
        default=["mlm+nsp", "mlm"],
        help="our objectives to run (the peer's is mlm)",
    )
    parser.add_argument("--work", default=None, help="a folder to keep the corpora in between runs")
    parser.add_argument(
        "--lock", default=None, help="a file to hold exclusively (flock) during each measurement"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--masking-rounds", type=int, default=5)
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--skip-masking", action="store_true")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bert-pretrain-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpora = collect_corpora(work, args.sizes)
    tokenizer_dir = str(work / "tokenizer")
    if not os.path.exists(tokenizer_dir):
        from data import TokenizerConfig, train_tokenizer

        train_tokenizer([str(corpora[args.sizes[0]])], tokenizer_dir, TokenizerConfig())
    if not args.skip_prepare:
        prepare_table(corpora, tokenizer_dir, args.objectives, args.rounds, work, args.lock)
    if not args.skip_masking:
        with exclusive(args.lock):
            masking_comparison(
                tokenizer_dir, corpora[args.sizes[0]], work, args.batch_size, args.masking_rounds
            )
    if not args.work:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
