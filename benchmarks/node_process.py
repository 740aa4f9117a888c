"""A node as its own process, for the benchmarks and the cross-process tests: start it, collect its output line
by line, wait for a line, read its memory and CPU, stop it the way a terminal or ``ros2 launch`` does (SIGINT).

Why one helper: every measurement of the node from outside (fuzz client, multi-camera benchmark, cross-process
tests) needs exactly this, and a reader thread is what keeps a silent, stuck node from hanging the caller.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def dicnet_node_command(*args: str) -> list[str]:
    """``dicnet node ARGS`` with this interpreter."""
    return [sys.executable, "-m", "dicnet_ros.cli", "node", *args]


class NodeProcess:
    """A command (usually ``dicnet_node_command(...)``) in its own process; its output is kept in ``lines``."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None, new_session: bool = False) -> None:
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=new_session)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60.0) -> bool:
        """Whether a line containing ``text`` appears within ``timeout`` s (False at once when the process ends
        without it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            if self.proc.poll() is not None:
                time.sleep(0.2)  # the reader thread takes the last lines
                return any(text in line for line in self.lines)
            time.sleep(0.05)
        return False

    def stop(self, signals: int = 1, gap: float = 0.05) -> int:
        """SIGINT (``signals`` times, ``gap`` s apart), then the exit code; killed (-9) after 30 s."""
        for _ in range(signals):
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            time.sleep(gap)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MB, CPU seconds user + system) of one process from /proc; zeros once it is gone."""
    try:
        rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS:"))
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, StopIteration, IndexError, ValueError):
        return 0.0, 0.0
