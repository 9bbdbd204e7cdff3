"""The prepared data as the MLflow run's dataset input: the run page's and the runs table's Dataset column.

A prepared directory is logged as a dataset that holds no data, only what identifies and describes it: its
name (the directory's), its digest (the hash of its manifest.json, so every run on the same prepared data
shows the same dataset), its source (the directory's path or bucket URI), the schema of a prepared example
and its counts as the profile.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset

from common import storage
from common.redact import redact
from data.manifest import MANIFEST_FILE, Manifest

TRAINING_CONTEXT = "training"  # the Dataset column's label of a dataset a run trained on


def manifest_hash(prepared_dir: str) -> str:
    """The first 16 hex digits of the SHA-256 of the prepared directory's manifest.json."""
    manifest = storage.read_text(storage.join(prepared_dir, MANIFEST_FILE))
    return hashlib.sha256(manifest.encode()).hexdigest()[:16]


class PreparedDataSource(DatasetSource):
    """Where prepared data lives: a local folder or a bucket URI (credentials redacted)."""

    def __init__(self, uri: str):
        self.uri = redact(uri)

    @staticmethod
    def _get_source_type() -> str:
        return "prepared_bert_examples"

    def load(self, **kwargs: Any) -> str:
        return self.uri

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> PreparedDataSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> PreparedDataSource:
        return cls(source_dict["uri"])


class PreparedDataset(MetaDataset):
    """A prepared directory's metadata as an MLflow dataset, with the manifest's counts as its profile."""

    def __init__(self, prepared_dir: str, manifest: Manifest, digest: str):
        self._profile = {
            "examples": manifest.counts["examples"],
            "tokens": manifest.counts["tokens"],
            "documents": manifest.counts["documents"],
            "max_seq_length": manifest.settings.max_seq_length,
            "objective": manifest.settings.objective,
            "vocab_size": manifest.vocab_size,
            "tokenizer_hash": manifest.tokenizer_hash,
        }
        name = posixpath.basename(str(prepared_dir).rstrip("/"))
        super().__init__(PreparedDataSource(prepared_dir), name=name, digest=digest, schema=example_schema())

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}

    def to_entity(self):
        """The `mlflow.entities.Dataset` that `log_inputs` takes."""
        from mlflow.entities import Dataset

        fields = self.to_dict()
        keys = ("name", "digest", "source_type", "source", "schema", "profile")
        return Dataset(**{key: fields.get(key) for key in keys})


def example_schema():
    """A prepared example's columns (DESIGN.md: input_ids int32[n], token_type_ids int8[n], the NSP label)."""
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    return Schema(
        [
            ColSpec(Array(DataType.integer), "input_ids"),
            ColSpec(Array(DataType.integer), "token_type_ids"),
            ColSpec(DataType.integer, "next_sentence_label"),
        ]
    )


def prepared_dataset(prepared_dir: str, manifest: Manifest) -> PreparedDataset:
    return PreparedDataset(prepared_dir, manifest, manifest_hash(prepared_dir))


def log_dataset(client, run_id: str, dataset: PreparedDataset) -> None:
    """Log `dataset` as an input of the run, in the training context (a resumed run logs it once)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = client.get_run(run_id).inputs
    logged = {(d.dataset.name, d.dataset.digest) for d in (inputs.dataset_inputs if inputs else [])}
    if (dataset.name, dataset.digest) in logged:
        return
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, TRAINING_CONTEXT)]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset.to_entity(), tags)])
