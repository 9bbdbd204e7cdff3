"""Hugging Face ModernBERT checkpoints: the config and weight-name mapping, `load_hf` and `save_hf`.

Reads a checkpoint directory that transformers saved for `ModernBertModel` or `ModernBertForMaskedLM`
(config.json + model.safetensors, or pytorch_model.bin read with weights_only=True), keys with or without the
`model.` prefix. config.json may be of transformers 5 (`layer_types`, `rope_parameters`) or 4
(`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`). A missing MLM head keeps its fresh
initialisation, with a warning. Writes config.json (both spellings) + model.safetensors that
`transformers.ModernBertForMaskedLM.from_pretrained` loads with no missing or unexpected keys, always with the
tokenizer's true vocabulary size. The file reading and errors are BERT's (`model/hf.py`).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from model.hf import CONFIG_FILE, SAFETENSORS_FILE, CheckpointError, read_hf_weights
from model.modernbert import ModernBertConfig

if TYPE_CHECKING:
    from model.modernbert import ModernBertForPreTraining

ARCHITECTURE = "ModernBertForMaskedLM"
# Our fields that HF's config.json does not have: how this implementation runs, not what the network is.
_OURS_ONLY = {"pad_vocab_multiple", "activation_checkpointing", "unpad", "unpadded_attention"}
# Written into config.json in transformers 5's spelling (layer_types, rope_parameters) as well.
_LAYER_PATTERN_FIELDS = {"global_attn_every_n_layers", "global_rope_theta", "local_rope_theta"}
_HEAD_PREFIX = "mlm_"
_VOCABULARY_ROWS = ("bert.embeddings.word.weight", "mlm_bias")
# The decoder weight that HF ties to the word embeddings.
_TIED_HF_KEY = "decoder.weight"
# HF's layer_types names, by "is global".
_LAYER_TYPES = {True: "full_attention", False: "sliding_attention"}


def config_to_hf(config: ModernBertConfig) -> dict[str, Any]:
    """The `config.json` of an HF `ModernBertForMaskedLM` with these sizes (true vocabulary size)."""
    fields = {
        k: v for k, v in dataclasses.asdict(config).items() if k not in _OURS_ONLY | _LAYER_PATTERN_FIELDS
    }
    return {
        "model_type": "modernbert",
        "architectures": [ARCHITECTURE],
        **fields,
        # transformers 5 reads these two; 4.x the three pattern fields below (5 ignores those given these).
        "layer_types": [_LAYER_TYPES[window is None] for window in config.attention_windows],
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": config.global_rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": config.local_rope_theta},
        },
        "global_attn_every_n_layers": config.global_attn_every_n_layers,
        "global_rope_theta": config.global_rope_theta,
        "local_rope_theta": config.local_rope_theta,
        "bos_token_id": config.cls_token_id,
        "eos_token_id": config.sep_token_id,
        "tie_word_embeddings": True,
    }


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> ModernBertConfig:
    """Our config from an HF ModernBERT `config.json` dict; `overrides` set our own fields."""
    if hf.get("model_type") != "modernbert":
        raise ValueError(f"model_type is {hf.get('model_type')!r}, expected 'modernbert'")
    if hf.get("tie_word_embeddings", True) is not True:
        raise ValueError("tie_word_embeddings is false; only a decoder tied to the word embeddings works")
    names = {f.name for f in dataclasses.fields(ModernBertConfig)} - _OURS_ONLY
    fields = {k: v for k, v in hf.items() if k in names and v is not None}
    if "layer_types" in hf:
        fields["global_attn_every_n_layers"] = _global_every(hf["layer_types"])
    for kind, field in (("full_attention", "global_rope_theta"), ("sliding_attention", "local_rope_theta")):
        rope = (hf.get("rope_parameters") or {}).get(kind) or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"rope_parameters.{kind}.rope_type is {rope['rope_type']!r}; only 'default'")
        if "rope_theta" in rope:
            fields[field] = rope["rope_theta"]
    if "rope_scaling" in hf and hf["rope_scaling"] is not None:
        raise ValueError(f"rope_scaling {hf['rope_scaling']!r} is not supported")
    return ModernBertConfig(**{**fields, **overrides})


def _global_every(layer_types: list[str]) -> int:
    """n such that layer i is global exactly when i % n == 0; an error for any other pattern."""
    count = len(layer_types)
    n = max(next((i for i, kind in enumerate(layer_types) if i > 0 and kind == "full_attention"), count), 1)
    expected = [_LAYER_TYPES[i % n == 0] for i in range(count)]
    if list(layer_types) != expected:
        raise ValueError(
            f"layer_types {layer_types} is not a global layer every n layers from the first; only that "
            "pattern is supported"
        )
    return n


def hf_key_map(config: ModernBertConfig) -> dict[str, str]:
    """Our parameter name -> HF key (encoder keys without the `model.` prefix)."""
    names: dict[str, str] = {}

    def add(ours: str, theirs: str, bias: bool) -> None:
        names[f"{ours}.weight"] = f"{theirs}.weight"
        if bias:
            names[f"{ours}.bias"] = f"{theirs}.bias"

    add("bert.embeddings.word", "embeddings.tok_embeddings", bias=False)
    add("bert.embeddings.norm", "embeddings.norm", config.norm_bias)
    for i in range(config.num_hidden_layers):
        ours, theirs = f"bert.layers.{i}.", f"layers.{i}."
        if i > 0:  # the first layer's attention norm is the identity
            add(f"{ours}attention_norm", f"{theirs}attn_norm", config.norm_bias)
        add(f"{ours}qkv", f"{theirs}attn.Wqkv", config.attention_bias)  # same (3, nh, hs) row order
        add(f"{ours}attention_out", f"{theirs}attn.Wo", config.attention_bias)
        add(f"{ours}mlp_norm", f"{theirs}mlp_norm", config.norm_bias)
        add(f"{ours}mlp_in", f"{theirs}mlp.Wi", config.mlp_bias)  # input then gate rows, as HF chunks them
        add(f"{ours}mlp_out", f"{theirs}mlp.Wo", config.mlp_bias)
    add("bert.final_norm", "final_norm", config.norm_bias)
    add("mlm_transform", "head.dense", config.classifier_bias)
    add("mlm_norm", "head.norm", config.norm_bias)
    if config.decoder_bias:
        names["mlm_bias"] = "decoder.bias"
    return names


def _hf_name(key: str) -> str:
    """The full HF name as transformers' ModernBertForMaskedLM spells it."""
    return key if key.startswith(("head.", "decoder.")) else f"model.{key}"


def to_hf_state_dict(model: ModernBertForPreTraining) -> dict[str, torch.Tensor]:
    """HF ModernBertForMaskedLM tensors for this model, vocabulary padding cut off."""
    config = model.config
    ours = model.state_dict()
    out = {}
    for name, key in hf_key_map(config).items():
        tensor = ours[name]
        if name in _VOCABULARY_ROWS:
            tensor = tensor[: config.vocab_size]
        out[_hf_name(key)] = tensor.detach().contiguous().cpu()
    return out


def save_hf(model: ModernBertForPreTraining, path: str | Path) -> None:
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config_to_hf(model.config), indent=2) + "\n")
    save_file(to_hf_state_dict(model), directory / SAFETENSORS_FILE, metadata={"format": "pt"})


def read_hf_config(directory: Path, **overrides: Any) -> ModernBertConfig:
    config_path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; from_hf expects an HF checkpoint directory")
    if not config_path.is_file():
        raise CheckpointError(f"{directory} is not a ModernBERT checkpoint: {CONFIG_FILE} not found")
    try:
        return config_from_hf(json.loads(config_path.read_text()), **overrides)
    except (json.JSONDecodeError, ValueError, TypeError) as error:
        raise CheckpointError(f"{config_path}: not a usable ModernBERT config: {error}") from error


def load_hf(
    cls: type[ModernBertForPreTraining], path: str | Path, **config_overrides: Any
) -> ModernBertForPreTraining:
    directory = Path(path)
    model = cls(read_hf_config(directory, **config_overrides))
    copy_hf_weights(model, directory)
    return model


def copy_hf_weights(model: ModernBertForPreTraining, directory: Path) -> None:
    """Copy the HF checkpoint's tensors into `model`, whose sizes must be the checkpoint's (its vocabulary
    may be smaller than a padded one's rows). An MLM head the checkpoint lacks keeps the model's values."""
    config = model.config
    raw_state_dict, weights_path = read_hf_weights(directory)
    hf = {key.removeprefix("model."): tensor for key, tensor in raw_state_dict.items()}
    ours = model.state_dict()
    names = hf_key_map(config)
    used, missing_head, loaded = set(), [], {}
    for name, key in names.items():
        if key not in hf:
            if not name.startswith(_HEAD_PREFIX):
                raise CheckpointError(
                    f"{weights_path}: missing tensor {_hf_name(key)!r}; not a ModernBERT checkpoint of "
                    f"this config (attention_bias {config.attention_bias}, mlp_bias {config.mlp_bias}, "
                    f"norm_bias {config.norm_bias})"
                )
            missing_head.append(_hf_name(key))
            continue
        tensor, expected = hf[key], tuple(ours[name].shape)
        if name in _VOCABULARY_ROWS:
            expected = (config.vocab_size, *expected[1:])
            tensor = tensor[: config.vocab_size]  # a padded vocabulary: the spare rows hold no token
        if tuple(tensor.shape) != expected:
            raise CheckpointError(
                f"{weights_path}: tensor {_hf_name(key)!r} has shape {tuple(hf[key].shape)}, expected "
                f"{expected} from {CONFIG_FILE} (hidden_size {config.hidden_size}, intermediate_size "
                f"{config.intermediate_size}, vocab_size {config.vocab_size})"
            )
        used.add(key)
        loaded[name] = tensor

    with torch.no_grad():
        for name, tensor in loaded.items():
            ours[name][: tensor.shape[0]].copy_(tensor)  # word embeddings / MLM bias: padding rows stay zero

    unexpected = sorted(set(hf) - used - {_TIED_HF_KEY})
    if missing_head:
        warnings.warn(
            f"{weights_path} has no weights for {', '.join(missing_head)}; these start freshly initialised",
            stacklevel=3,
        )
    if unexpected:
        warnings.warn(
            f"{weights_path}: ignored tensors that ModernBERT pretraining does not use: "
            f"{', '.join(unexpected)}",
            stacklevel=3,
        )
