"""The one exception the data package raises for bad input: its message names the problem and the fix."""

from __future__ import annotations

from common.errors import InvalidSetting, UserError


class DataError(UserError):
    """A problem with the user's corpus, tokenizer or prepared directory (printed without a traceback)."""


class InvalidDataSetting(InvalidSetting, DataError):
    """A data setting out of range (a DataError, as every error of the data package), from `validate()`."""
