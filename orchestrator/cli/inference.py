"""`bert-pretrain` subcommands for a pretrained model: `fill-mask`, `nsp`, `embed` and `eval`.

MODEL is an HF BERT checkpoint folder (a run's final/ folder is one) or a training checkpoint folder.
Heavy imports (torch, Ray) happen inside the handlers so that `bert-pretrain --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from common.console import say
from orchestrator.cli.data import add_corpus_format_arguments

MODEL_HELP = "model folder: a run's final/, any HF BERT checkpoint folder, or a training checkpoint folder"
TOKENIZER_HELP = "tokenizer dir (tokenizer.json or vocab.txt); default: the one in the model folder"
DEVICE_HELP = "auto (a GPU when there is one), cpu or cuda"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    fill = subparsers.add_parser(
        "fill-mask",
        help="predict the words behind [MASK]",
        description="Print the most probable tokens, with their probabilities, for each [MASK] in TEXT.",
    )
    _model_arguments(fill)
    fill.add_argument("text", help='text with one or more [MASK], e.g. "He got bit by [MASK]."')
    fill.add_argument("--top-k", type=int, default=5, help="tokens to show per [MASK] (default 5)")
    fill.add_argument("--json", action="store_true", help="print JSON")
    fill.set_defaults(func=run_fill_mask)

    nsp = subparsers.add_parser(
        "nsp",
        help="score whether sentence B follows sentence A",
        description="Print the probability that SECOND follows FIRST, from the next-sentence head (needs a "
        "model pretrained with NSP).",
    )
    _model_arguments(nsp)
    nsp.add_argument("first", help="sentence A")
    nsp.add_argument("second", help="sentence B")
    nsp.add_argument("--json", action="store_true", help="print JSON")
    nsp.set_defaults(func=run_nsp)

    embed = subparsers.add_parser(
        "embed",
        help="contextual token representations of a text, or vectors of a whole corpus",
        description="With --text: each token with the shape and norm of its last-layer representation. "
        "With --input CORPUS --out DIR: a row per document, with one vector (--pooling cls or mean) or one "
        "per token (--pooling tokens), written to Parquet by Ray Data over --num-workers model replicas (one "
        "GPU each with --gpu). Joins the Ray cluster in RAY_ADDRESS or starts a local one.",
    )
    _model_arguments(embed)
    what = embed.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="one text to show token by token")
    what.add_argument("--input", nargs="+", metavar="CORPUS", help="corpus files, directories, globs or URIs")
    embed.add_argument("--out", metavar="DIR", help="Parquet folder to write (with --input)")
    embed.add_argument(
        "--pooling",
        default="cls",
        choices=("cls", "mean", "tokens"),
        help="cls or mean: one vector a document (default cls); tokens: every token's vector",
    )
    embed.add_argument("--num-workers", type=int, default=1, help="model replicas (Ray actors)")
    embed.add_argument("--gpu", action="store_true", help="one GPU per replica")
    embed.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per replica (default 1)")
    embed.add_argument("--batch-size", type=int, default=32, help="documents per forward pass")
    embed.add_argument("--max-length", type=int, help="truncate documents to this many tokens")
    add_corpus_format_arguments(embed)
    embed.add_argument("--json", action="store_true", help="print JSON (with --text: the vectors too)")
    embed.set_defaults(func=run_embed)

    evaluate = subparsers.add_parser(
        "eval",
        help="MLM loss, perplexity and accuracy, NSP accuracy on held-out prepared data",
        description="Evaluate MODEL on a split of a prepared directory with fixed masks (--seed), so that "
        "two models compare on exactly the same masked tokens; optionally log the numbers to an MLflow run.",
    )
    _model_arguments(evaluate)
    evaluate.add_argument("--data", required=True, metavar="PREPARED_DIR", help="a prepared directory")
    evaluate.add_argument("--split", default="eval", help="split to evaluate (default eval)")
    evaluate.add_argument(
        "--seed", type=int, default=0, help="masking seed (default 0; training's own eval uses train.seed)"
    )
    evaluate.add_argument("--batch-size", type=int, default=32, help="examples per forward pass")
    evaluate.add_argument("--mlflow-run", metavar="RUN_ID", help="log the metrics to this MLflow run")
    evaluate.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(func=run_eval)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("--tokenizer", metavar="DIR", help=TOKENIZER_HELP)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help=DEVICE_HELP)


def run_fill_mask(args: argparse.Namespace) -> int:
    from orchestrator.inference.loading import load_model
    from orchestrator.inference.predict import fill_mask

    loaded = load_model(args.model, args.tokenizer, args.device)
    predictions = fill_mask(loaded, args.text, args.top_k)
    if args.json:
        say(json.dumps([[dataclasses.asdict(p) for p in mask] for mask in predictions], indent=2))
        return 0
    for number, mask in enumerate(predictions, start=1):
        say(f"[MASK] {number}:")
        for prediction in mask:
            say(f"  {prediction.probability:8.4f}  {prediction.token}")
    return 0


def run_nsp(args: argparse.Namespace) -> int:
    from orchestrator.inference.loading import load_model
    from orchestrator.inference.predict import next_sentence_probability

    probability = next_sentence_probability(
        load_model(args.model, args.tokenizer, args.device), args.first, args.second
    )
    if args.json:
        say(json.dumps({"is_next_probability": probability}))
    else:
        say(f"P(B follows A) = {probability:.4f}")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from common.errors import UserError

    if args.text is not None:
        if args.out:
            raise UserError("--out goes with --input CORPUS; --text prints to the terminal")
        return _show_token_representations(args)
    if not args.out:
        raise UserError("--input CORPUS needs --out DIR, the Parquet folder to write")
    from orchestrator.inference.embed import EmbedSettings, embed_corpus

    settings = EmbedSettings(
        pooling=args.pooling,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        use_gpu=args.gpu,
        cpus_per_worker=args.cpus_per_worker,
        max_length=args.max_length,
        input_format=args.format,
        text_field=args.text_field,
    )
    rows = embed_corpus(args.model, args.input, args.out, settings, args.tokenizer)
    if args.json:
        say(json.dumps({"rows": rows, "out": args.out}))
    else:
        say(f"wrote {rows:,} documents' representations ({args.pooling} pooling) to {args.out}")
    return 0


def _show_token_representations(args: argparse.Namespace) -> int:
    from orchestrator.inference.loading import load_model
    from orchestrator.inference.predict import token_representations

    tokens, vectors = token_representations(load_model(args.model, args.tokenizer, args.device), args.text)
    norms = vectors.norm(dim=-1).tolist()
    if args.json:
        rows = [
            {"token": t, "norm": n, "vector": v}
            for t, n, v in zip(tokens, norms, vectors.tolist(), strict=True)
        ]
        say(json.dumps({"shape": list(vectors.shape), "tokens": rows}))
        return 0
    say(f"{len(tokens)} tokens, each a vector of {vectors.shape[1]} (last layer):")
    for token, norm in zip(tokens, norms, strict=True):
        say(f"  {token:<20} shape ({vectors.shape[1]},)  norm {norm:.4f}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from orchestrator.inference.evaluate import evaluate, log_to_mlflow
    from orchestrator.inference.loading import load_model

    loaded = load_model(args.model, args.tokenizer, args.device)
    result = evaluate(loaded, args.data, split=args.split, seed=args.seed, batch_size=args.batch_size)
    if args.mlflow_run:
        from orchestrator.config import MlflowConfig
        from orchestrator.tracking.client import resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(MlflowConfig(tracking_uri=args.tracking_uri))
        log_to_mlflow(result, args.mlflow_run, tracking_uri, args.split)
    if args.json:
        say(json.dumps(result.metrics(), indent=2))
        return 0
    nsp = (
        "n/a (no NSP head or no sentence pairs)"
        if result.nsp_accuracy is None
        else f"{result.nsp_accuracy:.4f}"
    )
    say(
        f"{args.split}: {result.examples:,} examples, {result.mlm_tokens:,} masked tokens "
        f"(seed {args.seed})\n  MLM loss {result.mlm_loss:.4f}  perplexity {result.perplexity:.2f}  "
        f"MLM accuracy {result.mlm_accuracy:.4f}  NSP accuracy {nsp}"
    )
    if args.mlflow_run:
        say(f"logged to MLflow run {args.mlflow_run}")
    return 0
