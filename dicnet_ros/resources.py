"""Find files the package ships (models/, config/, launch/, rviz/) wherever it is installed.

Order: the ament index (colcon / a ROS 2 install), ``<prefix>/share/dicnet_ros`` (plain ``pip install``), then
the source tree (``pip install -e`` or a checkout).
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "dicnet_ros"


def share_directories() -> list[Path]:
    """Candidate roots holding models/, config/ ... in order of preference."""
    roots: list[Path] = []
    try:
        from ament_index_python.packages import get_package_share_directory

        roots.append(Path(get_package_share_directory(PACKAGE)))
    except Exception:  # ament_index not installed, or the package is not in the index
        pass
    roots.append(Path(sys.prefix) / "share" / PACKAGE)
    roots.append(Path(__file__).resolve().parent.parent)
    return roots


def package_file(relative: str) -> Path:
    """The first existing ``root/relative``; the source-tree path when none exists (for error messages)."""
    candidates = [root / relative for root in share_directories()]
    return next((c for c in candidates if c.exists()), candidates[-1])
