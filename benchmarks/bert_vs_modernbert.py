"""BERT's recipe against ModernBERT's at equal tokens on real text: the held-out MLM loss and a probe score.

Both families pretrain on the same prepared data (the embedded corpus, the installed Python's docstrings,
packed into full 128-token rows: `objective: mlm`) with the same tokenizer, the same number of steps and
global batch (so the same tokens), as `bert-pretrain train` runs them, each with its family's recipe:
- BERT (Devlin et al. 2018, MLM only as RoBERTa showed NSP is not needed): preset mini (4 layers, hidden
  256), 15% masking, dropout 0.1, AdamW with linear warmup and decay;
- ModernBERT (Warner et al. 2024): preset mini (6 layers, hidden 256, GeGLU), 30% masking, no dropout,
  StableAdamW with warmup-stable-decay (1-sqrt decay over the last 10% of the steps), betas (0.9, 0.98).
The same peak learning rate and warmup for both.

Scored alike, afterwards:
- held-out MLM loss and accuracy: `bert-pretrain eval` of each final model on the prepared eval split with the
  same fixed masks (seed 0, 15%: BERT's rate, the one both are read at);
- a probe (`train.probes`): a linear classifier on the frozen [CLS] vector fitted on man pages labelled with
  their section (1 commands, 2 system calls, 3 library functions, 5 file formats, 7 overviews, 8 admin
  commands), text the models never trained on: its accuracy on held-out man pages at the last step.

One run per family on this 2-core CPU (the figures to read are the differences; the run length is set by
--steps). Report it whatever it shows: at a few hundred steps this is a smoke comparison of the recipes,
not of the architectures at scale.

Usage: PYTHONPATH=$PWD .venv/bin/python benchmarks/bert_vs_modernbert.py [--steps 400] [--batch 64]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
MAN = Path("/usr/share/man")
SECTIONS = ("1", "2", "3", "5", "7", "8")
PROBE_NAME = "man-sections"
TROFF_ESCAPES = re.compile(r"\\f(\[[^]]*\]|\(..|.)|\\\*?\(..|\\\*?\[[^]]*\]|\\[&|^%:]|\\s[-+]?\d+")

SHARED = {
    "data": {
        "corpus": ["builtin"],
        "tokenizer": {"vocab_size": 8192},
        "prepare": {"objective": "mlm", "max_seq_length": 128, "eval_fraction": 0.02},
    },
    "scaling": {"num_workers": 2, "cpus_per_worker": 0.5, "data_cpus": 1},
}
FAMILIES = {
    "bert": {
        "model": {"family": "bert", "preset": "mini", "use_nsp": False, "dropout": 0.1},
        "masking": {"mlm_probability": 0.15},
        "optim": {"name": "adamw", "schedule": "linear", "weight_decay": 0.01},
    },
    "modernbert": {
        "model": {"family": "modernbert", "preset": "mini", "use_nsp": False, "dropout": 0.0},
        "masking": {"mlm_probability": 0.3},
        "optim": {
            "name": "stableadamw",
            "schedule": "wsd",
            "decay_fraction": 0.1,
            "decay_shape": "1-sqrt",
            "weight_decay": 1.0e-5,
            "betas": [0.9, 0.98],
        },
    },
}


def man_page_text(path: Path) -> str:
    """The first 80 words of a man page's DESCRIPTION section, troff requests and escapes removed ('' for a
    page without one, or a `.so` link to another page)."""
    try:
        source = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
    except (OSError, EOFError):
        return ""
    words, inside = [], False
    for line in source.splitlines():
        if line.startswith((".SH", ".Sh")):
            if inside:
                break
            inside = "DESCRIPTION" in line.upper()
            continue
        if not inside or line.startswith(("'", '.\\"')) or line.strip() in {".", ".PP", ".P", ".LP"}:
            continue
        if line.startswith("."):  # a font request (.B word) keeps its words; others go
            request, _, rest = line.partition(" ")
            if request not in {".B", ".I", ".BR", ".IR", ".RB", ".RI", ".BI", ".IB", ".Nm", ".Xr"}:
                continue
            line = rest.replace('"', "")
        words.extend(TROFF_ESCAPES.sub("", line).replace("\\-", "-").replace("\\e", "\\").split())
        if len(words) >= 80:
            break
    return " ".join(words[:80])


def build_probe_sets(work: Path, per_section: int) -> dict[str, str]:
    """JSONL train/eval sets of man pages labelled with their section: up to `per_section` pages of each, in
    a seeded order, a quarter of them held out."""
    rng = np.random.default_rng(0)
    rows = {"train": [], "eval": []}
    for section in SECTIONS:
        pages = sorted((MAN / f"man{section}").glob("*.gz"))
        texts, seen = [], set()
        for index in rng.permutation(len(pages)):
            text = man_page_text(pages[index])
            if len(text.split()) >= 10 and text not in seen:
                seen.add(text)
                texts.append({"text": text, "label": f"man{section}"})
            if len(texts) == per_section:
                break
        held_out = len(texts) // 4
        rows["eval"] += texts[:held_out]
        rows["train"] += texts[held_out:]
    paths = {}
    for split, split_rows in rows.items():
        paths[split] = str(work / f"man-{split}.jsonl")
        Path(paths[split]).write_text("".join(json.dumps(row) + "\n" for row in split_rows))
    print(f"probe: {len(rows['train'])} training / {len(rows['eval'])} held-out man pages")
    return paths


def recipe(family: str, work: Path, probe: dict[str, str], args: argparse.Namespace) -> Path:
    config = {
        **json.loads(json.dumps(SHARED)),
        **json.loads(json.dumps(FAMILIES[family])),
        "train": {
            "global_batch_size": args.batch,
            "micro_batch_size": args.batch // 2,
            "max_steps": args.steps,
            "log_every": 20,
            "eval_every": args.steps,
            "probes": [{"name": PROBE_NAME, "train": probe["train"], "eval": probe["eval"]}],
        },
        "checkpoint": {"storage_path": str(work / "runs"), "run_name": family, "every": args.steps},
        "mlflow": {"tracking_uri": f"sqlite:///{work}/mlflow.db", "log_system_metrics": False},
    }
    config["data"]["tokenizer_dir"] = str(work / "tokenizer")
    config["data"]["prepared_dir"] = str(work / "prepared")
    config["optim"] |= {"lr": args.lr, "warmup_steps": args.steps // 10}
    path = work / f"{family}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(command: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "local"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        sys.exit(f"{' '.join(command[:4])} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return done.stdout


def probe_accuracy(work: Path, family: str) -> float:
    """The probe's accuracy at the run's last step, from its MLflow run."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work}/mlflow.db")
    run_id = json.loads((work / "runs" / family / "run.json").read_text())["mlflow_run_id"]
    keys = [key for key in client.get_run(run_id).data.metrics if key.endswith(f"{PROBE_NAME}/accuracy")]
    history = client.get_metric_history(run_id, keys[0])
    return max(history, key=lambda metric: metric.step).value


def parameters(final: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(final / "model.safetensors"), "pt") as tensors:
        return sum(math.prod(tensors.get_slice(name).get_shape()) for name in tensors.keys())  # noqa: SIM118


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--per-section", type=int, default=200, help="man pages per section for the probe")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "orchestrator.cli"]
    with tempfile.TemporaryDirectory(prefix="families-") as tmp:
        work = Path(tmp)
        probe = build_probe_sets(work, args.per_section)
        results = {}
        for family in FAMILIES:
            started = time.perf_counter()
            run([*cli, "train", "--config", str(recipe(family, work, probe, args))])
            wall = time.perf_counter() - started
            final = work / "runs" / family / "final"
            evaluate = [*cli, "eval", str(final), "--data", str(work / "prepared"), "--seed", "0", "--json"]
            printed = run(evaluate)
            scores = json.loads(printed[printed.index("{") :])  # the JSON object ends the output
            results[family] = (scores, probe_accuracy(work, family), parameters(final), wall)
        tokens = args.steps * args.batch * SHARED["data"]["prepare"]["max_seq_length"]
        print(f"\n{args.steps} steps x {args.batch} rows x 128 tokens = {tokens:,} tokens each")
        print("| recipe | parameters | held-out MLM loss (15%) | MLM acc. % | probe acc. % | train wall s |")
        print("|---|---|---|---|---|---|")
        for family, (scores, probe_score, count, wall) in results.items():
            print(
                f"| {family} mini | {count / 1e6:.1f}M | {scores['mlm_loss']:.3f} | "
                f"{100 * scores['mlm_accuracy']:.1f} | {100 * probe_score:.1f} | {wall:.0f} |"
            )


if __name__ == "__main__":
    main()
