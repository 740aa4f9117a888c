"""QoS of the node's topics: the preset names, ``make_qos`` and the fixes for camera QoS mismatches.

Importable without rclpy (the parameter table lists the presets); ``make_qos`` imports rclpy.qos when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rclpy.qos import QoSProfile

QOS_PRESETS: tuple[str, ...] = ("sensor_data", "default", "reliable", "best_effort")

QOS_FIX = {
    "RELIABILITY": "the camera publishes best effort while this node subscribes reliable: set input_qos:=sensor_data "
                   "(or best_effort)",
    "DURABILITY": "the camera publishes volatile while the subscription asks for transient local",
}


def make_qos(preset: str, depth: int) -> QoSProfile:
    """QoS from a preset name: sensor_data / best_effort = best effort, default / reliable = reliable; keep last."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    best_effort = preset in ("sensor_data", "best_effort")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE)
