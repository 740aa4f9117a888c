"""Entry points: the ``anomaly_node`` console script and the ``dicnet node`` subcommand."""

from __future__ import annotations

import argparse
import os
import threading

# Only light imports here: the signal handlers go in before rclpy, OpenCV and the runtimes are imported, so a
# Ctrl-C during start-up ends the process quietly too.
from dicnet_ros.node.middleware import PROFILE_ENV, apply_large_image_profile
from dicnet_ros.node.signals import (
    ignore_further_signals,
    install_stop_handlers,
    leave_with_parent,
    stop_requested,
)

#: the process that started this one, as seen when this module was imported (a later change = the parent died)
_PARENT_AT_START = os.getppid()


def run_node(ros_args: list[str] | None = None, fastdds_profile: str | None = None) -> int:
    """Init rclpy with ``ros_args`` (argv style) and spin the node until a stop signal or the parent's death.

    Returns 0 after SIGINT / SIGTERM / SIGHUP / SIGQUIT (also one that arrives while rclpy is imported or the model
    is loading), 1 on a startup error, 2 for malformed ROS arguments. The signal handlers are installed before
    anything heavy is imported (the entry points install them even earlier). The large-image Fast DDS profile is
    applied before ``rclpy.init`` (see ``node.middleware``): DDS reads it when the first participant is created.
    """
    install_stop_handlers()
    stop = stop_requested()
    leave_with_parent(_PARENT_AT_START)
    try:
        return _spin(ros_args, fastdds_profile, stop)
    finally:
        if stop.is_set():
            ignore_further_signals()


def _spin(ros_args: list[str] | None, fastdds_profile: str | None, stop: threading.Event) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from dicnet_ros.node.anomaly_node import AnomalyNode
    from dicnet_ros.node.errors import NodeStartupError
    from dicnet_ros.node.parameters import NODE_NAME

    logger = rclpy.logging.get_logger(NODE_NAME)
    try:
        apply_large_image_profile(fastdds_profile)
    except FileNotFoundError as exc:
        logger.fatal(str(exc))
        return 2
    if stop.is_set():
        return 0
    try:
        rclpy.init(args=ros_args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # malformed --ros-args: one line, not a traceback
        logger.fatal(f"cannot initialise ROS: {' '.join(str(exc).split())}")
        return 2
    node = None
    executor = SingleThreadedExecutor()
    try:
        try:
            node = AnomalyNode()
        except NodeStartupError as exc:
            if stop.is_set():
                return 0
            logger.fatal(str(exc))
            return 1
        executor.add_node(node)
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
        return 0
    except ExternalShutdownException:
        return 0
    finally:
        executor.shutdown()
        if node is not None:
            node.close()
        rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    """Console script ``anomaly_node``: plain ROS arguments (``--ros-args -p model_path:=...``)."""
    install_stop_handlers()
    import sys

    return run_node(list(sys.argv if argv is None else argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``dicnet node`` options; they become ROS parameters / remaps, anything after --ros-args is passed on."""
    from dicnet_ros.cli_options import add_inference_arguments, add_threshold_argument

    add_inference_arguments(parser, unset=True)  # unset: a --params-file may set them
    parser.add_argument("--params-file", help="ROS parameter YAML (e.g. config/anomaly.yaml)")
    parser.add_argument("--image-topic", help="camera topic to remap ~/image (and ~/image/compressed) to")
    parser.add_argument("--image-transport", choices=("raw", "compressed"), help="raw Image or CompressedImage")
    add_threshold_argument(parser)
    parser.add_argument("--namespace", help="node namespace (one per camera)")
    parser.add_argument("--cameras", help="comma-separated camera names served by this ONE node (e.g. "
                                          "front,left,right,rear): camera NAME reads /NAME/image_raw and publishes "
                                          "/NAME/anomaly_node/...; per-camera settings: camera.NAME.* parameters")
    parser.add_argument("--max-batch", type=int, help="most frames (one per camera) per model run; 0 = all waiting")
    parser.add_argument("--use-sim-time", action="store_true", help="use /clock (bag replay)")
    parser.add_argument("--fastdds-profile", default=None,
                        help="Fast DDS profile for large camera images: default the shipped "
                             "config/fastdds_large_images.xml unless the environment names one; a path; or 'none' "
                             f"(also ${PROFILE_ENV})")
    parser.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[],
                        help="everything after this goes to ROS unchanged")


def build_ros_args(args: argparse.Namespace) -> list[str]:
    """argparse options -> ROS argv: params file first, so explicit options override it; user --ros-args last."""
    ros: list[str] = ["--ros-args"]
    if getattr(args, "params_file", None):
        ros += ["--params-file", str(args.params_file)]
    for option, param in (("model", "model_path"), ("backend", "backend"), ("device", "device"),
                          ("image_transport", "image_transport"), ("threshold", "threshold")):
        value = getattr(args, option, None)
        if value is not None:
            ros += ["-p", f"{param}:={value}"]
    if getattr(args, "cameras", None):
        from dicnet_ros.node.parameters import parse_cameras

        ros += ["-p", f"cameras:=[{', '.join(parse_cameras(args.cameras))}]"]
    if getattr(args, "max_batch", None) is not None:
        ros += ["-p", f"max_batch:={args.max_batch}"]
    if getattr(args, "use_sim_time", False):
        ros += ["-p", "use_sim_time:=true"]
    if getattr(args, "image_topic", None):
        ros += ["-r", f"~/image:={args.image_topic}", "-r", f"~/image/compressed:={args.image_topic}/compressed"]
    if getattr(args, "namespace", None):
        ros += ["-r", f"__ns:=/{args.namespace.lstrip('/')}"]
    extra = list(getattr(args, "ros_args", None) or [])
    if extra and extra[0] == "--ros-args":
        extra = extra[1:]
    return ros + extra


def run(args: argparse.Namespace) -> int:
    """``dicnet node``."""
    from dicnet_ros.node.errors import ParameterError

    try:
        ros_args = build_ros_args(args)
    except ParameterError as exc:
        print(f"dicnet node: error: {exc}")
        return 2
    return run_node(["dicnet-node", *ros_args], getattr(args, "fastdds_profile", None))


if __name__ == "__main__":
    raise SystemExit(main())
