"""`bert-pretrain finetune`: fine-tune a pretrained encoder on a labelled set (classification or regression).

Parsing and printing only; the work is `orchestrator.finetune.driver.finetune`.
"""

from __future__ import annotations

import argparse
import json

from common.console import say
from orchestrator.cli.inference import MODEL_HELP, TOKENIZER_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's subcommand."""
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained model on a labelled set (classification or regression)",
        description="Fine-tune MODEL with its family's classification head (BERT: dropout + linear on the "
        "pooled [CLS]; ModernBERT: transformers' ModernBertForSequenceClassification head) "
        "on Ray Train DDP workers, scoring the eval set after every epoch and keeping the best epoch. "
        "Prints accuracy, macro-F1 (and Matthews correlation for two classes), or Pearson and Spearman for "
        "regression; with --seeds N each seed's score and their median and spread. Writes OUT/final/ (an HF "
        "BertForSequenceClassification or ModernBertForSequenceClassification folder with its tokenizer and "
        "labels) and OUT/finetune.json, and "
        "records an MLflow run (a nested run per seed), in the pretraining run's experiment when MODEL "
        "comes from a run. Data: CSV/TSV, JSONL, Parquet or a saved HF datasets folder, local or in a "
        "bucket.",
    )
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("--train", required=True, metavar="PATH", help="the labelled training set")
    parser.add_argument("--eval", required=True, metavar="PATH", help="the labelled evaluation set")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (local or bucket URI)")
    parser.add_argument("--text-field", default="text", help="the text's field (default text)")
    parser.add_argument("--pair-field", metavar="FIELD", help="the second text's field, for sentence pairs")
    parser.add_argument("--label-field", default="label", help="the label's field (default label)")
    parser.add_argument(
        "--task",
        default="classification",
        choices=("classification", "regression"),
        help="classification (labels: strings or integers) or regression (numbers); default classification",
    )
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training set (default 3)")
    parser.add_argument("--lr", type=float, default=2e-5, help="peak learning rate of AdamW (default 2e-5)")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="global batch: examples per step over all workers (32)"
    )
    parser.add_argument(
        "--micro-batch-size", type=int, help="most examples a worker runs at once (gradient accumulation)"
    )
    parser.add_argument(
        "--max-seq-length", type=int, default=128, help="tokens per text (pair); longer ones are cut (128)"
    )
    parser.add_argument("--seeds", type=int, default=1, help="run seeds 0..N-1; report each and the median")
    parser.add_argument(
        "--first-seed", type=int, default=0, metavar="K", help="start at seed K: seeds K..K+N-1 (default 0)"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.1, help="share of the steps of linear warmup (default 0.1)"
    )
    parser.add_argument("--dropout", type=float, help="hidden and attention dropout (default: the model's)")
    parser.add_argument("--log-every", type=int, default=10, help="log training metrics every N steps (10)")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=1,
        help="Ray Train workers (DDP ranks); 0: the fit in this process, no Ray (Ray Train's local mode)",
    )
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs (and torch threads) per worker (default 1)"
    )
    parser.add_argument("--tokenizer", metavar="DIR", help=TOKENIZER_HELP)
    parser.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    parser.add_argument("--experiment", default="", help="MLflow experiment (default: the pretraining run's)")
    parser.add_argument("--no-mlflow", action="store_true", help="record nothing in MLflow")
    parser.add_argument("--json", action="store_true", help="print the eval scores as JSON on the last line")
    parser.set_defaults(func=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    from orchestrator.finetune.driver import finetune
    from orchestrator.finetune.run import FinetuneSettings

    settings = FinetuneSettings(
        model=args.model,
        train=args.train,
        eval=args.eval,
        out=args.out,
        text_field=args.text_field,
        pair_field=args.pair_field,
        label_field=args.label_field,
        task=args.task,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        max_seq_length=args.max_seq_length,
        seeds=args.seeds,
        first_seed=args.first_seed,
        warmup_share=args.warmup,
        dropout=args.dropout,
        log_every=args.log_every,
        num_workers=args.num_workers,
        use_gpu=args.gpu,
        cpus_per_worker=args.cpus_per_worker,
        tokenizer=args.tokenizer,
        mlflow_enabled=not args.no_mlflow,
        tracking_uri=args.tracking_uri,
        experiment_name=args.experiment,
    )
    result = finetune(settings)
    say("")
    if len(result.per_seed) > 1:
        for seed in result.per_seed:
            scores = {k: v for k, v in seed.items() if k not in ("seed", "epoch")}
            say(f"seed {seed['seed']} (best epoch {seed['epoch']}): {_scores_text(scores)}")
        spread = "  ".join(
            f"{k} {v:.4f} (min {result.spread[k]['min']:.4f}, max {result.spread[k]['max']:.4f}, "
            f"std {result.spread[k]['std']:.4f})"
            for k, v in result.scores.items()
        )
        say(f"median over {len(result.per_seed)} seeds: {spread}")
    else:
        say(f"eval (best epoch {result.per_seed[0]['epoch']}): {_scores_text(result.scores)}")
    truncated = ", ".join(f"{share:.1%} of {name}" for name, share in result.truncated.items())
    say(f"texts cut to the sequence length: {truncated}")
    exported = next(s for s in result.per_seed if s["seed"] == result.best_seed)
    exported_scores = {k: v for k, v in exported.items() if k not in ("seed", "epoch")}
    say(
        f"The model (seed {result.best_seed}, epoch {exported['epoch']}: {_scores_text(exported_scores)}; HF "
        f"format with its tokenizer and labels) is in {result.final_dir}"
    )
    if result.mlflow_link:
        say(f"See the run in MLflow: {result.mlflow_link}")
    if args.json:
        say(json.dumps(result.to_json()))
    return 0


def _scores_text(scores: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.4f}" for name, value in scores.items())
