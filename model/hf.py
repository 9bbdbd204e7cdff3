"""Hugging Face BERT checkpoints: the weight-name mapping, `load_hf` and `save_hf`.

Reads a checkpoint directory that transformers saved for `BertModel`, `BertForMaskedLM` or
`BertForPreTraining` (config.json + model.safetensors, or pytorch_model.bin read with weights_only=True),
keys with or without the `bert.` prefix. Heads the checkpoint lacks keep their fresh initialisation and are
listed in a warning. A vocabulary padded with spare rows (NVIDIA's 30,528 rows for 30,522 tokens) loads into
a model of the tokenizer's true size (pass `vocab_size`): the spare rows are dropped. Writes config.json +
model.safetensors that
`transformers.BertForPreTraining.from_pretrained` loads with no missing or unexpected keys, always with the
tokenizer's true vocabulary size.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common.errors import UserError
from model.config import BertConfig

if TYPE_CHECKING:
    from model.bert import BertForPreTraining

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"

# Non-parameter buffers, and the decoder weight that HF ties to the word embeddings.
_IGNORED_HF_KEYS = {"embeddings.position_ids", "embeddings.token_type_ids", "cls.predictions.decoder.weight"}
# Our parameters that belong to a head: a checkpoint without them still loads.
_HEAD_PREFIXES = ("bert.pooler.", "mlm_", "nsp_head.")
# One tensor that tells each pretraining head is in a checkpoint (names without the `bert.` prefix).
MLM_HEAD_TENSOR = "cls.predictions.transform.dense.weight"
NSP_HEAD_TENSOR = "cls.seq_relationship.weight"
_VOCABULARY_ROWS = ("bert.embeddings.word.weight", "mlm_bias")


class CheckpointError(UserError):
    """A checkpoint directory or file that cannot be read as a BERT checkpoint."""


def hf_key_map(config: BertConfig) -> dict[str, str]:
    """Our parameter name -> HF key (without the `bert.` prefix on encoder keys), except the fused QKV."""
    names = {
        "bert.embeddings.word.weight": "embeddings.word_embeddings.weight",
        "bert.embeddings.position.weight": "embeddings.position_embeddings.weight",
        "bert.embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
        "bert.embeddings.norm.weight": "embeddings.LayerNorm.weight",
        "bert.embeddings.norm.bias": "embeddings.LayerNorm.bias",
        "bert.pooler.weight": "pooler.dense.weight",
        "bert.pooler.bias": "pooler.dense.bias",
        "mlm_transform.weight": "cls.predictions.transform.dense.weight",
        "mlm_transform.bias": "cls.predictions.transform.dense.bias",
        "mlm_norm.weight": "cls.predictions.transform.LayerNorm.weight",
        "mlm_norm.bias": "cls.predictions.transform.LayerNorm.bias",
        "mlm_bias": "cls.predictions.bias",
        "nsp_head.weight": "cls.seq_relationship.weight",
        "nsp_head.bias": "cls.seq_relationship.bias",
    }
    for i in range(config.num_hidden_layers):
        ours, theirs = f"bert.layers.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            names[f"{ours}attention_out.{kind}"] = f"{theirs}attention.output.dense.{kind}"
            names[f"{ours}attention_norm.{kind}"] = f"{theirs}attention.output.LayerNorm.{kind}"
            names[f"{ours}mlp_in.{kind}"] = f"{theirs}intermediate.dense.{kind}"
            names[f"{ours}mlp_out.{kind}"] = f"{theirs}output.dense.{kind}"
            names[f"{ours}mlp_norm.{kind}"] = f"{theirs}output.LayerNorm.{kind}"
    return names


def _qkv_keys(layer: int, kind: str) -> tuple[str, str, str]:
    return tuple(f"encoder.layer.{layer}.attention.self.{part}.{kind}" for part in ("query", "key", "value"))


def _hf_name(key: str) -> str:
    """The full HF name as transformers' BertForPreTraining spells it."""
    return key if key.startswith("cls.") else f"bert.{key}"


def to_hf_state_dict(model: BertForPreTraining) -> dict[str, torch.Tensor]:
    """HF BertForPreTraining tensors for this model: QKV split, vocabulary padding cut off."""
    return _hf_tensors(model.state_dict(), model.config, hf_key_map(model.config))


def encoder_hf_state_dict(state_dict: dict[str, torch.Tensor], config: BertConfig) -> dict[str, torch.Tensor]:
    """HF `bert.*` tensors (encoder and pooler, as every HF BERT class names them) from a state dict whose
    encoder keys start with `bert.` (BertForPreTraining's, BertForSequenceClassification's)."""
    encoder_names = {k: v for k, v in hf_key_map(config).items() if k.startswith("bert.")}
    return _hf_tensors(state_dict, config, encoder_names)


def _hf_tensors(
    ours: dict[str, torch.Tensor], config: BertConfig, names: dict[str, str]
) -> dict[str, torch.Tensor]:
    out = {}
    for name, key in names.items():
        tensor = ours[name]
        if name in _VOCABULARY_ROWS:
            tensor = tensor[: config.vocab_size]
        out[_hf_name(key)] = tensor
    for i in range(config.num_hidden_layers):
        for kind in ("weight", "bias"):
            parts = ours[f"bert.layers.{i}.qkv.{kind}"].chunk(3, dim=0)
            for key, part in zip(_qkv_keys(i, kind), parts, strict=True):
                out[_hf_name(key)] = part
    return {key: tensor.detach().contiguous().cpu() for key, tensor in out.items()}


def save_hf(model: BertForPreTraining, path: str | Path) -> None:
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
    save_file(to_hf_state_dict(model), directory / SAFETENSORS_FILE, metadata={"format": "pt"})


def read_hf_config(directory: Path, **overrides) -> BertConfig:
    config_path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; from_hf expects an HF checkpoint directory")
    if not config_path.is_file():
        raise CheckpointError(
            f"{directory} is not a BERT checkpoint: {CONFIG_FILE} not found "
            f"(an HF checkpoint directory holds {CONFIG_FILE} and {SAFETENSORS_FILE} or {PYTORCH_FILE})"
        )
    try:
        hf_config = json.loads(config_path.read_text())
        return BertConfig.from_hf_dict(hf_config, **overrides)
    except (json.JSONDecodeError, ValueError, TypeError) as error:
        raise CheckpointError(f"{config_path}: not a usable BERT config: {error}") from error


def read_hf_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The checkpoint's tensors and the file they came from (safetensors preferred)."""
    safetensors_path, pytorch_path = directory / SAFETENSORS_FILE, directory / PYTORCH_FILE
    try:
        if safetensors_path.is_file():
            return load_file(safetensors_path), safetensors_path
        if pytorch_path.is_file():
            return torch.load(pytorch_path, map_location="cpu", weights_only=True), pytorch_path
    except (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        path = safetensors_path if safetensors_path.is_file() else pytorch_path
        raise CheckpointError(f"{path}: cannot read the weights: {error}") from error
    raise CheckpointError(
        f"{directory} has no weights: expected {SAFETENSORS_FILE} or {PYTORCH_FILE} "
        "(a sharded checkpoint must be merged into one file first)"
    )


def tensor_names(directory: Path) -> list[str]:
    """The checkpoint's tensor names as stored; only the header of a safetensors file is read."""
    from safetensors import safe_open

    path = directory / SAFETENSORS_FILE
    if not path.is_file():
        return list(read_hf_weights(directory)[0])
    try:
        with safe_open(path, framework="pt") as file:
            return list(file.keys())
    except SafetensorError as error:
        raise CheckpointError(f"{path}: cannot read the weights: {error}") from error


def pretraining_heads(names: list[str], hf_config: dict) -> tuple[bool, bool]:
    """Whether a checkpoint with these tensor names and this config.json holds a trained MLM head and a
    trained NSP head. A run of ours without NSP exports its untrained NSP head with `use_nsp: false` in
    config.json: that one does not count."""
    normalised = _normalise_keys(dict.fromkeys(names))
    trained_with_nsp = hf_config.get("use_nsp", True) is not False
    return MLM_HEAD_TENSOR in normalised, NSP_HEAD_TENSOR in normalised and trained_with_nsp


def _normalise_keys(state_dict: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    """Strip the `bert.` prefix and rename TF-era LayerNorm `gamma`/`beta` to `weight`/`bias`."""
    out = {}
    for key, tensor in state_dict.items():
        key = key.removeprefix("bert.")
        if key.endswith(".gamma") or key.endswith(".beta"):
            key = key.rsplit(".", 1)[0] + (".weight" if key.endswith(".gamma") else ".bias")
        out[key] = tensor
    return out


def load_hf(cls: type[BertForPreTraining], path: str | Path, **config_overrides) -> BertForPreTraining:
    directory = Path(path)
    model = cls(read_hf_config(directory, **config_overrides))
    copy_hf_weights(model, directory)
    return model


def copy_hf_weights(model: BertForPreTraining, directory: Path) -> None:
    """Copy the HF checkpoint's tensors into `model`, whose sizes must be the checkpoint's (its vocabulary
    may be smaller than a padded one's rows). Heads the checkpoint lacks keep the model's values (warned)."""
    config = model.config
    raw_state_dict, weights_path = read_hf_weights(directory)
    hf = _normalise_keys(raw_state_dict)
    if "cls.predictions.bias" not in hf and "cls.predictions.decoder.bias" in hf:
        hf["cls.predictions.bias"] = hf.pop("cls.predictions.decoder.bias")
    hf.pop("cls.predictions.decoder.bias", None)  # tied to cls.predictions.bias

    ours = model.state_dict()
    used, missing_heads, loaded = set(), [], {}
    names = hf_key_map(config)
    vocabulary_keys = {names[name] for name in _VOCABULARY_ROWS}

    def take(key: str, expected_shape: tuple[int, ...], required: bool) -> torch.Tensor | None:
        if key not in hf:
            if required:
                raise CheckpointError(
                    f"{weights_path}: missing tensor {_hf_name(key)!r}; not a BERT checkpoint"
                )
            missing_heads.append(_hf_name(key))
            return None
        tensor = hf[key]
        if key in vocabulary_keys and tensor.shape[0] > expected_shape[0]:
            tensor = tensor[: expected_shape[0]]  # a padded vocabulary: the spare rows hold no token
        if tuple(tensor.shape) != expected_shape:
            raise CheckpointError(
                f"{weights_path}: tensor {_hf_name(key)!r} has shape {tuple(tensor.shape)}, expected "
                f"{expected_shape} from {CONFIG_FILE} (hidden_size {config.hidden_size}, vocab_size "
                f"{config.vocab_size})"
            )
        used.add(key)
        return tensor

    for name, key in names.items():
        expected = tuple(ours[name].shape)
        if name in _VOCABULARY_ROWS:
            expected = (config.vocab_size, *expected[1:])
        tensor = take(key, expected, required=not name.startswith(_HEAD_PREFIXES))
        if tensor is not None:
            loaded[name] = tensor
    hidden = config.hidden_size
    for i in range(config.num_hidden_layers):
        for kind, shape in (("weight", (hidden, hidden)), ("bias", (hidden,))):
            parts = [take(key, shape, required=True) for key in _qkv_keys(i, kind)]
            loaded[f"bert.layers.{i}.qkv.{kind}"] = torch.cat(parts, dim=0)

    with torch.no_grad():
        for name, tensor in loaded.items():
            ours[name][: tensor.shape[0]].copy_(tensor)  # word embeddings / MLM bias: padding rows stay zero

    unexpected = sorted(set(hf) - used - _IGNORED_HF_KEYS)
    if missing_heads:
        warnings.warn(
            f"{weights_path} has no weights for {', '.join(missing_heads)}; these start freshly initialised",
            stacklevel=3,
        )
    if unexpected:
        warnings.warn(
            f"{weights_path}: ignored tensors that BERT pretraining does not use: {', '.join(unexpected)}",
            stacklevel=3,
        )
