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


# ------------------------------------------------------------------------------------------------------- models

#: The model every command uses when none is named (``models/`` in the source tree, ``share/dicnet_ros/models``
#: when installed).
DEFAULT_MODEL_NAME = "dicnet_sim_default.onnx"


def shipped_models() -> list[str]:
    """File names of the models the package ships (what a bare ``--model NAME`` may pick)."""
    folder = package_file("models")
    suffixes = (".onnx", ".pt", ".engine")
    return sorted(p.name for p in folder.iterdir() if p.suffix in suffixes) if folder.is_dir() else []


def resolve_model(model: str | Path | None) -> Path:
    """The model file a command-line ``--model`` value means, the same in every command.

    None or '': the shipped default model. A path that exists: that path. A bare file name that is not a file in
    the working directory: that file among the shipped models (``--model dicnet_sim_default_int8.onnx``); if the
    package ships no such model, a FileNotFoundError listing the ones it ships. Any other path is returned as it
    is, so the loader reports it as missing with its full name.
    """
    if model is None or str(model) == "":
        return package_file(f"models/{DEFAULT_MODEL_NAME}")
    path = Path(model).expanduser()
    if path.exists() or path.name != str(model):
        return path
    shipped = package_file(f"models/{path.name}")
    if shipped.exists():
        return shipped
    raise FileNotFoundError(f"model file not found: {model} (not a file here, nor one of the shipped models: "
                            f"{', '.join(shipped_models()) or 'none'})")
