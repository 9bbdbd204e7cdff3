"""The one exception the data package raises for bad input: its message names the problem and the fix."""

from __future__ import annotations


class DataError(Exception):
    """A problem with the user's corpus, tokenizer or prepared directory (printed without a traceback)."""
