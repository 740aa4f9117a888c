"""How the node process ends: every stop signal asks for one clean shutdown, and the node leaves with its parent.

Why: ``ros2 launch`` sends SIGINT (and forwards the terminal's, so two arrive), systemd and container runtimes send
SIGTERM, a closed terminal SIGHUP, Ctrl-\\ SIGQUIT; each must end in the same orderly stop (worker joined, model
released, exit 0, no traceback), also during start-up while rclpy and the model are still loading. And ``ros2
launch`` has no SIGTERM handler of its own: killed that way it would leave its nodes running, so the node asks
the kernel (Linux ``PR_SET_PDEATHSIG``) for SIGTERM when its parent dies. Only the standard library is imported
here, so the entry points can install the handlers before anything heavy is loaded.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

#: the signals that ask the node to stop
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
                     if hasattr(signal, name))
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_requested = threading.Event()
_received: list[int] = []
_installed = False


def _handle(signum: int, frame: Any) -> None:
    _received.append(signum)
    _requested.set()


def install_stop_handlers() -> None:
    """Route every stop signal to one shutdown request (idempotent; call it first thing in an entry point). A signal
    the process was started with ignored stays ignored (``nohup``: a closed terminal's SIGHUP), as Python does."""
    global _installed
    if _installed:
        return
    for sig in STOP_SIGNALS:
        if sig not in _ignored_at_start:
            signal.signal(sig, _handle)
    _installed = True


def _started_ignoring() -> frozenset[int]:
    return frozenset(sig for sig in STOP_SIGNALS if signal.getsignal(sig) is signal.SIG_IGN)


_ignored_at_start = _started_ignoring()


def stop_requested() -> threading.Event:
    """Set once a stop signal arrived (also one that arrived before the node existed)."""
    return _requested


def stop_signal_name() -> str:
    return signal.Signals(_received[0]).name if _received else ""


def ignore_further_signals() -> None:
    """Shutting down on a signal: a late one (ros2 launch forwards a second SIGINT) must neither cut the exit short
    with a KeyboardInterrupt nor kill the process while the interpreter finalizes (Python resets its own handlers
    to the default then, but leaves ignored signals alone)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def leave_with_parent(parent_pid: int | None = None) -> bool:
    """Ask for SIGTERM when the parent process dies (Linux); True when set up. If the parent is already gone
    (reparented before the request took effect) a stop is requested at once. Not for a process started with SIGHUP
    ignored (``nohup``): it is meant to outlive its shell."""
    if not sys.platform.startswith("linux") or signal.SIGHUP in _ignored_at_start:
        return False
    import ctypes  # here, not at the top: the handlers must go in before any avoidable import

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        _requested.set()
    return True
