"""Text that came from outside (a camera's encoding or frame_id, a bag's topic names) made safe to print.

One place, because every tool that logs sender-controlled text needs the same guard: a hostile or broken
sender must not flood the log or the terminal, nor send it escape sequences.
"""

from __future__ import annotations

TEXT_LIMIT = 80  # characters of one echoed field (topic, type, encoding, format, frame_id)


def bounded(text: object, limit: int = TEXT_LIMIT) -> str:
    """``text`` as one printable line of at most ``limit`` characters, cut with "…".

    Control characters become "?", whitespace runs one space.
    """
    raw = str(text)
    head = raw[: 4 * limit + 16]  # enough for ``limit`` characters after collapsing whitespace
    line = "".join(ch if ch.isprintable() else "?" for ch in " ".join(head.split()))
    if len(line) > limit or len(head) < len(raw):
        line = line[: max(limit - 1, 0)] + "…"
    return line
