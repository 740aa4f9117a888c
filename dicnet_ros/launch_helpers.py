"""Decisions of launch/anomaly.launch.py as plain functions, so CI can test them without the `launch` packages.

The launch file resolves its arguments in an OpaqueFunction and asks this module: is RViz installed, which
RViz config fits this namespace and camera topic, which Fast DDS profile does the node process get, and is a
node exit a failure of the launch. No launch / launch_ros / rclpy import here (the library must not need them).
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dicnet_ros.node.middleware import (
    DISABLED,
    FASTDDS_PROFILE_VARS,
    PROFILE_ENV,
    apply_large_image_profile,
    shipped_profile,
)
from dicnet_ros.ros_names import camera_node_prefix

NODE_NAME = "anomaly_node"
RVIZ_PACKAGE = "rviz2"
RVIZ_EXECUTABLE = "rviz2"
#: topics as written in the shipped rviz/anomaly.rviz (the default namespace and image_topic)
SHIPPED_NODE_PREFIX = f"/{NODE_NAME}/"
SHIPPED_IMAGE_TOPIC = "/camera/image_raw"


# --- names -----------------------------------------------------------------------------------------------------

def node_namespace(namespace: str) -> str:
    """The namespace as ROS resolves it ('' -> '/', 'front/' -> '/front'), so derived topic names are exact."""
    parts = [p for p in namespace.strip().split("/") if p]
    return "/" + "/".join(parts)


def effective_namespace(namespace: str, pushed: str | None) -> str:
    """The node's namespace as launch_ros computes it: a relative one goes below a PushRosNamespace of a parent."""
    if namespace.startswith("/") or not pushed:
        return node_namespace(namespace)
    return node_namespace(f"{pushed}/{namespace}")


def parse_camera_list(value: str) -> list[str]:
    """The cameras launch argument ("front,left" or "[front, left]") -> names, checked like the node checks them."""
    from dicnet_ros.node.parameters import parse_cameras

    return parse_cameras(value.strip().strip("[]"))


def parse_bool(value: str, argument: str) -> bool:
    """A boolean launch argument (true/false, 1/0, yes/no, on/off); anything else is an error, not a silent false."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"{argument}:={value} is not a boolean (true or false)")


def resolve_topic(topic: str, namespace: str, node_name: str = NODE_NAME) -> str:
    """The absolute name a remap target gets in the node: absolute stays, '~/x' is private, 'x' is in the namespace."""
    base = node_namespace(namespace).rstrip("/")
    if topic.startswith("/"):
        return topic
    if topic.startswith("~"):
        return f"{base}/{node_name}/{topic[1:].lstrip('/')}".rstrip("/")
    return f"{base}/{topic}"


# --- RViz ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RvizCommand:
    """How to start RViz: by package (ament index) or, without an index entry, by the executable's path."""

    package: str | None
    executable: str


def _ament_package_prefix(package: str) -> str:
    """Install prefix of ``package`` from the ament index; LookupError when it is not there (or no ament index)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError as exc:
        raise LookupError("ament_index_python is not installed") from exc
    try:
        return get_package_prefix(package)
    except PackageNotFoundError as exc:
        raise LookupError(str(exc)) from exc


def find_rviz(package_prefix: Callable[[str], str] = _ament_package_prefix,
              which: Callable[[str], str | None] = shutil.which) -> RvizCommand | None:
    """RViz 2 if installed: the ament package 'rviz2' with its executable, else 'rviz2' on PATH, else None.

    Checked before the launch starts anything: launch_ros raises "package 'rviz2' not found" only after the node
    is already running, and that process is then left behind.
    """
    try:
        prefix = Path(package_prefix(RVIZ_PACKAGE))
    except LookupError:
        prefix = None
    if prefix is not None and (prefix / "lib" / RVIZ_PACKAGE / RVIZ_EXECUTABLE).is_file():
        return RvizCommand(package=RVIZ_PACKAGE, executable=RVIZ_EXECUTABLE)
    on_path = which(RVIZ_EXECUTABLE)
    return RvizCommand(package=None, executable=on_path) if on_path else None


def rviz_install_hint(env: Mapping[str, str]) -> str:
    """The one-line warning for rviz:=true without RViz: how to install it, and that the node runs anyway."""
    distro = env.get("ROS_DISTRO") or "<distro>"
    return (f"rviz:=true but RViz 2 is not installed (no package '{RVIZ_PACKAGE}' in the ament index, no "
            f"'{RVIZ_EXECUTABLE}' on PATH); install it with 'sudo apt install ros-{distro}-rviz2' and source "
            f"the ROS setup again. Starting {NODE_NAME} without RViz.")


def _displays(displays: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every display, also those inside display groups (rviz_common/Group nests a 'Displays' list)."""
    for display in displays:
        yield display
        yield from _displays(display.get("Displays") or [])


def rviz_config(template: str, namespace: str, image_topic: str, node_name: str = NODE_NAME,
                cameras: Sequence[str] = ()) -> str:
    """The shipped RViz config with its topics moved to ``namespace`` and ``image_topic``.

    The shipped file names the default topics (/anomaly_node/..., /camera/image_raw); with namespace:=front the
    node publishes /front/anomaly_node/..., which a fixed file would never show. With ``cameras`` (one node for
    several cameras) the config shows every camera's overlay, /NAME/anomaly_node/overlay, one display each.
    """
    data = yaml.safe_load(template)
    if cameras:
        base = node_namespace(namespace).rstrip("/")
        overlay = next(d for d in _displays(data["Visualization Manager"]["Displays"])
                       if isinstance(d.get("Topic"), dict) and str(d["Topic"].get("Value", "")).endswith("/overlay"))
        displays = []
        for camera in cameras:
            display = copy.deepcopy(overlay)
            display["Name"] = f"{camera} overlay"
            display["Topic"]["Value"] = f"{camera_node_prefix(base, camera, node_name)}/overlay"
            displays.append(display)
        data["Visualization Manager"]["Displays"] = displays
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    node_prefix = resolve_topic("~/", namespace, node_name) + "/"
    camera_topic = resolve_topic(image_topic, namespace, node_name)
    for display in _displays(data["Visualization Manager"]["Displays"]):
        topic = display.get("Topic")
        if not isinstance(topic, dict) or not isinstance(topic.get("Value"), str):
            continue
        if topic["Value"].startswith(SHIPPED_NODE_PREFIX):
            topic["Value"] = node_prefix + topic["Value"][len(SHIPPED_NODE_PREFIX):]
        elif topic["Value"] == SHIPPED_IMAGE_TOPIC:
            topic["Value"] = camera_topic
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def rviz_config_name(namespace: str, cameras: Sequence[str] = ()) -> str:
    """One file per namespace ('anomaly.rviz', 'anomaly_front.rviz'), so two cameras' launches do not clash; a
    multi-camera node's config also names its cameras ('anomaly_cameras_front_rear.rviz')."""
    resolved = node_namespace(namespace).strip("/").replace("/", "_")
    parts = [p for p in (resolved, "cameras_" + "_".join(cameras) if cameras else "") if p]
    return f"anomaly_{'_'.join(parts)}.rviz" if parts else "anomaly.rviz"


def rviz_config_dirs(env: Mapping[str, str]) -> list[Path]:
    """Where generated configs go, in order: $ROS_HOME (default ~/.ros)/dicnet_ros/rviz, then the temp dir."""
    ros_home = Path(env.get("ROS_HOME") or Path.home() / ".ros").expanduser()
    return [ros_home / "dicnet_ros" / "rviz", Path(tempfile.gettempdir()) / "dicnet_ros" / "rviz"]


def write_rviz_config(template_path: Path, namespace: str, image_topic: str, directories: list[Path],
                      cameras: Sequence[str] = ()) -> Path:
    """Write the config for this namespace (and cameras) into the first writable directory; returns its path.

    Written to a temporary file and renamed, so an RViz of another launch never reads half a file.
    """
    text = rviz_config(Path(template_path).read_text(encoding="utf-8"), namespace, image_topic, cameras=cameras)
    errors: list[str] = []
    for directory in directories:
        target = directory / rviz_config_name(namespace, cameras)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(dir=directory, prefix=target.name, suffix=".partial")
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(text)
            os.chmod(partial, 0o644)  # mkstemp creates 0600; the config is no secret
            os.replace(partial, target)
            return target
        except OSError as exc:
            errors.append(f"{directory}: {exc}")
    raise OSError("cannot write the RViz config: " + "; ".join(errors))


# --- Fast DDS profile ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FastddsProfileSetting:
    """What the node process gets: extra environment, a line for the log, and a warning when a choice is moot."""

    additional_env: dict[str, str] = field(default_factory=dict)
    description: str = ""
    warning: str | None = None


def fastdds_profile_setting(argument: str, env: Mapping[str, str],
                            shipped: Callable[[], Path] = shipped_profile) -> FastddsProfileSetting:
    """Turn the fastdds_profile launch argument into $DICNET_FASTDDS_PROFILE for the node (node.middleware applies it).

    '' = $DICNET_FASTDDS_PROFILE if the environment sets it, else the shipped profile (named explicitly, so the
    node process shows what launch chose); 'none' = middleware defaults; a path = that profile. A
    FASTDDS_DEFAULT_PROFILES_FILE / FASTRTPS_DEFAULT_PROFILES_FILE in the environment always wins (node.middleware),
    hence the warning for an explicit path. The description is what middleware will do in the node process,
    computed on a copy of its environment. Raises FileNotFoundError for a missing profile before any process starts.
    """
    choice = argument.strip()
    additional: dict[str, str] = {}
    if not choice:
        if PROFILE_ENV not in env:
            additional[PROFILE_ENV] = str(shipped())
    elif choice.lower() in DISABLED:
        additional[PROFILE_ENV] = "none"
    else:
        path = Path(choice).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"fastdds_profile:={choice}: no such file ({path}); give an existing Fast DDS "
                                    f"XML profile, or 'none' for the middleware defaults")
        additional[PROFILE_ENV] = str(path)
    description = apply_large_image_profile(None, {**env, **additional})
    overriding = next((var for var in FASTDDS_PROFILE_VARS if env.get(var)), None)
    warning = None
    if choice and choice.lower() not in DISABLED and overriding:
        warning = (f"fastdds_profile:={choice} has no effect: {overriding}={env[overriding]} in the environment "
                   f"takes precedence (unset it to use {additional[PROFILE_ENV]})")
    return FastddsProfileSetting(additional_env=additional, description=description, warning=warning)


# --- node exit -------------------------------------------------------------------------------------------------

def node_exit_failure(returncode: int | None, shutting_down: bool, node: str = NODE_NAME) -> str | None:
    """Why the launch should fail when the node exits, or None when the exit is no failure.

    Exit 0 (Ctrl-C, SIGTERM: the node's handlers make those exit 0) is normal; so is any exit while the launch is
    already shutting down (launch escalates to SIGTERM/SIGKILL when a node is slow to stop). Any other exit means
    the node did not start (it logs one FATAL line first) or died while running.
    """
    if shutting_down or returncode is None or returncode == 0:
        return None
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"{node} was killed by {name} (exit code {returncode}); stopping the launch"
    return f"{node} exited with code {returncode} (see its FATAL line above); stopping the launch"
