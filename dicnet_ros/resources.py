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


# ---------------------------------------------------------------------------------------------- install kind


def install_kind() -> str:
    """How this package was installed, so messages name a command that works there.

    ``colcon``: built into a ROS workspace (the ament index of a sourced prefix other than this Python's lists
    it); ``source``: run from a checkout (``pip install -e .`` or PYTHONPATH); ``pip``: a regular pip install.
    """
    import os

    here = Path(__file__).resolve().parent
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        marker = Path(prefix, "share", "ament_index", "resource_index", "packages", PACKAGE)
        if marker.exists() and Path(prefix).resolve() != Path(sys.prefix).resolve():
            return "colcon"
    if (here.parent / "setup.py").is_file() and (here.parent / "package.xml").is_file():
        return "source"
    return "pip"


def extra_requirements(extra: str) -> list[str]:
    """The packages of one setup.py extra (e.g. 'bag' -> rosbags, matplotlib, pillow), from the installed
    metadata; [] when the metadata is not there."""
    import importlib.metadata
    import re

    try:
        requires = importlib.metadata.requires(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    marker = re.compile(r"""extra\s*==\s*["']""" + re.escape(extra) + r"""["']""")
    return [r.split(";")[0].strip() for r in requires if marker.search(r)]


def install_hint(extra: str) -> str:
    """The command that installs a setup.py extra where this package is installed (see ``install_kind``)."""
    kind = install_kind()
    if kind == "source":
        return f"pip install -e '{Path(__file__).resolve().parent.parent}[{extra}]'"
    if kind == "colcon":
        packages = " ".join(f"'{r}'" for r in extra_requirements(extra)) or f"the '{extra}' extra's packages"
        return f"python3 -m pip install {packages} (into the Python that runs your ROS workspace)"
    return f"pip install '{PACKAGE}[{extra}]'"


#: The setup.py extra that brings each optional top-level module.
EXTRA_OF_MODULE = {"torch": "train", "torchvision": "train", "pybullet": "sim", "rosbags": "bag", "rclpy": "ros",
                   "matplotlib": "bag", "PIL": "bag", "tensorrt": "trt"}


def missing_dependency_message(command: str, module: str) -> str | None:
    """'dicnet COMMAND: missing dependency ...' with the install command that fits how dicnet_ros was installed
    (``install_hint``); None for a module no extra provides."""
    extra = EXTRA_OF_MODULE.get(module.split(".")[0])
    if extra is None:
        return None
    if extra == "ros" and install_kind() == "colcon":  # rclpy comes with ROS there, not from pip
        return (f"dicnet {command}: missing dependency '{module}': source your ROS 2 installation first "
                "(source /opt/ros/$ROS_DISTRO/setup.bash, then install/setup.bash)")
    hint = install_hint(extra)
    if extra == "ros":
        hint += " (or source a ROS 2 installation)"
    return f"dicnet {command}: missing dependency '{module}'. Install it with: {hint}"
