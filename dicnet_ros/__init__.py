"""dicnet_ros: pixel-wise anomaly segmentation (DiCNet) for ROS 2 camera streams."""

__version__ = "0.1.0"
