"""The job config: one dataclass per concern, composed into `JobConfig`, loaded strictly from a YAML recipe.

The data sections live with their owner (masking, tokenizer and prepare settings in `data`); this module adds
the training and tracking sections and the generic loader: an unknown key or a value of the wrong type is an
error naming the key, its section and the valid choices. Overrides use dotted keys (`optim.lr=2e-4`), their
values parsed as YAML scalars.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from common import storage
from common.errors import InvalidSetting, UserError
from common.redact import REDACTED, is_secret_key
from data.config import MaskingConfig, PrepareConfig, StreamConfig, TokenizerConfig
from data.readers import BUILTIN_CORPUS_WORD
from model import FAMILIES

AUTO_PRESET = "auto"
"""model.preset: take the sizes of checkpoint.init_from (tiny when training from scratch)."""
# Recipes shipped in the repository's configs/ folder, selectable by bare name (`--config debug`).
RECIPES_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class ModelConfig:
    family: Literal["bert", "modernbert"] = "bert"
    """The encoder family: bert (MLM + NSP, post-LayerNorm, learned positions) or modernbert (MLM only:
    pre-LayerNorm, rotary positions, GeGLU, alternating global and sliding-window attention)."""
    preset: str = "auto"
    """Named size of the family (model.FAMILIES[family].presets): bert tiny, mini, small, medium, base,
    large; modernbert tiny, mini, base, large (vocabulary from the data). "auto": the sizes of
    checkpoint.init_from when given, else tiny. A preset that contradicts checkpoint.init_from is refused."""
    use_nsp: bool = True
    """Train the next-sentence-prediction head as well as MLM (False: MLM only, as RoBERTa). bert only."""
    activation_checkpointing: bool = False
    """Recompute encoder layers in the backward pass to save activation memory."""
    dropout: float = 0.1
    """Hidden and attention dropout (BERT's 0.1; ModernBERT's is 0; 0 makes steps deterministic)."""
    compile: bool = False
    """Compile the encoder layers with torch.compile."""
    unpadded_attention: Literal["sdpa", "varlen"] = "sdpa"
    """On GPU, the attention of batches with padding (which run on their real tokens only): "sdpa" (nested
    tensors through scaled_dot_product_attention, with attention dropout) or "varlen" (torch's varlen_attn,
    without attention dropout). The run's first line says which one it took."""
    global_rope_theta: float | None = None
    """modernbert: the rotary theta of the global-attention layers; None = the preset's (160,000) or the
    checkpoint.init_from's. A new value with init_from is context extension (weights keep their shapes)."""
    max_position_embeddings: int | None = None
    """modernbert: the longest sequence the model is for (rotary positions have no table); None = the
    preset's (8,192) or the checkpoint.init_from's. Raise it with global_rope_theta to extend the context."""

    def validate(self) -> None:
        family = FAMILIES[self.family]
        if self.preset not in (AUTO_PRESET, *family.presets):
            raise InvalidSetting(
                "preset",
                f": {self.preset!r} is not one of {', '.join((*family.presets, AUTO_PRESET))} (the "
                f"{self.family} presets)",
            )
        if self.use_nsp and not family.has_nsp:
            raise InvalidSetting(
                "use_nsp",
                f"is true but {self.family} has no next-sentence head (MLM only): set model.use_nsp: false "
                "and data.prepare.objective: mlm",
            )
        for key in self.retunable_fields():
            if key not in family.retunable_fields:
                raise InvalidSetting(
                    key, f"is set but {self.family} has no such setting: drop it (it is a modernbert setting)"
                )
        _check_positive(self, "max_position_embeddings", "global_rope_theta")

    def retunable_fields(self) -> dict[str, Any]:
        """The model fields this section sets over the preset's or the init_from checkpoint's."""
        fields = ("global_rope_theta", "max_position_embeddings")
        return {key: getattr(self, key) for key in fields if getattr(self, key) is not None}


@dataclass
class DataConfig:
    corpus: list[str] = field(default_factory=lambda: ["builtin"])
    """Corpus files, directories, globs or URIs; "builtin" is the embedded default (stdlib docstrings)."""
    tokenizer_dir: str = "tokenizers/default"
    """Tokenizer folder (relative to the working directory); trained from the corpus when missing. With
    checkpoint.init_from holding a tokenizer, "" (or a folder with none yet) takes that one."""
    prepared_dir: str = "prepared/default"
    """Prepared shards folder: built from the corpus when missing, rebuilt when `train` made it with other
    settings; one that another command made for other settings is refused (see `rebuild`)."""
    rebuild: bool = False
    """Replace prepared_dir with this run's data even when another command made it with other settings."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """How to train the tokenizer when it is missing."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    """How to build the examples (sequence length, objective, eval split)."""


@dataclass
class ProbeConfig:
    """A downstream probe during pretraining: a linear classifier fitted on the frozen encoder's [CLS]
    vector over a labelled training set, scored on a labelled eval set (`orchestrator.train.probes`)."""

    name: str = ""
    """Names its metrics: probe/<name>/accuracy and probe/<name>/f1_macro."""
    train: str = ""
    """The labelled set the probe is fitted on: CSV, JSONL, Parquet or a saved HF dataset (local or URI)."""
    eval: str = ""
    """The labelled set it is scored on."""
    text_field: str = "text"
    pair_field: str | None = None
    """The second text of a sentence pair (None: single texts)."""
    label_field: str = "label"
    """Class labels: strings or integers."""
    every: int = 0
    """Probe every this many steps and at the last; 0 = every train.eval_every steps (never when 0 too)."""
    max_seq_length: int = 128
    """Texts are cut to this many tokens (and to the model's positions)."""

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise InvalidSetting("name", f"must be a name without '/', got {self.name!r}")
        if not self.train or not self.eval:
            raise InvalidSetting(None, "a probe needs both train and eval (labelled sets)")
        _check_non_negative(self, "every")
        _check_positive(self, "max_seq_length")


@dataclass
class BatchSizeWarmupConfig:
    """The global batch grows from `start` to train.global_batch_size over the first `tokens` tokens
    (ModernBERT's batch size warmup), in whole multiples of `start`: the global batch of a step is the next
    k batches of `start` examples of the epoch's order (`data.batch_schedule`)."""

    start: int = 0
    """The first steps' global batch; it must divide train.global_batch_size, and the worker count must
    divide it. 0 = no warmup (the default)."""
    tokens: int = 0
    """Tokens over which the batch grows linearly, counted as train.max_tokens counts them: examples x the
    prepared data's mean tokens per example (from its manifest), so the batch of every step is known before
    the run starts. optim.warmup_steps still counts optimizer steps, of whatever size."""

    @property
    def enabled(self) -> bool:
        return self.start > 0

    def validate(self) -> None:
        _check_non_negative(self, "start", "tokens")
        if (self.start > 0) != (self.tokens > 0):
            raise InvalidSetting(None, "set both start and tokens (both 0: no warmup)")


@dataclass
class TrainConfig:
    global_batch_size: int = 32
    """Examples per optimizer step over all workers: a property of the run, whatever the worker count."""
    batch_size_warmup: BatchSizeWarmupConfig = field(default_factory=BatchSizeWarmupConfig)
    """Grow the global batch over the first tokens of the run (off by default)."""
    micro_batch_size: int = 32
    """Most examples one worker runs in one forward/backward; more per worker means gradient accumulation."""
    max_steps: int | None = None
    """Optimizer steps to run (set this or max_tokens)."""
    max_tokens: int | None = None
    """Token budget, turned into steps with the prepared data's mean tokens per example."""
    log_every: int = 10
    """Report the training metrics every this many steps."""
    eval_every: int = 0
    """Evaluate on the held-out split every this many steps and at the end; 0 = never."""
    seed: int = 0
    """Seed of the model initialisation, the data order and the masks."""
    fail_at_step: int | None = None
    """Fault injection for tests: rank 1's process (rank 0's alone) is killed at this step, once per run."""
    probes: list[ProbeConfig] = field(default_factory=list)
    """Downstream probes scored during training (each a linear classifier on the frozen [CLS] vectors)."""

    def validate(self) -> None:
        if (self.max_steps is None) == (self.max_tokens is None):
            raise InvalidSetting(None, "set exactly one of max_steps and max_tokens")
        names = [probe.name for probe in self.probes]
        if len(set(names)) < len(names):
            raise InvalidSetting("probes", f"must have different names, got {names}")
        _check_positive(self, "global_batch_size", "micro_batch_size", "max_steps", "max_tokens", "log_every")
        _check_non_negative(self, "eval_every")
        start = self.batch_size_warmup.start
        if start and (start >= self.global_batch_size or self.global_batch_size % start):
            starts = [n for n in range(1, self.global_batch_size) if self.global_batch_size % n == 0]
            raise InvalidSetting(
                "batch_size_warmup.start",
                f"must divide global_batch_size={self.global_batch_size} and be smaller, got {start}; "
                f"starts that do: {', '.join(map(str, starts[-12:]))}",
            )


@dataclass
class OptimConfig:
    name: Literal["adamw", "lamb", "stableadamw"] = "adamw"
    """adamw; lamb for very large batches (You et al. 2019); stableadamw: AdamW with per-tensor update
    clipping (Wortsman et al. 2023), ModernBERT's optimizer."""
    lr: float = 1e-4
    """Peak learning rate, reached at the end of the warmup."""
    weight_decay: float = 0.01
    """Decoupled weight decay (each step scales the weights by 1 - lr * weight_decay, as torch's AdamW);
    never applied to biases and LayerNorm weights."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam's beta1 and beta2."""
    eps: float = 1e-6
    """Adam's epsilon (BERT's 1e-6)."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0 to lr."""
    schedule: Literal["linear", "cosine", "wsd"] = "linear"
    """After the warmup: linear or cosine decay over all remaining steps; or wsd (warmup-stable-decay, as
    ModernBERT): lr held constant, then decay_shape over the last decay_steps (or decay_fraction)."""
    decay_steps: int | None = None
    """wsd: the steps of the final decay (set this or decay_fraction); 0: warmup and stable only, for a
    decay run of its own later (from this run's checkpoint: warmup_steps 0, decay_fraction 1)."""
    decay_fraction: float | None = None
    """wsd: the share of the run's steps that decays, in (0, 1] (set this or decay_steps)."""
    decay_shape: Literal["linear", "1-sqrt"] = "linear"
    """wsd: the shape of the decay over its t of T steps: linear (1 - t/T) or 1-sqrt (1 - sqrt(t/T)),
    ModernBERT's choice."""
    min_lr_ratio: float = 0.0
    """Where every decay ends, as a share of lr (0: down to 0 at the last step)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 = no clipping."""

    def validate(self) -> None:
        # lr 0 keeps the weights: scores a checkpoint on new data through the same run
        _check_non_negative(self, "weight_decay", "lr", "warmup_steps", "max_grad_norm")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise InvalidSetting("betas", f"must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise InvalidSetting("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        decay_lengths = [key for key in ("decay_steps", "decay_fraction") if getattr(self, key) is not None]
        if self.schedule != "wsd":
            if decay_lengths:
                raise InvalidSetting(
                    decay_lengths[0],
                    f"is for the wsd schedule only (schedule {self.schedule} decays over every step after "
                    "the warmup): set optim.schedule=wsd, or drop it",
                )
            return
        if len(decay_lengths) != 1:
            raise InvalidSetting(None, "schedule wsd needs exactly one of decay_steps and decay_fraction")
        if self.decay_steps is not None:
            _check_non_negative(self, "decay_steps")
        if self.decay_fraction is not None and not 0 < self.decay_fraction <= 1:
            raise InvalidSetting("decay_fraction", f"must be in (0, 1], got {self.decay_fraction}")

    def phase_steps(self, total_steps: int) -> tuple[int, int]:
        """(warmup steps, decay steps) of a run of `total_steps`: linear and cosine decay over every step
        after the warmup; wsd over its last decay_steps, refused (InvalidSetting) when the warmup and the
        decay do not fit into the run."""
        if self.schedule != "wsd":
            return self.warmup_steps, max(0, total_steps - self.warmup_steps)
        if self.decay_steps is not None:
            decay_steps = self.decay_steps
        else:
            decay_steps = round(self.decay_fraction * total_steps)
        if self.warmup_steps + decay_steps > total_steps:
            raise InvalidSetting(
                None,
                f"optim.warmup_steps ({self.warmup_steps}) + the wsd decay ({decay_steps} steps) exceed the "
                f"run's {total_steps} steps: shorten the warmup or the decay, or train longer",
            )
        return self.warmup_steps, decay_steps


@dataclass
class ScalingConfig:
    num_workers: int = 1
    """Ray Train workers (DDP ranks), the most of them in an elastic run; --num-workers N or MIN-MAX."""
    min_workers: int | None = None
    """Elastic training when set: Ray Train starts with as many workers as fit, from min_workers up to
    num_workers, and regroups them (from the latest checkpoint) as nodes come and go. The global batch
    stays the same."""
    use_gpu: bool = False
    """One GPU per worker, bf16 autocast; --gpu / --cpu override it."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves for each worker (fractions allowed)."""
    threads_per_worker: int = 1
    """torch intra-op threads in each CPU worker."""
    data_cpus: float = 1.0
    """CPUs left free for Ray Data (reading and masking); refused if the cluster cannot spare them."""
    elastic_check_s: float = 60.0
    """How often a running elastic run looks for room for more workers (it shrinks at once on a loss)."""

    def validate(self) -> None:
        _check_positive(self, "num_workers", "cpus_per_worker", "threads_per_worker")
        _check_non_negative(self, "data_cpus", "elastic_check_s")
        if self.min_workers is not None and not 1 <= self.min_workers <= self.num_workers:
            raise InvalidSetting(
                "min_workers",
                f"must be between 1 and scaling.num_workers={self.num_workers}, got {self.min_workers}",
            )

    @property
    def elastic(self) -> bool:
        return self.min_workers is not None and self.min_workers < self.num_workers

    @property
    def fewest_workers(self) -> int:
        """The worker count the run cannot start without."""
        return self.min_workers if self.elastic else self.num_workers

    def describe_workers(self) -> str:
        """'4' or, for an elastic run, '2-8' (the form --num-workers takes)."""
        return f"{self.min_workers}-{self.num_workers}" if self.elastic else str(self.num_workers)


@dataclass
class CheckpointConfig:
    storage_path: str = "runs"
    """Where runs live: a local or shared folder, or a bucket URI. <storage_path>/<run_name>/ is the run."""
    run_name: str = "debug"
    """Name of the run; starting a run with the same name resumes it from its latest checkpoint."""
    every: int = 500
    """Checkpoint every this many steps (and always at the end)."""
    keep: int = 3
    """Keep the latest this many checkpoints."""
    max_failures: int = 3
    """Worker failures to recover from (restarting from the latest checkpoint) before the run fails."""
    init_from: str | None = None
    """Start a new run from the weights of this checkpoint or HF model folder (only the weights, unless
    init_optimizer_state); --init-from sets it."""
    init_optimizer_state: bool = False
    """Also take the optimizer state (Adam's moments and step counts) of init_from, one of our training
    checkpoints with the same optimizer and model: a decay phase that goes on from its main phase, as
    ModernBERT's. The learning rate, its schedule and the step count of the run are this run's own."""

    def validate(self) -> None:
        _check_positive(self, "every", "keep")
        _check_non_negative(self, "max_failures")
        if self.init_optimizer_state and not self.init_from:
            raise InvalidSetting(
                "init_optimizer_state", "needs checkpoint.init_from (--init-from RUN/checkpoint_N)"
            )
        if not self.run_name or "/" in self.run_name:
            raise InvalidSetting("run_name", f"must be a plain folder name, got {self.run_name!r}")


@dataclass
class MlflowConfig:
    """Where and how a training run is recorded in MLflow."""

    enabled: bool = True
    """Record the run in MLflow; off, training runs without any tracking."""
    tracking_uri: str = ""
    """Tracking store or server; "" -> $MLFLOW_TRACKING_URI, else a SQLite store `mlflow.db` in the working
    directory."""
    artifact_location: str = ""
    """Where a new experiment keeps artifacts; "" -> `mlartifacts` beside a SQLite store, else the server's
    default."""
    experiment_name: str = "bert-pretrain"
    """The MLflow experiment the run belongs to (created when missing)."""
    log_system_metrics: bool = True
    """Log the CPU, memory, disk, network and per-GPU use of every node that holds a worker (MLflow system
    metrics, `system/<node>/...`); false turns them off."""
    system_metrics_interval_s: float = 10.0
    """How often each node samples and sends its system metrics (at least 1 s)."""
    registered_model_name: str = ""
    """Register the final model in the MLflow Model Registry under this name; "" -> not registered."""
    max_buffered_metrics: int = 100_000
    """Metrics kept in memory while the tracking server does not answer; beyond this they are written to the
    run directory (mlflow_unsent/), to be sent when the run next starts or by `tracking sync`."""
    flush_timeout_s: float = 60.0
    """How long the end of training waits for buffered metrics to reach the tracking server (and the most
    any one call to it may take, up to 10 s)."""

    def validate(self) -> None:
        if (interval := self.system_metrics_interval_s) < 1:
            raise InvalidSetting("system_metrics_interval_s", f"must be at least 1 (seconds), got {interval}")


@dataclass
class JobConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The encoder size and heads."""
    data: DataConfig = field(default_factory=DataConfig)
    """Corpus, tokenizer and prepared data."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    """Dynamic masking at train time."""
    stream: StreamConfig = field(default_factory=StreamConfig)
    """The order of each epoch: canonical partitions and the shuffle window."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Batch, budget, logging and evaluation."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    """Workers and their resources."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Run storage, checkpoints, fault tolerance."""
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    """Experiment tracking."""

    def validate(self) -> None:
        """The settings that are valid alone but not together (each section checks its own first)."""
        if self.data.prepare.objective != "mlm" and not FAMILIES[self.model.family].has_nsp:
            raise InvalidSetting(
                None,
                f"data.prepare.objective is {self.data.prepare.objective!r} but model.family "
                f"{self.model.family} has no next-sentence head: set data.prepare.objective: mlm",
            )
        if self.data.prepare.objective == "mlm" and self.model.use_nsp:
            raise InvalidSetting(
                None, "data.prepare.objective is 'mlm' (no sentence pairs): set model.use_nsp: false"
            )
        if self.train.max_steps is not None:  # a token budget's steps are known once the data is
            self.optim.phase_steps(self.train.max_steps)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain YAML/JSON-able data (loads back with `config_from_dict`)."""
        return dataclasses.asdict(self)


def _check_positive(section: Any, *keys: str) -> None:
    for key in keys:
        value = getattr(section, key)
        if value is not None and value <= 0:
            raise InvalidSetting(key, f"must be positive, got {value}")


def _check_non_negative(section: Any, *keys: str) -> None:
    for key in keys:
        if (value := getattr(section, key)) < 0:
            raise InvalidSetting(key, f"must be >= 0, got {value}")


def load_config(path_or_name: str, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Read a recipe (a YAML path, the name of one in configs/, or "-": standard input) and apply
    `key.sub=value` overrides."""
    if path_or_name == "-":  # how a submitted job gets its config without a file holding its secrets
        path, text = "<stdin>", sys.stdin.read()
    else:
        path = resolve_recipe_path(path_or_name)
        text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    for override in overrides:
        apply_override(raw, override)
    try:
        return config_from_dict(raw)
    except UserError as error:
        where = " ".join([str(path), *(f"--set {shown_override(override)}" for override in overrides)])
        raise UserError(f"{where}: {error}") from None


def resolve_recipe_path(path_or_name: str) -> Path:
    """An existing file as given, else a recipe of the repository's configs/ by name (.yaml optional)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    name = path_or_name.removesuffix(".yaml")
    if "/" not in name and (RECIPES_DIR / f"{name}.yaml").is_file():
        return RECIPES_DIR / f"{name}.yaml"
    recipes = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise UserError(f"config {path_or_name!r} not found: give a YAML file or one of the recipes {recipes}")


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in the raw recipe mapping; the value is parsed as YAML (1e-4, true, null). A key or
    value that does not fit the config is an error blamed on this override, not on the recipe."""
    shown = shown_override(override)
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise UserError(f"--set {shown}: must look like section.key=value")
    *parents, leaf = key.strip().split(".")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
        _check_key_and_value([*parents, leaf], value)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", error)
        raise UserError(f"--set {shown}: the value is not valid YAML ({problem}); quote it") from None
    except UserError as error:
        raise UserError(f"--set {shown}: {error}") from None
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {shown}: the recipe's {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def shown_override(override: str) -> str:
    """An override as a message may show it: the value of a secret-named key hidden."""
    key, sep, _ = override.partition("=")
    return f"{key}={REDACTED}" if sep and is_secret_key(key.rsplit(".", 1)[-1]) else override


def _check_key_and_value(parts: list[str], value: Any) -> None:
    """Whether dotted key `parts` names a setting of JobConfig and `value` has its type."""
    cls, done = JobConfig, []
    for part in parts:
        if not dataclasses.is_dataclass(cls):
            raise UserError(f"{'.'.join(done)!r} is a value, not a section")
        fields = [f.name for f in dataclasses.fields(cls) if f.init]
        if part not in fields:
            where = f"section {'.'.join(done)!r}" if done else "the top level"
            raise UserError(f"unknown key {part!r} in {where}; valid keys: {', '.join(fields)}")
        cls = typing.get_type_hints(cls)[part]
        done.append(part)
    _convert(cls, value, ".".join(parts))


WorkerCount = int | tuple[int, int]
"""--num-workers: a fixed count, or (min, max) for an elastic run."""


def flag_overrides(
    num_workers: WorkerCount | None = None, use_gpu: bool | None = None, init_from: str | None = None
) -> list[str]:
    """The command line's --num-workers, --gpu/--cpu and --init-from as dotted overrides, validated with the
    recipe's other settings by `load_config`."""
    overrides = []
    if num_workers is not None:
        low, high = num_workers if isinstance(num_workers, tuple) else (None, num_workers)
        overrides += [f"scaling.num_workers={high}", f"scaling.min_workers={json.dumps(low)}"]
    if use_gpu is not None:
        overrides.append(f"scaling.use_gpu={json.dumps(use_gpu)}")
    if init_from:
        overrides.append(f"checkpoint.init_from={json.dumps(init_from)}")  # a JSON string is YAML
    return overrides


def with_absolute_paths(config: JobConfig) -> JobConfig:
    """The config with its local paths made absolute (the workers run in other folders); URIs and the
    embedded corpus stay as they are."""
    checkpoint = dataclasses.replace(
        config.checkpoint,
        storage_path=storage.absolute(config.checkpoint.storage_path),
        init_from=storage.absolute(config.checkpoint.init_from),
    )
    corpus = [
        entry if entry == BUILTIN_CORPUS_WORD else storage.absolute(entry) for entry in config.data.corpus
    ]
    data_paths = dataclasses.replace(
        config.data,
        corpus=corpus,
        tokenizer_dir=storage.absolute(config.data.tokenizer_dir) if config.data.tokenizer_dir else "",
        prepared_dir=storage.absolute(config.data.prepared_dir),
    )
    probes = [
        dataclasses.replace(probe, train=storage.absolute(probe.train), eval=storage.absolute(probe.eval))
        for probe in config.train.probes
    ]
    train = dataclasses.replace(config.train, probes=probes)
    return dataclasses.replace(config, checkpoint=checkpoint, data=data_paths, train=train)


def config_from_dict(raw: dict[str, Any]) -> JobConfig:
    """Build the typed config from plain data, strictly: each section checks its own settings as it is built
    (`validate()`), then the whole config the settings that depend on each other."""
    return _build_dataclass(JobConfig, raw, "")


def _build_dataclass(cls: type, raw: Any, section: str) -> Any:
    where = f"section {section!r}" if section else "the top level"
    if not isinstance(raw, dict):
        raise UserError(f"{section or 'config'}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise UserError(f"unknown key {key!r} in {where}; valid keys: {', '.join(fields)}")
        values[key] = _convert(hints[key], value, f"{section}.{key}" if section else key)
    built = cls(**values)
    try:
        if hasattr(built, "validate"):  # a section with settings to check checks them itself
            built.validate()
    except InvalidSetting as error:
        if error.key is None:
            raise UserError(f"{section}: {error.problem}" if section else error.problem) from None
        key = f"{section}.{error.key}" if section else error.key
        raise UserError(InvalidSetting.render(key, error.problem)) from None
    return built


def _convert(hint: Any, value: Any, key: str) -> Any:
    """Check `value` against the type hint, converting where YAML is looser than Python (int for float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build_dataclass(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, key)
            except UserError as error:
                errors.append(str(error))
        raise UserError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {options}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {value!r}")
        return [_convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML reads 2e-4 (no dot) as a string
        with contextlib.suppress(ValueError):
            return float(value)
    if hint is Any:
        return value
    if isinstance(hint, type) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise UserError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value
