"""The console, for a person: progress and results on standard output, warnings on standard error.

Every line a person reads goes through `say` or `warn`. `say` writes to the stream itself, not through
print(), which Ray Train patches in its workers to log each line twice. `warn` goes through the
`bert_pretrain` logger, so that log capture (pytest's, Ray's log files) sees it too, and prints
"warning: ..." once.
"""

from __future__ import annotations

import logging
import sys

_logger = logging.getLogger("bert_pretrain")


def say(line: str = "", end: str = "\n") -> None:
    """Write `line` to standard output at once (`end="\\r"`-style progress lines included)."""
    sys.stdout.write(line + end)
    sys.stdout.flush()


def warn(message: str) -> None:
    """A warning a person should read: `warning: message` on standard error."""
    if not _logger.handlers:
        handler = _StandardError()
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        _logger.addHandler(handler)
        _logger.setLevel(logging.INFO)
    _logger.warning(message)


class _StandardError(logging.StreamHandler):
    """The standard error of the moment (a plain StreamHandler keeps the one it was made with)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass
