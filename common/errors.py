"""The one base of every error that describes bad input rather than a bug, and the settings error.

The command line catches `UserError` in one place and prints it as one message (exit status 2, no traceback);
each package raises its own subclass (`data.DataError`, `model.CheckpointError`, `StorageError`, ...).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: printed as one clear message, exit status 2, no traceback."""


class StorageError(UserError):
    """A bucket that cannot be reached or read (the URI, the network or the credentials)."""


class InvalidSetting(UserError, ValueError):
    """A setting out of range, raised by a config section's `validate()`: `key` names the setting within its
    section (None: the section as a whole), and the config loader prefixes the section's dotted path. The
    problem follows the key: "must be positive, got 0", or ": 'huge' is not one of ..."."""

    def __init__(self, key: str | None, problem: str):
        super().__init__(self.render(key, problem))
        self.key = key
        self.problem = problem

    @staticmethod
    def render(key: str | None, problem: str) -> str:
        if not key:
            return problem
        return f"{key}{problem}" if problem.startswith(":") else f"{key} {problem}"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or a stop signal, with what was kept and how to go on: printed as one line, exit status 130."""
