"""pytest plugin: run the suite as on a ROS machine after rosdep, where the optional extras are not installed.

``python -m pytest -p without_extras`` (with test/support on PYTHONPATH) makes every import of the modules in
``DICNET_BLOCKED_MODULES`` (default: those of the train, sim, bag and dev extras) fail as if they were missing.
test_packaging.py uses it to check that the suite then skips those tests, naming the module, instead of stopping
at collection errors.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from collections.abc import Sequence
from typing import Any

DEFAULT_BLOCKED = "torch,torchvision,sklearn,rosbags,PIL,matplotlib,pybullet,onnx,onnxscript,tensorboard"
BLOCKED = frozenset(filter(None, os.environ.get("DICNET_BLOCKED_MODULES", DEFAULT_BLOCKED).split(",")))


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None = None, target: Any = None) -> None:
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
