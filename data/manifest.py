"""manifest.json of a prepared directory: the settings, tokenizer hash, counts and shards it was made with."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from common import storage
from common.redact import redact
from data.config import PrepareConfig, settings_from_dict
from data.errors import DataError

MANIFEST_FILE = "manifest.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 2


@dataclass
class Manifest:
    vocab_size: int
    """Size of the tokenizer's vocabulary (the model's vocab_size must be at least this)."""
    tokenizer_hash: str
    """`tokenizer_hash` of the tokenizer the examples were made with (a copy lives in tokenizer/)."""
    settings: PrepareConfig
    """The settings used."""
    special_token_ids: dict[str, int]
    """{"pad", "unk", "cls", "sep", "mask"} -> id."""
    counts: dict
    """documents, documents_per_split, sentences, tokens, truncated, dropped, replaced, skipped_binary_files,
    skipped_empty_files, input_bytes, examples {split: n}, random_next_sentence {split: n}."""
    shards: dict[str, list[str]]
    """{split: [shard paths relative to the prepared directory]}."""
    statistics: dict = field(default_factory=dict)
    """mean_sentences_per_document, mean_fill (tokens / (examples * max_seq_length)), padding_share,
    nsp_random_share (mlm+nsp)."""
    corpus: list[str] = field(default_factory=list)
    """The corpus paths as given (credentials in a URI redacted)."""
    elapsed_seconds: float = 0.0
    """Wall time of `prepare`, less the start of a local Ray (its build, as the summary's MB/s reports it)."""
    format_version: int = FORMAT_VERSION
    """Layout version of the prepared directory."""

    def matches(self, config: PrepareConfig, tokenizer_hash: str) -> bool:
        """Whether this directory was prepared with these settings and this tokenizer (so can be reused)."""
        return (
            self.format_version == FORMAT_VERSION
            and self.tokenizer_hash == tokenizer_hash
            and self.settings.output_settings() == config.output_settings()
        )

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "corpus": redact(self.corpus)}, indent=2) + "\n"


def load_manifest(prepared_dir: str) -> Manifest:
    """Read `prepared_dir/manifest.json`; a DataError naming the fix when it is missing or unreadable."""
    path = storage.join(prepared_dir, MANIFEST_FILE)
    if not storage.is_file(path):
        raise DataError(
            f"{prepared_dir} is not a prepared directory (no {MANIFEST_FILE}); "
            "make one with `bert-pretrain prepare --out DIR`"
        )
    try:
        values = json.loads(storage.read_text(path))
        values["settings"] = settings_from_dict(PrepareConfig, values["settings"])
        return Manifest(**values)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path} is unreadable ({error}); run `bert-pretrain prepare` again") from error
