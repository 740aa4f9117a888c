"""glibc allocator tuning of the node process (``tune_allocator``): freed image-sized buffers are reused."""

from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum on 64-bit; a 4K rgb8 frame is 24.9 MB
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024
_allocator_state: str | None = None


def tune_allocator() -> str:
    """Make glibc reuse freed image-sized buffers instead of returning them to the kernel; says what it did.

    Why: glibc serves blocks above its mmap threshold (128 KiB, adapting only partly) with fresh mmaps and
    trims free arena tops above 128 KiB, so each frame's next take / serialisation / numpy result in the
    executor and worker threads touches new pages: ~0.9 ms of page faults per MB, ~2.5 ms for one 720p rgb8
    message, more than the DDS transport itself. With both thresholds raised the buffers are recycled (memory
    stays at the working set's high-water mark). Process-wide and idempotent; skipped off glibc, when the user
    sets these thresholds (GLIBC_TUNABLES, MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_), or with
    DICNET_MALLOC_TUNING=0.
    """
    global _allocator_state
    if _allocator_state is not None:
        return _allocator_state
    env = os.environ
    if env.get("DICNET_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        state = "off (DICNET_MALLOC_TUNING=0)"
    elif (any(t in env.get("GLIBC_TUNABLES", "") for t in ("malloc.mmap_threshold", "malloc.trim_threshold"))
          or "MALLOC_MMAP_THRESHOLD_" in env or "MALLOC_TRIM_THRESHOLD_" in env):
        state = "left to the environment (GLIBC_TUNABLES / MALLOC_*_THRESHOLD_)"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        state = "not glibc, untouched"
    else:
        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                  and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
        except (OSError, AttributeError):
            ok = False
        state = "glibc buffers recycled" if ok else "mallopt failed, untouched"
    _allocator_state = state
    return state
