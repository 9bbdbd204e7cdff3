"""Benchmark of the corpus pipeline against named peers, on real text this machine has.

1. `prepare` against HF `datasets` on the same files: `load_dataset("text", sample_by="paragraph")`, `map`
   with the same tokenizer (BertTokenizerFast), `group_texts` to 128 as HF's run_mlm.py does, `to_parquet`.
   Each run in a fresh process pinned to 1 or 2 CPUs (`taskset`; our Ray gets as many): time of the call,
   MB/s, peak resident memory of the driver (of the one process, for the peer). Two corpora, each at two
   sizes (3x apart, to show linear growth): many small files (documentation files under 64 KiB from
   /usr/share/doc, /usr/share/common-licenses and the installed packages' docs; duplicated to reach the
   larger size, as real corpora are) and long documents (files over 256 KiB: changelogs).
2. Masking, per CPU: our `mask_batch` + padding against `transformers.DataCollatorForLanguageModeling` on the
   same rows (Python lists of ids, converted inside the timer by each), after a warm-up, in alternating
   rounds, the median round.

Usage: flock -x /tmp/machine.lock .venv/bin/python benchmarks/data_pipeline.py [--sizes 17 51] [--kinds small]
Timings on a shared machine are noisy; the ratios are the figures to read.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("/usr/share/doc", "/usr/share/common-licenses", sysconfig.get_paths()["purelib"])
DOC_SUFFIXES = {"", ".txt", ".md", ".rst", ".gz"}

OURS = """
import json, resource, sys, time
import ray
ray.init(num_cpus={cpus}, include_dashboard=False, logging_level="ERROR")
from data import PrepareConfig, prepare
started = time.perf_counter()
config = PrepareConfig(max_seq_length=128, objective={objective!r}, input_format="text")
manifest = prepare([{corpus!r}], {tokenizer!r}, {out!r}, config)
print("RESULT", json.dumps({{"seconds": time.perf_counter() - started,
    "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "fill": manifest.statistics["mean_fill"], "nsp": manifest.statistics.get("nsp_random_share")}}))
"""
PEER = """
import glob, json, os, resource, time
from itertools import chain
import datasets
from transformers import BertTokenizerFast
datasets.disable_progress_bars()
started = time.perf_counter()
tokenizer = BertTokenizerFast.from_pretrained({tokenizer!r})
files = sorted(p for p in glob.glob({corpus!r} + "/**", recursive=True) if os.path.isfile(p))
raw = datasets.load_dataset(
    "text", data_files=files, sample_by="paragraph", encoding_errors="replace", cache_dir={cache!r}
)["train"]
def tokenize(batch):
    return tokenizer(batch["text"], return_special_tokens_mask=True)
def group_texts(batch, size=128):
    joined = {{k: list(chain(*batch[k])) for k in batch}}
    total = len(joined["input_ids"]) // size * size
    return {{k: [v[i : i + size] for i in range(0, total, size)] for k, v in joined.items()}}
tokens = raw.map(tokenize, batched=True, remove_columns=["text"])
tokens.map(group_texts, batched=True).to_parquet({out!r})
print("RESULT", json.dumps({{"seconds": time.perf_counter() - started,
    "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "fill": 1.0, "nsp": None}}))
"""


def collect_corpora(work: Path, sizes_mb: list[int]) -> dict[str, Path]:
    """Folders of real plain-text files from this machine: small documents and long ones, at each size."""
    texts = work / "texts"
    if not texts.exists():
        for source in SOURCES:
            for path in sorted(Path(source).rglob("*")):
                if path.is_file() and path.suffix in DOC_SUFFIXES and not path.name.startswith("."):
                    _copy_text(path, texts / _flat_name(path))
    small = sorted(p for p in texts.iterdir() if p.stat().st_size < 64 << 10)
    long = sorted(p for p in texts.iterdir() if p.stat().st_size >= 256 << 10)
    corpora = {}
    for kind, files in (("small", small), ("long", long)):
        for size in sizes_mb:
            corpora[f"{kind} {size} MB"] = _take(files, size << 20, work / f"{kind}{size}")
    return corpora


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


def run_one(script: str, cpus: int, env_extra: dict | None = None) -> dict:
    """Run `script` in a fresh Python pinned to `cpus` CPUs; its RESULT line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    command = ["taskset", "-c", ",".join(str(c) for c in range(cpus)), sys.executable, "-c", script]
    output = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(output.split("RESULT", 1)[1])


def prepare_table(corpora: dict[str, Path], tokenizer_dir: str, cpu_counts: list[int], work: Path) -> None:
    print(
        "| corpus | CPUs | HF datasets s | MB/s | RSS GB | ours mlm+nsp s | MB/s | RSS GB | fill | NSP | "
        "ours mlm s | fill | speed vs HF (mlm+nsp, mlm) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, corpus in corpora.items():
        size_mb = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file()) / 1e6
        for cpus in cpu_counts:
            out = tempfile.mkdtemp(dir=work)
            threads = {"RAYON_NUM_THREADS": str(cpus)}
            peer = run_one(
                PEER.format(
                    tokenizer=tokenizer_dir, corpus=str(corpus), cache=out + "/cache", out=out + "/hf.parquet"
                ),
                cpus,
                threads,
            )
            ours = run_one(
                OURS.format(
                    cpus=cpus,
                    corpus=str(corpus),
                    tokenizer=tokenizer_dir,
                    out=out + "/nsp",
                    objective="mlm+nsp",
                ),
                cpus,
            )
            mlm = run_one(
                OURS.format(
                    cpus=cpus, corpus=str(corpus), tokenizer=tokenizer_dir, out=out + "/mlm", objective="mlm"
                ),
                cpus,
            )
            shutil.rmtree(out)
            speed = f"{peer['seconds'] / ours['seconds']:.2f}x, {peer['seconds'] / mlm['seconds']:.2f}x"
            print(
                f"| {name} ({size_mb:.1f} MB) | {cpus} | {peer['seconds']:.1f} | "
                f"{size_mb / peer['seconds']:.2f} | {peer['rss_gb']:.2f} | {ours['seconds']:.1f} | "
                f"{size_mb / ours['seconds']:.2f} | {ours['rss_gb']:.2f} | {ours['fill']:.3f} | "
                f"{ours['nsp']:.3f} | {mlm['seconds']:.1f} | {mlm['fill']:.3f} | {speed} |",
                flush=True,
            )


def masking_comparison(tokenizer_dir: str, corpus: Path, work: Path, batch_size: int, rounds: int) -> None:
    """Ours and the collator on the same rows, each converting them inside its timer; median of rounds."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import torch
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

    from data import MaskingConfig, PrepareConfig, load_manifest, load_tokenizer, make_collate_fn, prepare
    from data.masking import MaskingVocab
    from data.stream import mask_batch

    torch.set_num_threads(1)
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    prepared = str(work / "masking")
    prepare([str(corpus)], tokenizer_dir, prepared, PrepareConfig(max_seq_length=128))
    manifest = load_manifest(prepared)
    table = pa.concat_tables([pq.read_table(os.path.join(prepared, p)) for p in manifest.shards["train"]])
    rows = [table.slice(s, batch_size).to_pydict() for s in range(0, table.num_rows, batch_size)]
    vocab = MaskingVocab.from_tokenizer(load_tokenizer(os.path.join(prepared, "tokenizer")))
    collate, config = make_collate_fn(None, 128), MaskingConfig()
    collator = DataCollatorForLanguageModeling(
        BertTokenizerFast.from_pretrained(os.path.join(prepared, "tokenizer")),
        mlm_probability=0.15,
        pad_to_multiple_of=8,
    )

    def ours(epoch: int) -> None:
        for batch in rows:
            arrow = pa.table(
                {
                    "example_id": pa.array(batch["example_id"], pa.int64()),
                    "input_ids": pa.array(batch["input_ids"], pa.list_(pa.int32())),
                    "token_type_ids": pa.array(batch["token_type_ids"], pa.list_(pa.int8())),
                    "next_sentence_label": pa.array(batch["next_sentence_label"], pa.int8()),
                }
            )
            collate.collate_table(mask_batch(arrow, 0, epoch, config, vocab))

    def peer(epoch: int) -> None:
        for batch in rows:
            collator(
                [
                    {"input_ids": ids, "token_type_ids": types}
                    for ids, types in zip(batch["input_ids"], batch["token_type_ids"], strict=True)
                ]
            )

    timings: dict[str, list[float]] = {"ours": [], "peer": []}
    for round_ in range(rounds + 1):  # round 0 warms both up
        for name, function in (
            (("ours", ours), ("peer", peer)) if round_ % 2 else (("peer", peer), ("ours", ours))
        ):
            started = time.perf_counter()
            function(round_)
            if round_:
                timings[name].append(time.perf_counter() - started)
    rate = {name: table.num_rows / statistics.median(times) for name, times in timings.items()}
    print(
        f"\nmasking {table.num_rows:,} examples of up to 128 tokens, batch {batch_size}, 1 thread, median of "
        f"{rounds} alternating rounds: transformers DataCollatorForLanguageModeling {rate['peer']:,.0f}/s, "
        f"ours (mask_batch + collate) {rate['ours']:,.0f}/s = {rate['ours'] / rate['peer']:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[17, 51], help="corpus sizes in MB")
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kinds", nargs="+", default=["small", "long"], help="which corpora")
    parser.add_argument("--work", default=None, help="a folder to keep the corpora in between runs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--skip-masking", action="store_true")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bert-pretrain-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpora = collect_corpora(work, args.sizes)
    tokenizer_dir = str(work / "tokenizer")
    if not os.path.exists(tokenizer_dir):
        from data import TokenizerConfig, train_tokenizer

        train_tokenizer([str(corpora[f"small {args.sizes[0]} MB"])], tokenizer_dir, TokenizerConfig())
    if not args.skip_prepare:
        chosen = {name: path for name, path in corpora.items() if name.split()[0] in args.kinds}
        prepare_table(chosen, tokenizer_dir, args.cpus, work)
    if not args.skip_masking:
        masking_comparison(
            tokenizer_dir, corpora[f"small {args.sizes[0]} MB"], work, args.batch_size, args.rounds
        )
    if not args.work:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
