"""The final model as an MLflow Model that MLflow's own tools load and serve.

A run's `final/` folder (HF format with its tokenizer) is logged with the transformers flavor as a fill-mask
pipeline, the task `bert-pretrain fill-mask` does: `mlflow.transformers.load_model(uri)` gives a
`FillMaskPipeline` that predicts what `bert-pretrain fill-mask` predicts, `mlflow models serve -m URI` answers
`{"inputs": ["He got bit by [MASK]."]}`, and `mlflow.pyfunc.load_model(uri)` predicts the same. It is an
MLflow 3 logged model (the run's Models column, the experiment's Models tab) named `model`, linked to the run
and to its metrics at the final step; registered, it is a version of `mlflow.registered_model_name`.

Why a pipeline object and not `transformers_model=<path>`: MLflow 3.17's path route fails with transformers 5
(it reads the pipeline class from a task entry that transformers 5 gives as a string). The pipeline is built
from final/ on the CPU; the pip requirements are given (pinned to this environment) so that MLflow does not
load the model again in a subprocess to infer them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from data.tokenizer import TOKENIZER_FILE, VOCAB_FILE

MODEL_NAME = "model"
EXPERIMENT_ID_ENV = "MLFLOW_EXPERIMENT_ID"
TASK = "fill-mask"
REQUIREMENTS = ("transformers", "torch", "tokenizers", "safetensors")
# Lines a person need not act on while the model is built and logged: the model card that a local folder does
# not have on the Hugging Face Hub, the license, MLflow's notes on the signature and on waiting for the
# registry, transformers' loading bar.
QUIET_LOGGERS = (
    "mlflow.transformers",
    "mlflow.models",
    "mlflow.utils.requirements_utils",
    "mlflow.store.model_registry",
    "transformers",
)


def fill_mask_pipeline(final_dir: str | Path):
    """The transformers fill-mask pipeline of a final/ folder (BertForMaskedLM, the NSP head left out, or
    ModernBertForMaskedLM)."""
    import transformers

    # transformers 5 makes a tokenizer of the special tokens alone from a folder without tokenizer files.
    if not any((Path(final_dir) / name).is_file() for name in (TOKENIZER_FILE, VOCAB_FILE)):
        raise FileNotFoundError(f"{final_dir} has no tokenizer ({TOKENIZER_FILE} or {VOCAB_FILE})")

    model = transformers.AutoModelForMaskedLM.from_pretrained(str(final_dir))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(final_dir))
    return transformers.pipeline(TASK, model=model, tokenizer=tokenizer, device="cpu")


def pinned_requirements() -> list[str]:
    """The model's pip requirements at this environment's versions (a local build label like +cpu dropped)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


def log_fill_mask_model(
    client,
    tracking_uri: str,
    run,
    final_dir: str | Path,
    step: int = 0,
    registered_model_name: str = "",
) -> tuple[str, str]:
    """Log `final_dir` as the run's MLflow Model (see the module docstring); register it as a new version of
    `registered_model_name` when one is given. Returns (model_uri, "name/version" or "")."""
    import mlflow

    with _quiet(), _fluent_target(tracking_uri, run.info.experiment_id):
        pipeline = fill_mask_pipeline(final_dir)
        info = mlflow.transformers.log_model(
            pipeline,
            name=MODEL_NAME,
            task=TASK,
            run_id=run.info.run_id,
            step=step,
            pip_requirements=pinned_requirements(),
        )
        registered = ""
        if registered_model_name:
            registered = _register(client, registered_model_name, info, run.info.run_id)
    return info.model_uri, registered


def _register(client, name: str, info, run_id: str) -> str:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    version = client.create_model_version(name, info.model_uri, run_id=run_id, model_id=info.model_id)
    return f"{name}/{version.version}"


@contextlib.contextmanager
def _fluent_target(tracking_uri: str, experiment_id: str) -> Iterator[None]:
    """The flavor creates the logged model in the fluent API's experiment, at its tracking URI: both set for
    the call only. `mlflow.set_tracking_uri` would also leave MLFLOW_TRACKING_URI in this process's
    environment (for later runs of the same process to record there); MLflow's own context manager for a
    temporary tracking URI restores both."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = os.environ.get(EXPERIMENT_ID_ENV)
    os.environ[EXPERIMENT_ID_ENV] = experiment_id
    try:
        with _use_tracking_uri(tracking_uri):
            yield
    finally:
        if saved is None:
            os.environ.pop(EXPERIMENT_ID_ENV, None)
        else:
            os.environ[EXPERIMENT_ID_ENV] = saved


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """While the model is built and logged: QUIET_LOGGERS at ERROR and transformers' progress bars off."""
    from transformers.utils import logging as transformers_logging

    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    bars = transformers_logging.is_progress_bar_enabled()
    verbosity = transformers_logging.get_verbosity()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()
