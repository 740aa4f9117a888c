"""The out-of-domain state of a camera without DDS: hysteresis, the first frame, diagnostics levels."""

from __future__ import annotations

import math

from dicnet_ros.node.domain import IN_DOMAIN, OUT_OF_DOMAIN, UNAVAILABLE, DomainMonitor


def test_hysteresis_enters_and_leaves_after_k_frames() -> None:
    monitor = DomainMonitor(threshold=5.0, frames=3)
    assert monitor.update(1.0) is None and monitor.state == IN_DOMAIN  # the first frame decides, quietly
    assert monitor.status()[0] == "OK"
    assert monitor.update(9.0) is None and monitor.update(9.0) is None
    assert monitor.status()[0] == "WARN" and "2 of 3" in monitor.status()[1]
    change = monitor.update(9.0)
    assert change is not None and change.state == OUT_OF_DOMAIN and "out of domain" in change.describe()
    assert monitor.status()[0] == "ERROR"
    assert monitor.update(1.0) is None and monitor.update(9.0) is None  # one good frame: no flicker
    assert monitor.update(1.0) is None and monitor.update(1.0) is None
    back = monitor.update(1.0)
    assert back is not None and back.state == IN_DOMAIN and "back in domain" in back.describe()
    assert monitor.frames_out == 4 and monitor.frames_scored == 9


def test_first_frame_out_of_domain_raises_at_once_and_nan_counts_as_out() -> None:
    monitor = DomainMonitor(threshold=5.0, frames=5)
    change = monitor.update(math.nan)
    assert change is not None and change.state == OUT_OF_DOMAIN


def test_no_domain_score_means_unavailable() -> None:
    for monitor in (DomainMonitor(None, 3), DomainMonitor(math.inf, 3)):
        assert monitor.state == UNAVAILABLE and monitor.update(7.0) is None
        level, text = monitor.status()
        assert level == "OK" and "unavailable" in text
    monitor = DomainMonitor(5.0, 3)
    assert monitor.update(None) is None and monitor.state != OUT_OF_DOMAIN  # an older model's frames: nothing


def test_signals_ignored_at_start_stay_ignored() -> None:
    """``nohup dicnet node``: SIGHUP was ignored when the process started, so a closed terminal must not stop the
    node, neither through its handler nor through the parent-death signal; the other stop signals still stop it."""
    import subprocess
    import sys

    code = ("import signal\n"
            "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
            "from dicnet_ros.node import signals\n"
            "signals.install_stop_handlers()\n"
            "print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is "
            "signal.SIG_DFL, signals.leave_with_parent())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["True", "False", "False"], result.stdout + result.stderr
