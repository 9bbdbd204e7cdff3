"""Settings of the data package: one dataclass per concern, each field documented on the line under it."""

from __future__ import annotations

from dataclasses import dataclass, fields

from data.errors import InvalidDataSetting

INPUT_FORMATS = ("auto", "bert", "text", "jsonl", "parquet", "hf")
OBJECTIVES = ("mlm+nsp", "mlm")
DOCUMENT_RULES = ("file", "blank-line")
MAX_SEQ_LENGTH = 512
"""The positions of every model preset (max_position_embeddings): a longer example could not be trained."""
PAD_TO_CHOICES = ("longest", "max_length")


@dataclass
class TokenizerConfig:
    vocab_size: int = 30522
    """Number of WordPiece entries, the five special tokens included."""
    lowercase: bool = True
    """Lower-case and strip accents before splitting (uncased BERT); `--cased` sets False."""
    min_frequency: int = 2
    """A merge must be seen this many times to enter the vocabulary."""


@dataclass
class PrepareConfig:
    max_seq_length: int = 128
    """Length of an example in tokens, [CLS] and [SEP]s included."""
    short_seq_prob: float = 0.1
    """Chance that a document's target length is drawn shorter (as in the original BERT builder)."""
    objective: str = "mlm+nsp"
    """"mlm+nsp": sentence pairs with NSP labels; "mlm": whole sentences packed into full sequences."""
    eval_fraction: float = 0.0
    """Share of whole documents held out for evaluation (chosen by a hash of the document and the seed)."""
    input_format: str = "auto"
    """auto | bert (a sentence a line) | text (paragraphs) | jsonl | parquet | hf (datasets.save_to_disk)."""
    documents: str = "file"
    """Plain text: "file" (a file is a document) or "blank-line" (blank lines separate documents). The BERT
    format always separates documents by blank lines; a JSONL, Parquet or HF dataset row is a document."""
    text_field: str = "text"
    """JSONL field, Parquet column or HF dataset column that holds the document text."""
    seed: int = 12345
    """Seed of every random choice; the output depends on it and on nothing else (not on blocks or CPUs)."""
    examples_per_shard: int = 65536
    """Examples per Parquet shard at most; the shards of a split differ by at most one example."""
    num_blocks: int | None = None
    """Ray tasks that read and build (None: one per work unit of the corpus). A tuning knob only: the output
    does not depend on it."""

    def validate(self) -> None:
        if not 8 <= self.max_seq_length <= MAX_SEQ_LENGTH:
            raise InvalidDataSetting(
                "max_seq_length",
                f"is {self.max_seq_length}; use 8 to {MAX_SEQ_LENGTH} (128 and 512 are usual): every model "
                f"preset has {MAX_SEQ_LENGTH} positions",
            )
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise InvalidDataSetting(
                "short_seq_prob", f"is {self.short_seq_prob}; use a probability in [0, 1]"
            )
        if self.objective not in OBJECTIVES:
            raise InvalidDataSetting(
                "objective", f"{self.objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise InvalidDataSetting("eval_fraction", f"is {self.eval_fraction}; use a share in [0, 1)")
        if self.input_format not in INPUT_FORMATS:
            raise InvalidDataSetting(
                "input_format", f"{self.input_format!r} is unknown; choose one of {', '.join(INPUT_FORMATS)}"
            )
        if self.documents not in DOCUMENT_RULES:
            raise InvalidDataSetting(
                "documents", f"{self.documents!r} is unknown; choose one of {', '.join(DOCUMENT_RULES)}"
            )
        if self.examples_per_shard < 1:
            raise InvalidDataSetting("examples_per_shard", f"is {self.examples_per_shard}; use 1 or more")

    def output_settings(self) -> dict:
        """The settings that shape the output (what a prepared directory is reused on)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "num_blocks"}


@dataclass
class MaskingConfig:
    mlm_probability: float = 0.15
    """Share of the non-special, non-padding tokens chosen for prediction."""
    mask_token_fraction: float = 0.8
    """Of the chosen tokens, the share replaced by [MASK]."""
    random_token_fraction: float = 0.1
    """Of the chosen tokens, the share replaced by a random non-special token; the rest stay unchanged."""
    whole_word_masking: bool = False
    """Choose whole words: every WordPiece of a chosen word is predicted."""
    pad_to: str = "longest"
    """"longest": pad each batch to its longest example; "max_length": to the prepared max_seq_length."""
    pad_to_multiple_of: int = 8
    """Round the padded length up to a multiple of this (tensor-core friendly); 1 turns it off."""

    def validate(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise InvalidDataSetting(
                "mlm_probability", f"is {self.mlm_probability}; use a probability in (0, 1)"
            )
        if (
            self.mask_token_fraction < 0
            or self.random_token_fraction < 0
            or (self.mask_token_fraction + self.random_token_fraction > 1.0)
        ):
            raise InvalidDataSetting(
                None,
                f"mask_token_fraction {self.mask_token_fraction} + random_token_fraction "
                f"{self.random_token_fraction} must be non-negative and sum to at most 1",
            )
        if self.pad_to not in PAD_TO_CHOICES:
            raise InvalidDataSetting(
                "pad_to", f"{self.pad_to!r} is unknown; choose one of {', '.join(PAD_TO_CHOICES)}"
            )
        if self.pad_to_multiple_of < 1:
            raise InvalidDataSetting("pad_to_multiple_of", f"is {self.pad_to_multiple_of}; use 1 or more")


def settings_from_dict(cls: type, values: dict):
    """Build `cls` from a dict read back from JSON, ignoring keys this version does not know."""
    known = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in values.items() if key in known})


@dataclass
class StreamConfig:
    partitions: int = 1024
    """Canonical partitions of an epoch (at most the global batch): each rank reads only the partitions under
    its share of the batch, so up to this many ranks never read a row twice. Part of the run's data order."""
    shuffle_window: int = 4096
    """Rows of a partition shuffled together; a rank's read task holds about this many rows per partition."""

    def validate(self) -> None:
        if self.partitions < 1:
            raise InvalidDataSetting(
                "partitions", f"is {self.partitions}; use 1 or more (1024 suits any cluster)"
            )
        if self.shuffle_window < 1:
            raise InvalidDataSetting("shuffle_window", f"is {self.shuffle_window}; use 1 or more rows")
