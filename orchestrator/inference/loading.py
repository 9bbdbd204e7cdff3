"""Loading a pretrained encoder for inference: a model folder with its tokenizer, on a device.

A model folder is one of:
- an HF checkpoint folder (config.json + weights) of a family this tool has (BERT, ModernBERT: by its
  model_type), our `final/` folders included;
- a training checkpoint (model.safetensors + model_config.json, written by `orchestrator.train.checkpoints`).
The tokenizer comes from the folder (tokenizer.json or vocab.txt), from the run's config for a training
checkpoint, or from an explicit directory.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from common import storage
from common.errors import UserError
from data import load_tokenizer
from data.tokenizer import TOKENIZER_FILE, VOCAB_FILE
from model import PretrainingModel, read_hf_family
from model.hf import CONFIG_FILE, tensor_names
from orchestrator.train.checkpoints import MODEL_CONFIG_FILE, TRAIN_STATE_FILE, load_model_from_checkpoint


@dataclass
class LoadedModel:
    """A model in eval mode on its device, its tokenizer, and which pretraining heads it really has."""

    model: PretrainingModel
    """Of the checkpoint's family; `.bert` is its encoder."""
    tokenizer: Tokenizer
    tokenizer_dir: str
    has_mlm_head: bool
    """False for a checkpoint of a bare encoder (HF BertModel): its MLM head would be random."""
    has_nsp_head: bool
    """False when the checkpoint has no NSP head or the run trained without NSP (model.use_nsp false)."""
    source: Path | str
    """The model folder, or its bucket URI."""
    device: torch.device


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for `name` (auto, cpu or cuda); auto is the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no GPU is visible here; use --device cpu")
    return torch.device(name)


def load_model(path: str | Path, tokenizer_dir: str | None = None, device: str = "cpu") -> LoadedModel:
    """Load an HF / final/ folder or a training checkpoint, and its tokenizer (see the module docstring);
    either may be in a bucket (s3://...)."""
    if storage.is_uri(path):
        with storage.local_input(path) as local:
            loaded = load_model(local, tokenizer_dir, device)
        # Name the bucket, not the download (deleted by now), as the place the model and tokenizer came from.
        remote_tokenizer = path if loaded.tokenizer_dir == local else loaded.tokenizer_dir
        return dataclasses.replace(loaded, source=path, tokenizer_dir=remote_tokenizer)
    source = Path(path)
    if not source.is_dir():
        raise UserError(f"model folder {source} does not exist (or is not a folder)")
    if (source / MODEL_CONFIG_FILE).is_file():
        model = load_model_from_checkpoint(source)
        has_mlm_head, has_nsp_head = True, model.config.use_nsp
    elif (source / CONFIG_FILE).is_file():
        family = read_hf_family(source)  # first: a clear error for a folder of no family we have
        family.read_hf_config(source)  # and for a config.json that family cannot use
        hf_config = json.loads((source / CONFIG_FILE).read_text())
        has_mlm_head, has_nsp_head = family.pretraining_heads(tensor_names(source), hf_config)
        model = family.model_class.from_hf(source, **family.own_fields({"use_nsp": has_nsp_head}))
    else:
        raise UserError(
            f"{source} is not a model folder: it has neither {CONFIG_FILE} (an HF checkpoint or a run's "
            f"final/ folder) nor {MODEL_CONFIG_FILE} (a training checkpoint)"
        )
    tokenizer_dir = tokenizer_dir or _tokenizer_dir_of(source)
    tokenizer = load_tokenizer(tokenizer_dir)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise UserError(
            f"the tokenizer at {tokenizer_dir} has {tokenizer.get_vocab_size()} tokens but the model only "
            f"{model.config.vocab_size}: pass the model's own tokenizer with --tokenizer DIR"
        )
    torch_device = pick_device(device)
    return LoadedModel(
        model.to(torch_device).eval(),
        tokenizer,
        tokenizer_dir,
        has_mlm_head,
        has_nsp_head,
        source,
        torch_device,
    )


def _tokenizer_dir_of(source: Path) -> str:
    if (source / TOKENIZER_FILE).is_file() or (source / VOCAB_FILE).is_file():
        return str(source)
    if (source / TRAIN_STATE_FILE).is_file():
        saved = json.loads((source / TRAIN_STATE_FILE).read_text())
        run_tokenizer = saved.get("config", {}).get("data", {}).get("tokenizer_dir")
        if run_tokenizer and storage.exists(run_tokenizer):
            return run_tokenizer
    raise UserError(
        f"{source} holds no tokenizer (tokenizer.json or vocab.txt): pass the model's tokenizer with "
        "--tokenizer DIR"
    )
