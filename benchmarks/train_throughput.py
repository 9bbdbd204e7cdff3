"""Training throughput on CPU: a whole Ray Train run with 1 and 2 workers against the bare model loop.

The bare loop is the model, AdamW and the same masked batches (collated in advance, in memory) in this
process with one torch thread. The Ray Train runs are `orchestrator.train.driver.train` on a local Ray, one
torch thread per worker, the same global batch, reading the same prepared data through Ray Data.

Tokens are non-padding tokens. For the runs, tokens/s is the steady state the workers report (every logging
window after the first, which holds the start-up); the whole `fit` wall time, start-up included, is printed
beside it. Targets: 1 worker >= 0.95x the bare loop; 2 workers >= 0.95x the same two workers as plain DDP
processes (gloo, no Ray), which with two bare loops at once on half batches (no communication: what the
cores allow) bounds the 2-worker figure on this machine.

    .venv/bin/python benchmarks/train_throughput.py [--preset mini] [--seq 128] [--batch 32] [--steps 24]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import socket
import statistics
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from data import build_train_dataset, make_collate_fn
from model import BertConfig, BertForPreTraining
from orchestrator.config import OptimConfig, config_from_dict, with_absolute_paths
from orchestrator.train.driver import train
from orchestrator.train.optim import build_optimizer
from orchestrator.train.preflight import ensure_prepared_data


class MetricsFile(ray.train.UserCallback):
    """Appends rank 0's reported metrics to a file (the callback runs in the Ray Train controller)."""

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint):
        with open(self.path, "a") as file:
            file.write(json.dumps(metrics[0]) + "\n")


def job_config(root: Path, args: argparse.Namespace, num_workers: int) -> dict:
    return {
        "model": {"preset": args.preset},
        "data": {
            "corpus": ["builtin"],
            "tokenizer_dir": str(root / "tokenizer"),
            "prepared_dir": str(root / "prepared"),
            "tokenizer": {"vocab_size": 8192},
            "prepare": {"max_seq_length": args.seq},
        },
        "masking": {"pad_to": "max_length"},  # every batch the same shape: a fair, steady comparison
        "train": {
            "global_batch_size": args.batch,
            "micro_batch_size": args.batch,
            "max_steps": args.steps,
            "log_every": args.log_every,
        },
        "optim": {"lr": 1e-4},
        "scaling": {
            "num_workers": num_workers,
            "cpus_per_worker": 0.5,
            "threads_per_worker": 1,
            "data_cpus": 1,
        },
        "checkpoint": {
            "storage_path": str(root / "runs"),
            "run_name": f"bench-{num_workers}",
            "every": 10**9,
        },
        "mlflow": {"enabled": False},
    }


def collect_batches(root: Path, args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    """The first `--steps` masked global batches of epoch 0, collated in memory."""
    job = with_absolute_paths(config_from_dict(job_config(root, args, 1)))
    dataset = build_train_dataset(job.data.prepared_dir, job.masking, seed=0, epoch=0)
    collate = make_collate_fn(job.masking, args.seq)
    batches = []
    for batch in dataset.iter_torch_batches(batch_size=args.batch, collate_fn=collate, drop_last=True):
        batches.append(batch)
        if len(batches) == args.steps:
            break
    return batches


def bare_loop_tokens_per_s(
    preset: str,
    vocab_size: int,
    batches: list[dict],
    skip: int,
    ddp_address: str | None = None,
    rank: int = 0,
) -> float:
    """The model alone: forward, backward, AdamW on batches collated beforehand, one thread; with
    `ddp_address`, rank `rank` of 2 plain DDP processes (gloo)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.from_preset(preset, vocab_size=vocab_size))
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4))
    step_model = model
    if ddp_address:
        dist.init_process_group("gloo", init_method=ddp_address, rank=rank, world_size=2)
        step_model = DistributedDataParallel(model)
    inputs = ("input_ids", "token_type_ids", "attention_mask", "mlm_labels", "next_sentence_label")
    times, tokens = [], []
    for batch in batches:
        started = time.perf_counter()
        step_model(**{k: batch[k] for k in inputs}).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
        tokens.append(int(batch["attention_mask"].sum()))
    if ddp_address:
        dist.destroy_process_group()
    return sum(tokens[skip:]) / sum(times[skip:])  # the same warm-up share the runs leave out


def two_loops_tokens_per_s(preset: str, vocab_size: int, batches: list[dict], skip: int, ddp: bool) -> float:
    """Two loops at once in two processes, each on half of every batch. Without DDP (no communication):
    what two one-thread workers could reach on this machine at best (shared cores, caches, memory bandwidth).
    With DDP (gloo, no Ray): what the same two workers reach without Ray around them."""
    halves = [[{k: v[part::2] for k, v in batch.items()} for batch in batches] for part in (0, 1)]
    address = f"tcp://127.0.0.1:{_free_port()}" if ddp else None
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        runs = [
            pool.submit(bare_loop_tokens_per_s, preset, vocab_size, half, skip, address, rank)
            for rank, half in enumerate(halves)
        ]
        return sum(run.result() for run in runs)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_run_tokens_per_s(
    root: Path, args: argparse.Namespace, num_workers: int
) -> tuple[float, float, float]:
    """(steady tokens/s, whole-run tokens/s, fit wall seconds) of a Ray Train run."""
    metrics_path = root / f"metrics-{num_workers}.jsonl"
    job = with_absolute_paths(config_from_dict(job_config(root, args, num_workers)))
    started = time.perf_counter()
    train(job, callbacks=[MetricsFile(str(metrics_path))])
    wall = time.perf_counter() - started
    windows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    steady = statistics.mean(w["perf/tokens_per_s"] for w in windows[1:])
    total_tokens = sum(w["perf/tokens_per_s"] * w["perf/step_time_s"] * args.log_every for w in windows)
    return steady, total_tokens / wall, wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32, help="global batch (sequences per step)")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--log-every", type=int, default=4)
    args = parser.parse_args()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = ensure_prepared_data(with_absolute_paths(config_from_dict(job_config(root, args, 1))))
        batches = collect_batches(root, args)
        vocab, skip = manifest.vocab_size, args.log_every
        bare = bare_loop_tokens_per_s(args.preset, vocab, batches, skip)
        ceiling = two_loops_tokens_per_s(args.preset, vocab, batches, skip, ddp=False)
        plain_ddp = two_loops_tokens_per_s(args.preset, vocab, batches, skip, ddp=True)
        one, one_whole, one_wall = ray_run_tokens_per_s(root, args, 1)
        two, two_whole, two_wall = ray_run_tokens_per_s(root, args, 2)
    ray.shutdown()

    print(
        f"\n{args.preset}, seq {args.seq}, global batch {args.batch}, {args.steps} steps, CPU, "
        "1 thread per worker"
    )
    print(f"bare loop (1 process, 1 thread)   {bare:10.0f} tokens/s")
    print(
        f"2 bare loops at once (no comms)   {ceiling:10.0f} tokens/s = {ceiling / bare:.2f}x the bare loop, "
        "the most 2 workers can reach here"
    )
    print(
        f"2 plain DDP, gloo (no Ray)        {plain_ddp:10.0f} tokens/s = {plain_ddp / bare:.2f}x the bare,"
        " 2 workers without Ray"
    )
    print(
        f"Ray Train, 1 worker               {one:10.0f} tokens/s steady   ({one_whole:.0f} over the whole "
        f"{one_wall:.0f} s fit)"
    )
    print(
        f"Ray Train, 2 workers              {two:10.0f} tokens/s steady   ({two_whole:.0f} over the whole "
        f"{two_wall:.0f} s fit)"
    )
    print(f"1 worker / bare loop        {one / bare:5.2f}x   (target >= 0.95)")
    print(f"2 workers / 2 plain DDP     {two / plain_ddp:5.2f}x   (target >= 0.95)")
    print(f"2 workers / 1 worker        {two / one:5.2f}x   (the ceiling here {ceiling / bare:.2f}x)")


if __name__ == "__main__":
    main()
