"""The ``anomaly_node`` console script: stop-signal handlers first, then everything else.

A separate module so that the handlers are installed before ``argparse``, rclpy, OpenCV or a runtime is
imported: a Ctrl-C during start-up then ends the node quietly (exit 0) instead of with a KeyboardInterrupt.
"""

from dicnet_ros.node.signals import install_stop_handlers

install_stop_handlers()


def main() -> int:
    from dicnet_ros.node.cli import main as node_main

    return node_main()
