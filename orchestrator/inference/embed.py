"""Embedding a whole corpus with Ray Data: documents -> model replicas (actors) -> one vector a document.

The corpus is read by the same readers as `prepare` (text, BERT format, JSONL, Parquet, HF datasets; local
paths or URIs). `map_batches` runs a pool of `CorpusEmbedder` actors, each holding the model once (on a GPU
when asked), so a cluster embeds a large corpus the way it pretrains. Each output row: `id` (the document key
`prepare` uses: a hash of the text, hex), `text`, `num_tokens` (fed to the model, after truncation) and
`embedding` (hidden_size floats; with pooling "tokens", one such vector per token, and a `tokens` column),
written to Parquet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from common import storage
from common.errors import UserError
from common.local_ray import init_ray
from data import DataError
from data.hashing import text_key
from data.readers import read_documents, resolve_corpus
from data.sentences import normalize_text
from data.tokenizer import PAD

POOLINGS = ("cls", "mean", "tokens")


@dataclass(frozen=True)
class EmbedSettings:
    pooling: str = "cls"
    """cls: the last layer at [CLS]; mean: the mean over the text's tokens ([CLS] and [SEP] included);
    tokens: every token's vector (and the tokens), no pooling."""
    batch_size: int = 32
    """Documents per forward pass."""
    num_workers: int = 1
    """Model replicas (Ray actors)."""
    use_gpu: bool = False
    """One GPU per replica."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per replica (also its torch threads, at least one)."""
    max_length: int | None = None
    """Tokens per document at most (longer ones are truncated); None: the model's max positions."""
    input_format: str = "auto"
    """How to read the corpus (as `prepare --format`)."""
    text_field: str = "text"
    """The JSONL field, Parquet or HF column of the text."""


class CorpusEmbedder:
    """Ray Data actor: one model replica; a batch of documents -> a batch of rows with one vector each."""

    def __init__(self, model_dir: str, tokenizer_dir: str | None, settings: EmbedSettings) -> None:
        import torch

        from orchestrator.inference.loading import load_model

        torch.set_num_threads(max(1, int(settings.cpus_per_worker)))
        self.loaded = load_model(model_dir, tokenizer_dir, device="cuda" if settings.use_gpu else "cpu")
        self.pooling = settings.pooling
        tokenizer = self.loaded.tokenizer
        config = self.loaded.model.config
        tokenizer.enable_truncation(
            min(settings.max_length or config.max_position_embeddings, config.max_position_embeddings)
        )
        tokenizer.enable_padding(pad_id=config.pad_token_id, pad_token=PAD)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [normalize_text(text) for text in batch.column("text").to_pylist()]
        vectors, num_tokens, tokens = self.embed(texts)
        columns = {
            "id": pa.array([f"{text_key(text):016x}" for text in texts], pa.string()),
            "text": pa.array(texts, pa.string()),
            "num_tokens": pa.array(num_tokens, pa.int32()),
        }
        hidden = vectors.shape[-1]
        if self.pooling == "tokens":
            offsets = pa.array(np.concatenate([[0], np.cumsum(num_tokens)]).astype(np.int32))
            flat = vectors.reshape(-1)  # the documents' token vectors, one after another
            columns["tokens"] = pa.ListArray.from_arrays(offsets, pa.array(sum(tokens, []), pa.string()))
            columns["embedding"] = pa.ListArray.from_arrays(
                offsets, pa.FixedSizeListArray.from_arrays(pa.array(flat), hidden)
            )
        else:
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), hidden)
        return pa.table(columns)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """float32 vectors: (N, hidden_size) pooled, or with pooling "tokens" (total tokens, hidden_size) for
        all texts one after another; the token count of each text; its tokens."""
        import torch

        loaded = self.loaded
        encodings = loaded.tokenizer.encode_batch(texts)

        def tensor(name: str) -> torch.Tensor:
            return torch.tensor([getattr(e, name) for e in encodings], device=loaded.device)

        attention_mask = tensor("attention_mask")  # (N, S)
        with torch.no_grad():
            sequence_output, _ = loaded.model.bert(
                tensor("ids"), tensor("type_ids"), attention_mask
            )  # (N, S, H)
        if self.pooling == "cls":
            vectors = sequence_output[:, 0]  # (N, H)
        elif self.pooling == "mean":
            weights = attention_mask.unsqueeze(-1).to(sequence_output.dtype)  # (N, S, 1)
            vectors = (sequence_output * weights).sum(dim=1) / weights.sum(dim=1)  # (N, H)
        else:
            vectors = sequence_output[attention_mask.bool()]  # (total tokens, H), row by row
        num_tokens = attention_mask.sum(dim=1).cpu().numpy()
        tokens = [encoding.tokens[:count] for encoding, count in zip(encodings, num_tokens, strict=True)]
        return vectors.float().cpu().numpy(), num_tokens, tokens


def embed_corpus(
    model_dir: str,
    corpus: list[str],
    out_dir: str,
    settings: EmbedSettings,
    tokenizer_dir: str | None = None,
) -> int:
    """Embed every document of `corpus` into Parquet files under `out_dir`; return the number of rows."""
    import ray.data

    if settings.pooling not in POOLINGS:
        raise UserError(f"pooling {settings.pooling!r} is unknown; choose one of {', '.join(POOLINGS)}")
    if settings.num_workers < 1 or settings.batch_size < 1:
        raise UserError("--num-workers and --batch-size must be 1 or more")
    if storage.list_files(out_dir):
        raise UserError(f"--out {out_dir} exists and is not empty; choose a new folder or delete it")
    files = resolve_corpus(corpus, settings.input_format)
    if files.total_bytes == 0:
        raise DataError(f"the corpus {corpus} is empty (0 bytes): there is nothing to embed")
    # Fail here, not inside an actor, on a folder that is not a model or a tokenizer that does not fit.
    from orchestrator.inference.loading import load_model

    load_model(model_dir, tokenizer_dir)
    init_ray(include_dashboard=False)
    documents = read_documents(files, settings.text_field)
    embedded = documents.map_batches(
        CorpusEmbedder,
        fn_constructor_kwargs={
            "model_dir": storage.absolute(model_dir),
            "tokenizer_dir": storage.absolute(tokenizer_dir),
            "settings": settings,
        },
        batch_size=settings.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=settings.num_workers),  # a fixed pool of model replicas
        num_cpus=settings.cpus_per_worker,
        num_gpus=1 if settings.use_gpu else 0,
    )
    embedded.write_parquet(out_dir)
    rows = _parquet_rows(out_dir)
    if rows == 0:
        storage.remove_dir(out_dir)
        raise DataError(
            f"the corpus {corpus} holds no documents (only blank lines?): there is nothing to embed"
        )
    return rows


def _parquet_rows(out_dir: str) -> int:
    import pyarrow.parquet as pq

    filesystem, inner = storage.resolve(out_dir)
    names = [name for name in storage.list_files(out_dir) if name.endswith(".parquet")]
    return sum(pq.ParquetFile(f"{inner}/{name}", filesystem=filesystem).metadata.num_rows for name in names)
