"""Secrets kept out of everything the tool writes or prints: files (run.json, checkpoints, manifests, job
configs), console lines, error messages and MLflow parameters.

Two kinds of secret: the credentials inside a URI (`https://user:password@host/`, `s3://...?secret_key=...`)
and the values of config keys that name one (`hf_token`, `api_key`, `aws_secret_access_key`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"

# Whole words of a key (split on "_", "-", "." and case changes) that mark a secret: these anywhere
# (`aws_secret_access_key`, `password_file`) ...
SECRET_WORDS = frozenset({"password", "passwd", "secret", "credential", "credentials"})
# ... and these as the last word (`hf_token`, `api_key`, `basic_auth`), so that `mask_token_fraction`,
# `token_path`, `tokenizer` or `max_tokens` are kept.
SECRET_LAST_WORDS = frozenset({"token", "key", "apikey", "auth"})

# The user information of a URL: `scheme://user:password@` or `scheme://token@`.
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/:@\s]+)(?::[^@/\s]*)?@")
# A query parameter: `?name=value` or `&name=value`.
_QUERY_PARAMETER = re.compile(r"(?P<name>[?&][^=&#\s]+)=(?P<value>[^&#\s]*)")


def is_secret_key(key: str) -> bool:
    """Whether a config key (or a URI's query parameter) names a secret."""
    words = [word.lower() for word in re.split(r"[_\-.\s]+|(?<=[a-z])(?=[A-Z])", key) if word]
    return bool(words) and (words[-1] in SECRET_LAST_WORDS or any(word in SECRET_WORDS for word in words))


def redact_text(text: str) -> str:
    """`text` with the credentials of every URI in it replaced: the password (the user stays, to tell
    accounts apart), a user-only token, and the values of secret query parameters."""

    def userinfo(match: re.Match) -> str:
        has_password = ":" in match.group(0)[len(match.group("scheme")) :]
        user = f"{match.group('user')}:{REDACTED}" if has_password else REDACTED
        return f"{match.group('scheme')}{user}@"

    def query(match: re.Match) -> str:
        if is_secret_key(match.group("name")[1:]) and match.group("value"):
            return f"{match.group('name')}={REDACTED}"
        return match.group(0)

    return _QUERY_PARAMETER.sub(query, _URL_USERINFO.sub(userinfo, text))


def redact(value: Any) -> Any:
    """A copy of a nested config (or one string) with secret-looking keys' values and URI credentials
    replaced."""
    if isinstance(value, Mapping):
        return {
            key: REDACTED if is_secret_key(str(key)) and item not in (None, "") else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
