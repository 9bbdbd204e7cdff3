"""What a training checkpoint holds, and how it is written, read, and turned into the final HF model.

A checkpoint folder (reported to Ray Train, which keeps the last K under the run directory):
  model.safetensors   the model's own state dict (padded vocabulary, tied weights stored once)
  model_config.json   the BertConfig, to rebuild the model without the job config
  optimizer.pt, scheduler.pt, rng.pt   state dicts and every rank's RNG states (read with weights_only=True)
  train_state.json    step, consumed samples, data epoch and position, world size, the resolved job config
Only rank 0 writes it; the other ranks' RNG states reach it through a gather.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from data import storage
from model import BertConfig, BertForPreTraining
from orchestrator.errors import UserError

MODEL_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model_config.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
TRAIN_STATE_FILE = "train_state.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps done."""
    consumed_samples: int = 0
    """Examples trained on: step x global batch size."""
    data_epoch: int = 0
    """Epoch of the data stream the next step reads from (it picks that epoch's masks)."""
    data_step_in_epoch: int = 0
    """Global batches of that epoch already consumed."""
    world_size: int = 1
    """Workers of the run that wrote the checkpoint (a resume may use another count)."""


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch RNG states (dropout is the only randomness in the step; masking is seeded)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    directory: Path,
    model: BertForPreTraining,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    rng_states: list[dict[str, torch.Tensor]],
    job_config: dict[str, Any],
) -> None:
    """Write everything an exact resume needs into `directory` (rank 0 only)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / MODEL_FILE))
    (directory / MODEL_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(model.config), indent=2))
    torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    torch.save(scheduler.state_dict(), directory / SCHEDULER_FILE)
    torch.save(rng_states, directory / RNG_FILE)
    saved = dataclasses.asdict(state)
    (directory / TRAIN_STATE_FILE).write_text(json.dumps({**saved, "config": job_config}, indent=2))


def load_checkpoint(
    directory: Path,
    model: BertForPreTraining,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
) -> TrainState:
    """Restore model, optimizer, scheduler and this rank's RNG; return the saved position.

    A rank that did not exist in the saved run (more workers now) keeps its seeded RNG.
    """
    load_model(model, str(directory / MODEL_FILE), device=_device_of(model))
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True))
    scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=True))
    rng_states = torch.load(directory / RNG_FILE, weights_only=True)
    if rank < len(rng_states):
        set_rng_state(rng_states[rank])
    saved = json.loads((directory / TRAIN_STATE_FILE).read_text())
    fields = {f.name for f in dataclasses.fields(TrainState)}
    return TrainState(**{k: v for k, v in saved.items() if k in fields})


def read_train_state(directory: Path) -> dict[str, Any]:
    """The checkpoint's train_state.json (position and resolved config)."""
    return json.loads((Path(directory) / TRAIN_STATE_FILE).read_text())


def load_model_from_checkpoint(directory: Path) -> BertForPreTraining:
    config = BertConfig(**json.loads((directory / MODEL_CONFIG_FILE).read_text()))
    model = BertForPreTraining(config)
    load_model(model, str(directory / MODEL_FILE))
    return model


def init_weights_from(model: BertForPreTraining, source: str | Path) -> None:
    """Copy the weights of a training checkpoint or an HF model folder (local or in a bucket) into `model`
    (nothing else).

    The sizes must match the run's model (vocabulary included); position embeddings cover 512 positions in
    every preset, so phase 2 (seq 512) starts from phase 1 (seq 128) weights as they are.
    """
    check_init_from(source)
    with storage.local_input(source) as local:
        directory = Path(local)
        if (directory / MODEL_CONFIG_FILE).is_file():
            donor = load_model_from_checkpoint(directory)
        else:
            donor = BertForPreTraining.from_hf(directory, use_nsp=model.config.use_nsp)
    sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    different = {k: (getattr(donor.config, k), getattr(model.config, k)) for k in sizes}
    different = {k: v for k, v in different.items() if v[0] != v[1]}
    if different:
        details = ", ".join(f"{k} {a} there vs {b} here" for k, (a, b) in different.items())
        raise UserError(f"--init-from {source}: the model sizes differ: {details}")
    missing, unexpected = model.load_state_dict(donor.state_dict(), strict=False)
    if missing or unexpected:
        raise UserError(
            f"--init-from {source}: weights do not fit: missing {missing}, unexpected {unexpected}"
        )


def check_init_from(source: str | Path) -> None:
    """A UserError unless `source` is a training checkpoint or an HF model folder."""
    if not any(storage.is_file(storage.join(source, name)) for name in (MODEL_CONFIG_FILE, "config.json")):
        raise UserError(
            f"--init-from {source}: not a training checkpoint ({MODEL_CONFIG_FILE}) nor an HF model folder "
            "(config.json)"
        )


def export_final(checkpoint_dir: Path, tokenizer_dir: str | Path, out_dir: Path) -> Path:
    """Write the checkpoint's model in HF format plus the tokenizer files (local or in a bucket) into the
    local folder `out_dir`."""
    model = load_model_from_checkpoint(checkpoint_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_hf(out_dir)
    for name in TOKENIZER_FILES:
        source = storage.join(tokenizer_dir, name)
        if storage.is_file(source):
            (out_dir / name).write_text(storage.read_text(source), encoding="utf-8")
    return out_dir


def _device_of(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).device)
