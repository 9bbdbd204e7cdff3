"""A resolved config as MLflow parameters: secrets redacted (common.redact), sections flattened, MLflow's
limits kept."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

from common.redact import redact


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections joined with dots: {"optim": {"lr": 1e-4}} -> {"optim.lr": 1e-4}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, prefix=f"{name}.")
        else:
            flat[name] = value
    return flat


def config_to_params(resolved: Mapping[str, Any]) -> dict[str, str]:
    """The resolved config as MLflow parameters: redacted, flattened, cut to MLflow's length limits."""
    params = {}
    for key, value in flatten(redact(resolved)).items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            text = text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
        params[key[:MAX_ENTITY_KEY_LENGTH]] = text
    return params
