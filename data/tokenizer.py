"""WordPiece tokenizer: training with HF `tokenizers`, loading (tokenizer.json or vocab.txt) and hashing.

A trained directory holds tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json, which
`transformers.BertTokenizerFast.from_pretrained(dir)` loads and which give the same ids as ours. The directory
may be a local folder or a bucket URI.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from common import storage
from data.config import TokenizerConfig
from data.errors import DataError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
"""In id order: a tokenizer we train has [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4."""
TOKENIZER_FILE, VOCAB_FILE, CONFIG_FILE = "tokenizer.json", "vocab.txt", "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_FILES = (TOKENIZER_FILE, VOCAB_FILE, CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE)
"""What a tokenizer folder holds (and what a model folder holds beside the weights)."""


def train_tokenizer(
    corpus: list[str],
    out_dir: str,
    config: TokenizerConfig | None = None,
    input_format: str = "auto",
    text_field: str = "text",
) -> str:
    """Train a BERT WordPiece tokenizer on corpus paths (as `prepare` takes them); write it to `out_dir`."""
    from data.readers import iter_corpus_texts, resolve_corpus

    config = config or TokenizerConfig()
    texts = iter_corpus_texts(resolve_corpus(corpus, input_format), text_field)
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    _set_bert_pipeline(tokenizer, config.lowercase)
    trainer = trainers.WordPieceTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokenizer.get_vocab_size() <= len(SPECIAL_TOKENS):
        raise DataError("the tokenizer corpus is empty (no words to learn); check --corpus")
    _set_post_processor(tokenizer)
    save_tokenizer(tokenizer, out_dir, config.lowercase)
    return out_dir


def _set_bert_pipeline(tokenizer: Tokenizer, lowercase: bool) -> None:
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")


def _set_post_processor(tokenizer: Tokenizer) -> None:
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )


def save_tokenizer(tokenizer: Tokenizer, out_dir: str, lowercase: bool) -> None:
    """Write tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json."""
    storage.write_text(storage.join(out_dir, TOKENIZER_FILE), tokenizer.to_str(pretty=True))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    storage.write_text(storage.join(out_dir, VOCAB_FILE), "".join(f"{token}\n" for token, _ in vocab))
    special_map = {"unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK}
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lowercase,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": 512,
        **special_map,
    }
    _write_json(storage.join(out_dir, CONFIG_FILE), tokenizer_config)
    _write_json(storage.join(out_dir, SPECIAL_TOKENS_MAP_FILE), special_map)


def _write_json(path: str, value: dict) -> None:
    storage.write_text(path, json.dumps(value, indent=2) + "\n")


def load_tokenizer(path: str) -> Tokenizer:
    """Load a directory holding tokenizer.json or vocab.txt, or either file itself."""
    tokenizer_file, vocab_file = _tokenizer_files(path)
    if tokenizer_file:
        return Tokenizer.from_str(storage.read_text(tokenizer_file))
    vocab = {}
    lines = storage.read_text(vocab_file).split("\n")  # not splitlines(): a token may hold U+2028
    for index, line in enumerate(lines[:-1] if lines[-1] == "" else lines):
        vocab.setdefault(line, index)
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise DataError(f"{vocab_file} lacks the special tokens {missing}; a BERT vocab needs all of them")
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK))
    _set_bert_pipeline(tokenizer, _lowercase_setting(_parent(vocab_file)))
    _set_post_processor(tokenizer)
    # "[MASK]" in a text is one token, as in a tokenizer.json (ids stay: the tokens are in the vocabulary).
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def _tokenizer_files(path: str) -> tuple[str | None, str | None]:
    if storage.is_file(path):
        return (path, None) if path.endswith(".json") else (None, path)
    candidates = (storage.join(path, TOKENIZER_FILE), storage.join(path, VOCAB_FILE))
    tokenizer_file, vocab_file = (c if storage.is_file(c) else None for c in candidates)
    if tokenizer_file or vocab_file:
        return tokenizer_file, vocab_file
    if not storage.exists(path):
        raise DataError(
            f"tokenizer {path} does not exist; train one with `bert-pretrain tokenizer train --out {path}`"
        )
    raise DataError(
        f"{path} holds neither {TOKENIZER_FILE} nor {VOCAB_FILE}; "
        "train one with `bert-pretrain tokenizer train` or point --tokenizer at a BERT tokenizer"
    )


def _lowercase_setting(directory: str) -> bool:
    config_path = storage.join(directory, CONFIG_FILE)
    if storage.is_file(config_path):
        return bool(json.loads(storage.read_text(config_path)).get("do_lower_case", True))
    return True


def _parent(path: str) -> str:
    return posixpath.dirname(path) if storage.is_uri(path) else os.path.dirname(os.path.abspath(path))


def tokenizer_hash(tokenizer: str | Tokenizer) -> str:
    """A hash of what the tokenizer (or the one at a path) does: its canonical serialisation, the same for
    every copy of it."""
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = load_tokenizer(tokenizer)
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """{"pad": id, "unk": id, "cls": id, "sep": id, "mask": id}; a DataError when one is missing."""
    ids = {}
    for name, token in zip(("pad", "unk", "cls", "sep", "mask"), SPECIAL_TOKENS, strict=True):
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise DataError(f"the tokenizer has no {token} token; BERT pretraining needs {SPECIAL_TOKENS}")
        ids[name] = token_id
    return ids


def copy_tokenizer(source: str, out_dir: str) -> None:
    """Write `source` (a directory or a file) as a complete tokenizer directory at `out_dir`."""
    tokenizer_file, vocab_file = _tokenizer_files(source)
    lowercase = _lowercase_setting(_parent(tokenizer_file or vocab_file))
    save_tokenizer(load_tokenizer(source), out_dir, lowercase)
