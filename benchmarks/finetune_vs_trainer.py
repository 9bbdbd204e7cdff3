"""`bert-pretrain finetune` against HF Trainer's run_glue.py recipe, side by side, on real labelled text.

The task: the standard library's docstrings (this Python's, parsed with `ast`: modules, classes, functions;
each text once), labelled with their top-level package or module (`asyncio`, `email`, `tkinter`, `test`...),
the 20 labels with the most docstrings, at most 500 docstrings each. Sets built here, deterministic:
    short     all the docstrings' first paragraphs (a line or two): 1,000 eval rows, the rest for training;
    long      the whole docstrings (7.5% longer than 128 tokens): 1,000 eval rows, 3,746 training rows;
    short-1k  1,000 training / 500 eval first paragraphs: a fit of seconds, where start-up is most of the
              time (not run by default).
Both sides start from the same folder: a random-init BERT of a small preset (`tiny` by default) saved in HF
format with a WordPiece tokenizer trained (`data.train_tokenizer`) on the training texts, as a run's final/
holds them. Random init: this measures the two fine-tuning loops on the same task, not a pretraining; hence
the learning rate (5e-4) higher than a pretrained model's 2e-5.

- peer: HF's run_glue.py recipe as its own process (`python -c`): AutoTokenizer,
  AutoModelForSequenceClassification.from_pretrained(base, num_labels, id2label, label2id,
  attn_implementation="sdpa"), `load_dataset("json")` + `map(batched=True)` with truncation to the sequence
  length (a fresh datasets cache each command, as ours reads its sets afresh), DataCollatorWithPadding
  (padding to the longest of the batch), Trainer(TrainingArguments: the same batch, lr, epochs, seed,
  warmup share, weight decay, and our AdamW epsilon 1e-6; eval_strategy="no", save_strategy="no",
  use_cpu=True, dataloader_num_workers=0), `train()`, `predict(eval)` for the accuracy and `save_model`,
  as run_glue.py ends; `torch.set_num_threads(--threads)`, the machine's cores by default.
- ours: `bert-pretrain finetune BASE --train --eval --out --epochs --lr --batch-size --max-seq-length
  --seeds 1 --first-seed S --num-workers N --no-mlflow --json`, the scores from its last JSON line, once
  for each N of `--workers` (default 0 and 2): 0 runs the fit in the command's own process (Ray Train's
  local mode, torch's default threads: the cores), 2 on a new local Ray with 2 Ray Train workers of 1 CPU
  and 1 thread each, as the README runs CPU jobs on this 2-core machine.

Both are timed as whole commands (subprocess wall time: imports, Ray's start, reading and tokenizing, the
fit, the evaluation, writing the model). Seeds 0, 1, 2 are one command each per side, in turns (round k
starts with side k of the list: peer, ours with each --workers). Ours scores the eval set after every epoch
and reports its best epoch; the peer scores once, after the last. The table gives ours both ways: its
reported (best-epoch) accuracy, and its last epoch's (read from its progress lines), the like-for-like one.
Goal (issue 22): the same accuracy (within a point, median of the 3 seeds) at 1.5x the peer's speed.

Usage (nothing else on the machine; about 15 min with the defaults on 2 quiet cores):
    PYTHONPATH=$PWD .venv/bin/python benchmarks/finetune_vs_trainer.py [--sets short long] [--seeds 3]
    PYTHONPATH=$PWD .venv/bin/python benchmarks/finetune_vs_trainer.py --quick   # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
LABELS, PER_LABEL = 20, 500
MIN_WORDS = 5


@dataclass(frozen=True)
class SetSpec:
    name: str
    train_rows: int
    eval_rows: int
    whole: bool
    """The whole docstring (long texts), or its first paragraph (short texts)."""


SETS = {
    "short": SetSpec("short", 100_000, 1000, whole=False),  # all that is left after the eval rows
    "long": SetSpec("long", 100_000, 1000, whole=True),
    "short-1k": SetSpec("short-1k", 1000, 500, whole=False),  # a fit of seconds: start-up is most of it
}
QUICK_SETS = {
    "short": SetSpec("short", 200, 100, whole=False),
    "long": SetSpec("long", 300, 100, whole=True),
    "short-1k": SetSpec("short-1k", 200, 100, whole=False),
}

PEER = """
import json, sys, time
import numpy as np
import torch
torch.set_num_threads({threads})
import datasets
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
    Trainer, TrainerCallback, TrainingArguments, set_seed)
datasets.disable_progress_bars()
settings = json.loads({settings!r})
set_seed(settings["seed"])
raw = datasets.load_dataset(
    "json", data_files={{"train": settings["train"], "validation": settings["eval"]}},
    cache_dir=settings["cache"],
)
label_list = sorted(set(raw["train"]["label"]))
label_to_id = {{label: i for i, label in enumerate(label_list)}}
tokenizer = AutoTokenizer.from_pretrained(settings["base"])
model = AutoModelForSequenceClassification.from_pretrained(
    settings["base"], num_labels=len(label_list), id2label=dict(enumerate(label_list)),
    label2id=label_to_id, attn_implementation="sdpa",
)
def preprocess_function(examples):
    result = tokenizer(
        examples["text"], padding=False, max_length=settings["max_seq_length"], truncation=True
    )
    result["label"] = [label_to_id[label] for label in examples["label"]]
    return result
raw = raw.map(preprocess_function, batched=True, remove_columns=["text"])
class FirstStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            print("FIRST_STEP", time.time(), flush=True)
arguments = TrainingArguments(
    output_dir=settings["out"], per_device_train_batch_size=settings["batch_size"],
    per_device_eval_batch_size=settings["batch_size"], learning_rate=settings["lr"],
    num_train_epochs=settings["epochs"], seed=settings["seed"], warmup_steps=settings["warmup"],
    weight_decay=settings["weight_decay"], adam_epsilon=settings["adam_epsilon"], eval_strategy="no",
    save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    logging_strategy="no",
)
trainer = Trainer(
    model=model, args=arguments, train_dataset=raw["train"], processing_class=tokenizer,
    data_collator=DataCollatorWithPadding(tokenizer), callbacks=[FirstStep()],
)
trainer.train()
predictions = trainer.predict(raw["validation"])
accuracy = float((np.argmax(predictions.predictions, axis=1) == predictions.label_ids).mean())
trainer.save_model()
print("RESULT", json.dumps({{"accuracy": accuracy}}), flush=True)
"""
PEER_SIDE = "HF Trainer (run_glue recipe)"
LAST_EPOCH = re.compile(r"epoch (\d+)/(\d+) .*\|\s+eval accuracy ([0-9.]+)")
PROGRESS = re.compile(r"seed \d+\s+epoch \d+/\d+\s+step (\d+)/")


def collect_docstrings(stdlib: Path) -> list[tuple[str, str, str]]:
    """(label, whole docstring, its first paragraph) for every docstring of at least MIN_WORDS words, each
    text once (a text found under two labels is dropped), in a fixed order."""
    found: dict[str, set[str]] = {}
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        if parts[0] == "site-packages":
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        label = parts[0].removesuffix(".py")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text and len(text.split()) >= MIN_WORDS:
                    found.setdefault(text, set()).add(label)
    return [
        (labels.pop(), " ".join(text.split()), " ".join(text.split("\n\n")[0].split()))
        for text, labels in found.items()
        if len(labels) == 1
    ]


def build_sets(work: Path, specs: dict[str, SetSpec]) -> dict[str, dict[str, str]]:
    """JSONL train/eval files of each set ({"text", "label"} rows): the LABELS most frequent labels, at most
    PER_LABEL rows each, in a seeded order; the eval rows first, the training rows after them."""
    docstrings = collect_docstrings(STDLIB)
    counts: dict[str, int] = {}
    for label, _, _ in docstrings:
        counts[label] = counts.get(label, 0) + 1
    kept = sorted(counts, key=lambda label: (-counts[label], label))[:LABELS]
    paths = {}
    for spec in specs.values():
        rows, seen, per_label = [], set(), dict.fromkeys(kept, 0)
        for label, whole, first in docstrings:
            text = whole if spec.whole else first
            if label in per_label and per_label[label] < PER_LABEL and text not in seen:
                seen.add(text)
                per_label[label] += 1
                rows.append({"text": text, "label": label})
        order = np.random.default_rng(0).permutation(len(rows))
        eval_rows = [rows[i] for i in order[: spec.eval_rows]]
        train_rows = [rows[i] for i in order[spec.eval_rows :][: spec.train_rows]]
        train_labels = {row["label"] for row in train_rows}
        eval_rows = [row for row in eval_rows if row["label"] in train_labels]
        paths[spec.name] = {}
        for split, split_rows in (("train", train_rows), ("eval", eval_rows)):
            path = work / f"{spec.name}-{split}.jsonl"
            path.write_text("".join(json.dumps(row) + "\n" for row in split_rows))
            paths[spec.name][split] = str(path)
    return paths


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def build_base(work: Path, sets: dict[str, dict[str, str]], preset: str) -> str:
    """A random-init BertForPreTraining of `preset` in HF format with a WordPiece tokenizer trained on the
    training texts: the folder both sides fine-tune."""
    import torch

    from data import TokenizerConfig, load_tokenizer, train_tokenizer
    from data.tokenizer import TOKENIZER_FILES
    from model import BertConfig, BertForPreTraining

    tokenizer_dir, base = work / "tokenizer", work / f"base-{preset}"
    if (base / "config.json").is_file():  # kept in --work from an earlier call: the sets are the same
        return str(base)
    corpus = work / "corpus.txt"
    texts = [row["text"] for s in sets.values() for row in read_jsonl(s["train"])]
    corpus.write_text("\n\n".join(texts) + "\n")
    train_tokenizer([str(corpus)], str(tokenizer_dir), TokenizerConfig(vocab_size=8192))
    torch.manual_seed(0)
    vocab_size = load_tokenizer(str(tokenizer_dir)).get_vocab_size()
    BertForPreTraining(BertConfig.from_preset(preset, vocab_size=vocab_size)).save_hf(base)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, base / name)
    return str(base)


@dataclass
class Outcome:
    accuracy: float
    """The accuracy the command reports (ours: its best epoch's)."""
    last_epoch_accuracy: float
    wall_s: float
    first_step_s: float | None
    """Command start to the end of the first optimizer step (the peer); to ours' first progress line,
    which comes after --log-every (10) steps."""


def run_peer(base: str, data: dict[str, str], args: argparse.Namespace, seed: int, work: Path) -> Outcome:
    out = Path(tempfile.mkdtemp(dir=work, prefix="peer-"))
    settings = {
        "base": base,
        "train": data["train"],
        "eval": data["eval"],
        "cache": str(out / "cache"),
        "out": str(out / "model"),
        "seed": seed,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "epochs": args.epochs,
        "warmup": args.warmup,
        "weight_decay": 0.01,
        "adam_epsilon": 1e-6,
        "max_seq_length": args.max_seq_length,
    }
    script = PEER.format(threads=args.threads, settings=json.dumps(settings))
    started, stamp = time.perf_counter(), time.time()
    output = _run([sys.executable, "-c", script], {})
    wall = time.perf_counter() - started
    shutil.rmtree(out)
    marked = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in output.splitlines() if " " in line}
    accuracy = json.loads(marked["RESULT"])["accuracy"]
    first = float(marked["FIRST_STEP"]) - stamp
    return Outcome(accuracy, accuracy, wall, first)


def run_ours(
    base: str, data: dict[str, str], args: argparse.Namespace, seed: int, work: Path, workers: int
) -> Outcome:
    out = Path(tempfile.mkdtemp(dir=work, prefix="ours-"))
    command = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "finetune",
        base,
        "--train",
        data["train"],
        "--eval",
        data["eval"],
        "--out",
        str(out),
        "--epochs",
        str(args.epochs),
        "--lr",
        str(args.lr),
        "--batch-size",
        str(args.batch_size),
        "--max-seq-length",
        str(args.max_seq_length),
        "--warmup",
        str(args.warmup),
        "--seeds",
        "1",
        "--first-seed",
        str(seed),
        "--num-workers",
        str(workers),
        "--no-mlflow",
        "--json",
    ]
    started = time.perf_counter()
    output, first_line = _run_timed(command, started)
    wall = time.perf_counter() - started
    shutil.rmtree(out)
    scores = json.loads([line for line in output.splitlines() if line.startswith('{"accuracy"')][-1])
    epochs = [(int(e), float(a)) for e, total, a in LAST_EPOCH.findall(output) if e == total]
    return Outcome(scores["accuracy"], epochs[-1][1] if epochs else float("nan"), wall, first_line)


def _run(command: list[str], env_extra: dict[str, str]) -> str:
    env = {**os.environ, "PYTHONPATH": _python_path(), **env_extra}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        sys.exit(f"{command[:4]} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def _python_path() -> str:
    """This checkout first, then what the caller's PYTHONPATH had."""
    return os.pathsep.join([str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def _run_timed(command: list[str], started: float) -> tuple[str, float | None]:
    """Run `command`, reading its output as it comes; the output and when the first progress line came."""
    # Its own new local Ray, as on a machine where no `ray start` runs: without RAY_ADDRESS=local it joins
    # any Ray cluster that is running here (another job's, whose end then ends this run).
    env = {**os.environ, "PYTHONPATH": _python_path(), "RAY_ADDRESS": "local"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    )
    lines, first = [], None
    for line in process.stdout:
        if first is None and PROGRESS.search(line):
            first = time.perf_counter() - started
        lines.append(line)
    output = "".join(lines)
    if process.wait():
        sys.exit(f"ours failed ({process.returncode}):\n{output[-5000:]}")
    return output, first


def spread(values: list[float], digits: int, scale: float = 1.0) -> str:
    """'median (min-max)'."""
    values = [v * scale for v in values]
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(
    name: str, data: dict[str, str], results: dict[str, list[Outcome]], args: argparse.Namespace
) -> None:
    rows = {split: len(read_jsonl(data[split])) for split in ("train", "eval")}
    peer = results.pop(PEER_SIDE)
    print(
        f"\n{name}: {rows['train']:,} training / {rows['eval']:,} eval rows, {args.epochs} epochs, batch "
        f"{args.batch_size}, lr {args.lr:g}, max {args.max_seq_length} tokens, {len(peer)} seed(s)"
    )
    print("| side | accuracy % (best epoch) | accuracy % (last epoch) | wall s | to 1st step s |")
    print("|---|---|---|---|---|")
    for side, outcomes in ((PEER_SIDE, peer), *results.items()):
        firsts = [o.first_step_s for o in outcomes if o.first_step_s is not None]
        best_epoch = spread([o.accuracy for o in outcomes], 1, 100) if side != PEER_SIDE else "-"
        print(
            f"| {side} | {best_epoch} | "
            f"{spread([o.last_epoch_accuracy for o in outcomes], 1, 100)} | "
            f"{spread([o.wall_s for o in outcomes], 1)} | {spread(firsts, 1) if firsts else '-'} |"
        )
    print("(to 1st step: the peer's first optimizer step; ours: its first progress line, after 10 steps)")
    for side, ours in results.items():
        speed = [p.wall_s / o.wall_s for p, o in zip(peer, ours, strict=True)]
        peer_accuracy = statistics.median(p.accuracy for p in peer)
        last = 100 * (statistics.median(o.last_epoch_accuracy for o in ours) - peer_accuracy)
        best = 100 * (statistics.median(o.accuracy for o in ours) - peer_accuracy)
        print(
            f"{side}: speed, peer wall / ours per seed: {spread(speed, 2)}x (goal >= 1.5x); accuracy, ours - "
            f"peer (medians): {last:+.1f} points at the last epoch, {best:+.1f} with ours' best epoch (goal "
            "within 1)"
        )


def ours_side(workers: int) -> str:
    return "bert-pretrain finetune, " + (f"{workers} Ray Train workers" if workers else "in process")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", nargs="+", default=["short", "long"], choices=list(SETS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1, one command each per side")
    parser.add_argument("--preset", default="tiny", help="the base model's size (model.PRESETS)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the steps of linear warmup")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 2],
        help="ours' --num-workers, a side each (0: in process)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="the peer's torch threads")
    parser.add_argument("--work", help="a folder to keep the sets and the base model in (default: temporary)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sets, 1 seed, 1 epoch")
    args = parser.parse_args()
    if importlib.util.find_spec("accelerate") is None:
        sys.exit("HF Trainer needs accelerate: pip install 'accelerate>=1.1' (in the dev extra)")
    specs = QUICK_SETS if args.quick else SETS
    if args.quick:
        args.seeds, args.epochs = 1, 1

    work = Path(args.work or tempfile.mkdtemp(prefix="finetune-bench-"))
    sets_dir = work / ("quick" if args.quick else "full")
    sets_dir.mkdir(parents=True, exist_ok=True)
    sets = build_sets(sets_dir, {name: specs[name] for name in args.sets})
    base = build_base(sets_dir, sets, args.preset)
    print(f"base model: random-init {args.preset} with its tokenizer in {base}", flush=True)
    sides = {
        PEER_SIDE: run_peer,
        **{ours_side(n): functools.partial(run_ours, workers=n) for n in args.workers},
    }
    for name, data in sets.items():
        results: dict[str, list[Outcome]] = {side: [] for side in sides}
        for seed in range(args.seeds):
            turn = list(sides)[seed % len(sides) :] + list(sides)[: seed % len(sides)]
            for side in turn:
                outcome = sides[side](base, data, args, seed, work)
                results[side].append(outcome)
                print(
                    f"{name} seed {seed} {side}: accuracy {outcome.accuracy:.4f} (last epoch "
                    f"{outcome.last_epoch_accuracy:.4f}), {outcome.wall_s:.1f} s",
                    flush=True,
                )
        report(name, data, results, args)
    if not args.work:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
