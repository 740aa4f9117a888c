"""Simulated driving-anomaly benchmark (StreetHazards-style) rendered with PyBullet's CPU renderer.

Importing this package does not import pybullet: the class table lives in :mod:`.classes` so that
training and evaluation code can use it without the simulator installed.
"""

from dicnet_ros.data.sim.classes import SIM_ANOMALY_ID, SIM_CLASS_COLORS, SIM_CLASSES

__all__ = ["SIM_ANOMALY_ID", "SIM_CLASSES", "SIM_CLASS_COLORS"]
