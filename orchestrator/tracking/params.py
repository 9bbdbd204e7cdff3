"""A resolved config as MLflow parameters: secrets redacted, sections flattened, MLflow's limits kept."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

REDACTED = "***"

# Whole words of a key (split on "_", "-", "." and case changes) that mark a secret. Whole words, so that
# `tokenizer` or `max_tokens` are kept while `hf_token`, `api_key` or `aws_secret_access_key` are not.
SECRET_KEY_WORDS = frozenset(
    {"token", "password", "passwd", "secret", "key", "apikey", "credential", "credentials", "auth"}
)

# The password in a URL such as https://user:password@host/.
URL_PASSWORD = re.compile(r"(?P<prefix>[a-zA-Z][a-zA-Z0-9+.-]*://[^/:@\s]+):[^@/\s]+@")


def is_secret_key(key: str) -> bool:
    """Whether a config key names a secret."""
    words = re.split(r"[_\-.\s]+|(?<=[a-z])(?=[A-Z])", key)
    return any(word.lower() in SECRET_KEY_WORDS for word in words)


def redact(value: Any) -> Any:
    """A copy of a nested config with the values of secret-looking keys and URL passwords replaced."""
    if isinstance(value, Mapping):
        return {
            key: REDACTED if is_secret_key(str(key)) and item not in (None, "") else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return URL_PASSWORD.sub(rf"\g<prefix>:{REDACTED}@", value)
    return value


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
