"""Termination signals as exceptions, so a command stopped by ``kill`` (SIGTERM), a closed terminal (SIGHUP) or
Ctrl-C cleans up exactly like one that failed: staged outputs are deleted by the ``except BaseException`` that
already handles Ctrl-C, instead of the default action killing the process with a hidden partial folder left over.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

#: Signals that end a command the way Ctrl-C does (SIGINT already raises KeyboardInterrupt).
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """The process was asked to stop by ``signum``; a BaseException so only cleanup code sees it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by this signal (128 + number)."""
        return 128 + self.signum


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``Terminated`` in the main thread (elsewhere: no change); one
    that is ignored (``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    # a signal the process was started with ignored stays ignored (nohup, background jobs), as Python does for SIGINT
    previous = {sig: signal.signal(sig, raise_terminated) for sig in TERMINATING_SIGNALS
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
