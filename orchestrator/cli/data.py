"""`bert-pretrain` subcommands for data: `tokenizer train`, `prepare` and `data inspect`.

Heavy imports (Ray, tokenizers) happen inside the handlers so that `bert-pretrain --help` stays fast.
"""

from __future__ import annotations

import argparse
import json

from common.console import say

CORPUS_HELP = (
    "corpus files, directories, globs or URIs (s3://, gs://); the word `builtin` is the embedded default "
    "corpus (the Python standard library's docstrings)"
)


def add_corpus_format_arguments(parser: argparse.ArgumentParser) -> None:
    """--format and --text-field: how to read a corpus (shared by every command that reads one)."""
    from data.config import INPUT_FORMATS, PrepareConfig

    defaults = PrepareConfig()
    parser.add_argument(
        "--format", default=defaults.input_format, choices=INPUT_FORMATS, help="corpus format"
    )
    parser.add_argument(
        "--text-field", default=defaults.text_field, help="JSONL field / Parquet or HF column of the text"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    _register_tokenizer(subparsers)
    _register_prepare(subparsers)
    _register_inspect(subparsers)


def _register_tokenizer(subparsers: argparse._SubParsersAction) -> None:
    from data.config import TokenizerConfig

    defaults = TokenizerConfig()
    tokenizer = subparsers.add_parser(
        "tokenizer", help="train a WordPiece tokenizer", description="Tokenizers."
    )
    actions = tokenizer.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    train = actions.add_parser(
        "train",
        help="train a BERT WordPiece tokenizer on a corpus",
        description="Train a BERT WordPiece tokenizer ([PAD]=0, [UNK], [CLS], [SEP], [MASK]) with HF "
        "tokenizers; writes tokenizer.json, vocab.txt and tokenizer_config.json, which "
        "transformers.BertTokenizerFast.from_pretrained(DIR) loads.",
    )
    train.add_argument("--corpus", nargs="+", required=True, metavar="PATH", help=CORPUS_HELP)
    train.add_argument(
        "--vocab-size",
        type=int,
        default=defaults.vocab_size,
        help=f"vocabulary size (default {defaults.vocab_size})",
    )
    train.add_argument(
        "--min-frequency",
        type=int,
        default=defaults.min_frequency,
        help=f"least count of a learned piece (default {defaults.min_frequency})",
    )
    train.add_argument("--out", required=True, metavar="DIR", help="directory to write the tokenizer to")
    train.add_argument("--cased", action="store_true", help="keep case and accents (default: uncased)")
    add_corpus_format_arguments(train)
    train.set_defaults(func=run_tokenizer_train)


def _register_prepare(subparsers: argparse._SubParsersAction) -> None:
    from data.config import DOCUMENT_RULES, MAX_SEQ_LENGTH, OBJECTIVES, PrepareConfig

    defaults = PrepareConfig()
    prepare = subparsers.add_parser(
        "prepare",
        help="tokenize a corpus into sentence-pair examples (Parquet shards) with Ray",
        description="Run the Ray pipeline: documents -> sentences -> token ids -> [CLS] A [SEP] B [SEP] "
        "examples with balanced NSP labels (as the original BERT builder), or full sequences with "
        "--objective mlm -> Parquet shards of even size in a seeded random order + manifest.json. Joins the "
        "Ray cluster in RAY_ADDRESS or starts a local one. The output depends only on the inputs and --seed.",
    )
    prepare.add_argument("--corpus", nargs="+", required=True, metavar="PATH", help=CORPUS_HELP)
    prepare.add_argument(
        "--tokenizer", required=True, metavar="DIR", help="tokenizer dir, tokenizer.json or vocab.txt"
    )
    prepare.add_argument("--out", required=True, metavar="DIR", help="prepared directory to write")
    prepare.add_argument(
        "--max-seq-length",
        type=int,
        default=defaults.max_seq_length,
        help=f"tokens per example, at most {MAX_SEQ_LENGTH} (default {defaults.max_seq_length})",
    )
    prepare.add_argument(
        "--short-seq-prob",
        type=float,
        default=defaults.short_seq_prob,
        help=f"chance of a shorter target length (default {defaults.short_seq_prob})",
    )
    prepare.add_argument("--objective", default=defaults.objective, choices=OBJECTIVES, help="example kind")
    prepare.add_argument(
        "--documents",
        default=defaults.documents,
        choices=DOCUMENT_RULES,
        help="plain text: a file is a document (default), or blank lines separate documents (the BERT "
        "format always uses blank lines; a JSONL/Parquet/HF row is a document)",
    )
    prepare.add_argument(
        "--eval-fraction", type=float, default=defaults.eval_fraction, help="share of documents held out"
    )
    prepare.add_argument("--seed", type=int, default=defaults.seed, help="seed of every random choice")
    add_corpus_format_arguments(prepare)
    prepare.add_argument(
        "--examples-per-shard",
        type=int,
        default=defaults.examples_per_shard,
        help=f"examples per Parquet shard (default {defaults.examples_per_shard})",
    )
    prepare.set_defaults(func=run_prepare)


def _register_inspect(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="look at prepared data", description="Prepared data.")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect",
        help="show masked examples and one epoch's masking statistics",
        description="Print decoded examples as the model sees them ([MASK]->word: masked, word->other: "
        "random replacement, (word): kept but predicted) and the masking rate, the [MASK]/random/kept "
        "shares and the NSP share over one epoch.",
    )
    inspect.add_argument("directory", metavar="DIR", help="a prepared directory")
    inspect.add_argument("-n", type=int, default=5, help="examples to show (default 5)")
    inspect.add_argument("--split", default="train", help="train or eval")
    inspect.add_argument("--seed", type=int, default=0, help="masking seed")
    inspect.add_argument("--epoch", type=int, default=0, help="epoch whose masks to show")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(func=run_inspect)


def run_tokenizer_train(args: argparse.Namespace) -> int:
    from common import storage
    from common.errors import UserError
    from data import TokenizerConfig, load_tokenizer, train_tokenizer
    from data.tokenizer import SPECIAL_TOKENS
    from orchestrator.train.preflight import TOKENIZER_SETTINGS_FILE

    if args.vocab_size < 1:
        raise UserError(f"--vocab-size {args.vocab_size}: give a positive size (BERT's is 30522)")
    replaced = _tokenizer_files_to_replace(args.out)
    config = TokenizerConfig(
        vocab_size=args.vocab_size, lowercase=not args.cased, min_frequency=args.min_frequency
    )
    train_tokenizer(args.corpus, args.out, config, input_format=args.format, text_field=args.text_field)
    if TOKENIZER_SETTINGS_FILE in replaced:  # `train` built the old one; this one is the user's own
        storage.remove_file(storage.join(args.out, TOKENIZER_SETTINGS_FILE))
    size = load_tokenizer(args.out).get_vocab_size()
    action = f"replaced the tokenizer ({', '.join(replaced)}) in" if replaced else "wrote a tokenizer to"
    say(f"{action} {args.out}: {size:,} tokens")
    if size > args.vocab_size:
        say(
            f"(more than --vocab-size {args.vocab_size}: a WordPiece vocabulary always holds the "
            f"{len(SPECIAL_TOKENS)} special tokens and every character of the corpus)"
        )
    return 0


def _tokenizer_files_to_replace(out: str) -> list[str]:
    """The tokenizer files already in `out` (replaced); a UserError when `out` is a file or holds others."""
    from common import storage
    from common.errors import UserError
    from data.tokenizer import TOKENIZER_FILES
    from orchestrator.train.preflight import TOKENIZER_SETTINGS_FILE

    if storage.is_file(out):
        raise UserError(f"--out {out} is a file: give a folder for the tokenizer (it is created if missing)")
    files = storage.list_files(out)
    others = [name for name in files if name not in (*TOKENIZER_FILES, TOKENIZER_SETTINGS_FILE)]
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise UserError(
            f"--out {out} holds other files than a tokenizer ({shown}): give a new or empty folder (a folder "
            "that holds only a tokenizer is replaced)"
        )
    return files


def run_prepare(args: argparse.Namespace) -> int:
    from data import PrepareConfig, prepare

    config = PrepareConfig(
        max_seq_length=args.max_seq_length,
        short_seq_prob=args.short_seq_prob,
        objective=args.objective,
        eval_fraction=args.eval_fraction,
        input_format=args.format,
        documents=args.documents,
        text_field=args.text_field,
        seed=args.seed,
        examples_per_shard=args.examples_per_shard,
    )
    prepare(args.corpus, args.tokenizer, args.out, config)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from data import load_manifest
    from data.inspect_prepared import decoded_examples, masking_statistics

    manifest = load_manifest(args.directory)
    examples = decoded_examples(args.directory, args.n, seed=args.seed, epoch=args.epoch, split=args.split)
    statistics = masking_statistics(args.directory, seed=args.seed, epoch=args.epoch, split=args.split)
    if args.json:
        say(json.dumps({"counts": manifest.counts, "masking": statistics, "examples": examples}, indent=2))
        return 0
    for example in examples:
        say(f"example {example['example_id']} (next_sentence_label {example['next_sentence_label']}):")
        say(f"  {example['tokens']}")
    say(
        f"{statistics['examples']:,} examples, masking (epoch {args.epoch}): "
        f"rate {statistics['mask_rate']:.3f}, "
        f"[MASK] {statistics['mask_token_share']:.3f}, random {statistics['random_token_share']:.3f}, "
        f"kept {statistics['kept_share']:.3f}; NSP random share {statistics['nsp_random_share']:.3f}"
    )
    return 0
