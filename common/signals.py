"""A stop signal ends a command the way Ctrl-C does, however the command was started.

Schedulers, `ray job stop` and `kill PID` send SIGTERM. Raising SIGINT from its handler would be lost where
SIGINT is ignored (a shell script's background job ignores it), so the handler calls whatever handles Ctrl-C
now: Ray Train's graceful abort during a fit, else Python's KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


def stop_on_sigterm() -> None:
    """From now on, SIGTERM acts as Ctrl-C in this process (call it from the main thread)."""
    signal.signal(signal.SIGTERM, _as_ctrl_c)


@contextlib.contextmanager
def kept_through_ray_start() -> Iterator[None]:
    """Around `ray.init`: Ray puts in handlers of its own (a Python one that exits with status 15 on SIGTERM,
    and a native one that prints a stack dump and aborts), which would replace `stop_on_sigterm`'s. The
    Python one is kept out, the native one replaced again as soon as Ray has started: a stop signal while
    Ray starts is Ctrl-C all the same."""
    from common.ray_internals import sigterm_handler_kept

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with sigterm_handler_kept():
            yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:
                signal.signal(signum, handler)


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored (a background job) or the default: Ctrl-C's exception all the same
        raise KeyboardInterrupt
