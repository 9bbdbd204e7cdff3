"""The error every room raises for bad input: the command line prints it as one message and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: printed as one clear message, exit status 2, no traceback."""
