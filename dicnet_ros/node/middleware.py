"""DDS settings for large camera images: the shipped Fast DDS profile and when to apply it.

Why here and not in a README only: with Fast DDS defaults, frames above ~512 KB from a camera in another
process arrive rarely or never over best effort (config/fastdds_large_images.xml explains the cause and the
measurements). The profile must be in the environment before the first DDS participant of the process exists,
so the entry points call ``apply_large_image_profile`` before ``rclpy.init``; the launch file does the same
for the node process. An explicitly configured environment always wins. No rclpy import here.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from dicnet_ros.resources import package_file

PROFILE_FILE = "config/fastdds_large_images.xml"
#: Set to a path to use another profile, or to "none" / "off" to leave the middleware at its defaults.
PROFILE_ENV = "DICNET_FASTDDS_PROFILE"
FASTDDS_PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
FASTDDS_RMWS = ("", "rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # what the shipped profile asks for
DISABLED = ("none", "off", "false", "0")


def shipped_profile() -> Path:
    """The profile installed with the package (share/dicnet_ros/config or the source tree)."""
    return package_file(PROFILE_FILE)


def apply_large_image_profile(choice: str | None = None, env: MutableMapping[str, str] | None = None) -> str:
    """Point Fast DDS at the large-image profile unless the environment already chose; returns what happened.

    ``choice``: None = ``$DICNET_FASTDDS_PROFILE`` or the shipped profile; a path; or "none" to change nothing.
    Only for Fast DDS (the default RMW of Humble, Jazzy and Kilted); other RMWs are left alone.
    """
    env = os.environ if env is None else env
    choice = (env.get(PROFILE_ENV) if choice is None else choice) or None  # empty = the default
    if choice is not None and choice.strip().lower() in DISABLED:
        return "middleware defaults (large-image profile off)"
    rmw = env.get("RMW_IMPLEMENTATION", "")
    if rmw not in FASTDDS_RMWS:
        return f"{rmw} (large-image profile is for Fast DDS only)"
    for var in FASTDDS_PROFILE_VARS:
        if env.get(var):
            return f"{var}={env[var]} (set by the environment)"
    path = Path(choice).expanduser() if choice else shipped_profile()
    if not path.is_file():
        raise FileNotFoundError(f"Fast DDS profile not found: {path} (set {PROFILE_ENV}=none to run without one)")
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(path)
    return f"FASTDDS_DEFAULT_PROFILES_FILE={path}"


def kernel_receive_buffer_limit() -> int | None:
    """net.core.rmem_max in bytes (Linux), the cap on the profile's socket buffer; None where unknown."""
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text().strip())
    except (OSError, ValueError):
        return None


def active_profile(env: MutableMapping[str, str] | None = None) -> str:
    """The profile file Fast DDS reads in this process ('' = none)."""
    env = os.environ if env is None else env
    return next((env[v] for v in FASTDDS_PROFILE_VARS if env.get(v)), "")
