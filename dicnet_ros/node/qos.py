"""QoS of the node's topics: the preset names, ``make_qos`` and the fixes for camera QoS mismatches.

Importable without rclpy (the parameter table lists the presets); ``make_qos`` imports rclpy.qos when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rclpy.qos import QoSProfile

QOS_PRESETS: tuple[str, ...] = ("sensor_data", "default", "reliable", "best_effort")
#: The camera subscription may also follow the camera: ``auto`` subscribes reliable (depth ``input_depth``) when
#: every publisher on the topic is reliable and best effort otherwise. A reliable camera then delivers large
#: frames across processes without any middleware profile; best effort is what a best-effort camera needs.
INPUT_QOS_PRESETS: tuple[str, ...] = ("auto", *QOS_PRESETS)

QOS_FIX = {
    "RELIABILITY": "the camera publishes best effort while this node subscribes reliable: set input_qos:=auto "
                   "(or sensor_data)",
    "DURABILITY": "the camera publishes volatile while the subscription asks for transient local",
}


def make_qos(preset: str, depth: int) -> QoSProfile:
    """QoS from a preset name: sensor_data / best_effort = best effort, default / reliable = reliable; keep last.

    ``auto`` starts best effort (it matches every camera) until ``auto_preset`` has seen the publishers.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    best_effort = preset in ("sensor_data", "best_effort", "auto")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE)


def auto_preset(publishers_reliable: list[bool]) -> str:
    """What ``input_qos: auto`` subscribes with for these publishers: reliable only if all of them are."""
    return "reliable" if publishers_reliable and all(publishers_reliable) else "best_effort"
