"""How this package was installed, so that advice on a missing dependency fits the user's machine.

The same missing PyTorch is fixed differently in each install: ``pip install -e '<checkout>[train]'`` for an
editable install or a source checkout; the extra's packages into the running Python for a pip install from a
wheel; and for a colcon (ament) install, which has no pip metadata to add an extra to, those packages into the
Python that runs ROS. One helper tells the installs apart, and every message that names an install command
asks it.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PACKAGE = "dicnet_ros"
InstallKind = Literal["colcon", "checkout", "pip"]

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([\w.-]+)["']""")


@dataclass(frozen=True)
class Installation:
    """``kind``: colcon (an ament install, plain or --symlink-install), checkout (a source tree, used through
    ``pip install -e`` or directly) or pip (installed from a wheel or a non-editable ``pip install``); ``root``:
    the folder the package is imported from (the checkout, the colcon build folder or site-packages)."""

    kind: InstallKind
    root: Path

    def extra_requirements(self, extra: str) -> list[str]:
        """The requirements of ``extra`` (e.g. 'train') from this installation's own package metadata."""
        for dist in importlib.metadata.distributions(path=[str(self.root)]):
            if (dist.metadata["Name"] or "").replace("-", "_").lower() != PACKAGE:
                continue
            found = []
            for requirement in dist.requires or []:
                spec, _, marker = requirement.partition(";")
                match = _EXTRA_MARKER.search(marker)
                if match and match.group(1) == extra:
                    found.append(spec.strip())
            return found
        return []

    def install_hint(self, extra: str) -> str:
        """The command that installs ``extra`` into this installation, as the user would type it."""
        if self.kind == "checkout":
            here = Path.cwd().resolve() == self.root.resolve()
            return f"pip install -e '{'.' if here else self.root}[{extra}]'"
        requirements = self.extra_requirements(extra)
        packages = " ".join(f"'{r}'" if re.search(r"[<>=!~ ]", r) else r for r in requirements) or (
            f"the packages of the '{extra}' extra in setup.py")
        if self.kind == "colcon":
            return f"python3 -m pip install {packages} (a colcon install: into the Python that runs ROS 2)"
        return f"pip install {packages}"


def installation(package_dir: Path | None = None) -> Installation:
    """Where and how ``dicnet_ros`` (or the package folder ``package_dir``) is installed."""
    if package_dir is None:
        package_dir = Path(__file__).parent  # not resolved: a --symlink-install links into the source tree
    root = package_dir.parent  # the sys.path entry it is imported from
    if (root / "colcon_build.rc").is_file():  # colcon build --symlink-install imports from its build folder
        return Installation("colcon", root)
    if any((prefix / "share" / "colcon-core" / "packages" / PACKAGE).is_file() for prefix in root.parents[:3]):
        return Installation("colcon", root)  # <prefix>/lib/pythonX.Y/site-packages of a colcon install
    if (root / "setup.py").is_file() and (root / "package.xml").is_file():
        return Installation("checkout", root)
    return Installation("pip", root)


def install_hint(extra: str) -> str:
    """``installation().install_hint(extra)``: what to run to get the ``extra`` of this install."""
    return installation().install_hint(extra)


#: The setup.py extra that brings each optional top-level module.
EXTRA_OF_MODULE = {"torch": "train", "torchvision": "train", "pybullet": "sim", "rosbags": "bag", "rclpy": "ros",
                   "matplotlib": "bag", "PIL": "bag", "tensorrt": "trt"}


def missing_dependency_message(command: str, module: str, install: Installation | None = None) -> str | None:
    """'dicnet COMMAND: missing dependency ...' with the install command that fits how dicnet_ros was installed;
    None for a module no extra provides."""
    extra = EXTRA_OF_MODULE.get(module.split(".")[0])
    if extra is None:
        return None
    install = install or installation()
    if extra == "ros" and install.kind == "colcon":  # rclpy comes with ROS there, not from pip
        return (f"dicnet {command}: missing dependency '{module}': source your ROS 2 installation first "
                "(source /opt/ros/$ROS_DISTRO/setup.bash, then install/setup.bash)")
    hint = install.install_hint(extra) + (" (or source a ROS 2 installation)" if extra == "ros" else "")
    return f"dicnet {command}: missing dependency '{module}' (the '{extra}' extra). Install it with: {hint}"
