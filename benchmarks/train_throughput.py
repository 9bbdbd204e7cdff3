"""Training throughput on CPU: a whole Ray Train run with 1 and 2 workers against the bare model loop.

The bare loop is the model, AdamW and the same masked batches (collated in advance, in memory) in this
process with one torch thread. The Ray Train runs are `orchestrator.train.driver.train` on a local Ray, one
torch thread per worker, the same global batch, reading the same prepared data through Ray Data.

Every figure is the same metric: real (non-padding) tokens of the steps after the first `--log-every` (the
warm-up, left out on every side) over the wall time of those steps. For the runs, the tokens and the elapsed
time of each logging window after the first (the worker's `perf/tokens_per_s` times its window's time), so
data waits inside the run count; for the bare loops, each step's time from its forward to its optimizer step.
The whole `fit` wall time of the runs, start-up included, is printed beside them. All five are measured in
each of `--rounds` rounds, in the opposite order every other round; printed: the median over the rounds
(min-max), and the ratios of each round, median (min-max). Targets: 1 worker >= 0.95x the bare loop; 2
workers >= 0.95x the same two workers as plain DDP
processes (gloo, no Ray), which with two bare loops at once on half batches (no communication: what the
cores allow) bounds the 2-worker figure on this machine.

    .venv/bin/python benchmarks/train_throughput.py [--preset mini] [--seq 128] [--batch 32] [--steps 24]
        [--rounds 3]
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


def job_config(root: Path, args: argparse.Namespace, num_workers: int, run: int = 0) -> dict:
    """Run `run` of this many workers: each its own run folder (a new run, not a resume)."""
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
            "run_name": f"bench-{num_workers}-{run}",
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
    root: Path, args: argparse.Namespace, num_workers: int, run: int
) -> tuple[float, float]:
    """(tokens/s of the steps after the first window, fit wall seconds) of a Ray Train run."""
    metrics_path = root / f"metrics-{num_workers}-{run}.jsonl"
    job = with_absolute_paths(config_from_dict(job_config(root, args, num_workers, run)))
    started = time.perf_counter()
    train(job, callbacks=[MetricsFile(str(metrics_path))])
    wall = time.perf_counter() - started
    windows = [json.loads(line) for line in metrics_path.read_text().splitlines()][1:]  # the first: warm-up
    seconds = [w["perf/step_time_s"] * args.log_every for w in windows]  # each window's elapsed time
    tokens = [w["perf/tokens_per_s"] * elapsed for w, elapsed in zip(windows, seconds, strict=True)]
    return sum(tokens) / sum(seconds), wall


def spread(values: list[float], digits: int = 0) -> str:
    """'median (min-max)'."""
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def ratios(numerators: list[float], denominators: list[float]) -> str:
    return spread([n / d for n, d in zip(numerators, denominators, strict=True)], digits=2) + "x"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32, help="global batch (sequences per step)")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--log-every", type=int, default=4, help="also the warm-up steps left out")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.steps % args.log_every or args.steps <= args.log_every:
        parser.error("--steps must be a multiple of --log-every, and more than one window")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    figures: dict[str, list[float]] = {}
    walls: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = ensure_prepared_data(with_absolute_paths(config_from_dict(job_config(root, args, 1))))
        batches = collect_batches(root, args)
        vocab, skip = manifest.vocab_size, args.log_every

        def ray_run(workers: int, run: int) -> float:
            tokens_per_s, wall = ray_run_tokens_per_s(root, args, workers, run)
            walls[workers].append(wall)
            return tokens_per_s

        contenders = {
            "bare": lambda run: bare_loop_tokens_per_s(args.preset, vocab, batches, skip),
            "ceiling": lambda run: two_loops_tokens_per_s(args.preset, vocab, batches, skip, ddp=False),
            "plain_ddp": lambda run: two_loops_tokens_per_s(args.preset, vocab, batches, skip, ddp=True),
            "one": lambda run: ray_run(1, run),
            "two": lambda run: ray_run(2, run),
        }
        for run in range(args.rounds):
            order = list(contenders) if run % 2 == 0 else list(reversed(contenders))
            for name in order:
                figures.setdefault(name, []).append(contenders[name](run))
    ray.shutdown()

    bare, ceiling, plain_ddp, one, two = (figures[name] for name in contenders)
    print(
        f"\n{args.preset}, seq {args.seq}, global batch {args.batch}, {args.steps} steps "
        f"({skip} warm-up left out), CPU, 1 thread per worker; "
        f"real tokens/s, median of {args.rounds} rounds (min-max)"
    )
    print(f"bare loop (1 process, 1 thread)   {spread(bare):>26}")
    print(f"2 bare loops at once (no comms)   {spread(ceiling):>26}  the most 2 workers can reach here")
    print(f"2 plain DDP, gloo (no Ray)        {spread(plain_ddp):>26}  2 workers without Ray")
    print(f"Ray Train, 1 worker               {spread(one):>26}  (whole fit {spread(walls[1], 1)} s)")
    print(f"Ray Train, 2 workers              {spread(two):>26}  (whole fit {spread(walls[2], 1)} s)")
    print(f"1 worker / bare loop        {ratios(one, bare)}   (target >= 0.95)")
    print(f"2 workers / 2 plain DDP     {ratios(two, plain_ddp)}   (target >= 0.95)")
    print(f"2 workers / 1 worker        {ratios(two, one)}   (the ceiling here {ratios(ceiling, bare)})")


if __name__ == "__main__":
    main()
