"""The errors every room raises for bad input and for interruptions; the command line prints each as one
message."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: printed as one clear message, exit status 2, no traceback."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or a stop signal, with what was kept and how to go on: printed as one line, exit status 130."""
