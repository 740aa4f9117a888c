"""ROS 2 topic and namespace names, checked as ROS checks them, for tools that write topics without rclpy.

Why here: the bag tools write topic names into bags that ``ros2 bag play`` and RViz later use, and they run
without ROS installed. The rules are rmw's (``rmw_validate_full_topic_name`` / ``rmw_validate_namespace``): an
absolute name of tokens of letters, digits and underscores separated by single slashes, no token starting with a
digit, no trailing slash, at most 247 characters (245 for a namespace); a namespace may be ``/`` alone.
"""

from __future__ import annotations

import re

from dicnet_ros.text import bounded

TOPIC_MAX_LENGTH = 255 - 8  # rmw: characters reserved for the DDS prefix ("rt/", ...)
NAMESPACE_MAX_LENGTH = TOPIC_MAX_LENGTH - 2
_ALLOWED = re.compile(r"[A-Za-z0-9_/]*")


class InvalidRosNameError(ValueError):
    """A topic or namespace name ROS would refuse; the message says which rule it breaks and where."""


def _check(name: str, what: str, max_length: int, root_allowed: bool) -> str:
    shown = repr(bounded(name))
    if not name:
        raise InvalidRosNameError(f"{what} must not be empty")
    if not name.startswith("/"):
        raise InvalidRosNameError(f"{what} {shown} must be absolute (start with /)")
    if name == "/" and root_allowed:
        return name
    if name.endswith("/"):
        raise InvalidRosNameError(f"{what} {shown} must not end with /")
    bad = _ALLOWED.match(name)
    if bad is not None and bad.end() != len(name):
        raise InvalidRosNameError(f"{what} {shown} has {name[bad.end()]!r} at position {bad.end()}; only letters, "
                                  "digits, _ and / are allowed")
    if "//" in name:
        raise InvalidRosNameError(f"{what} {shown} repeats / at position {name.index('//') + 1}")
    for token in name.split("/")[1:]:
        if token[:1].isdigit():
            raise InvalidRosNameError(f"{what} {shown}: the part {token!r} starts with a digit")
    if len(name) > max_length:
        raise InvalidRosNameError(f"{what} {shown} is {len(name)} characters long; at most {max_length}")
    return name


def validate_topic_name(name: str, what: str = "topic name") -> str:
    """``name`` if it is a valid fully qualified ROS 2 topic name, else ``InvalidRosNameError``."""
    return _check(name, what, TOPIC_MAX_LENGTH, root_allowed=False)


def validate_namespace(namespace: str, what: str = "namespace") -> str:
    """An absolute namespace from ``namespace`` ('dicnet' -> '/dicnet', '' -> '/'), as ROS would accept it; a
    leading / is added for a relative one (the tools put outputs below the root), nothing else is repaired."""
    absolute = namespace if namespace.startswith("/") else "/" + namespace
    return _check(absolute, what, NAMESPACE_MAX_LENGTH, root_allowed=True)


def camera_node_prefix(namespace: str, camera: str, node_name: str) -> str:
    """Where camera ``camera`` of a multi-camera node publishes: what a single-camera node in namespace
    ``<namespace>/<camera>`` would (``/front/anomaly_node`` for camera front of /anomaly_node)."""
    return f"{namespace.rstrip('/')}/{camera}/{node_name}"
