"""Entry points: the ``anomaly_node`` console script and the ``dicnet node`` subcommand."""

from __future__ import annotations

import argparse

import rclpy

from dicnet_ros.inference.base import BACKENDS
from dicnet_ros.node.anomaly_node import NODE_NAME, AnomalyNode
from dicnet_ros.node.errors import NodeStartupError


def run_node(ros_args: list[str] | None = None) -> int:
    """Init rclpy with ``ros_args`` (argv style), spin the node until Ctrl-C; 1 on a startup error."""
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    logger = rclpy.logging.get_logger(NODE_NAME)
    try:
        rclpy.init(args=ros_args)
    except Exception as exc:  # malformed --ros-args: one line, not a traceback
        logger.fatal(f"cannot initialise ROS: {' '.join(str(exc).split())}")
        return 2
    try:
        try:
            node = AnomalyNode()
        except NodeStartupError as exc:
            logger.fatal(str(exc))
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            executor.shutdown()
            node.close()
        return 0
    finally:
        rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    """Console script ``anomaly_node``: plain ROS arguments (``--ros-args -p model_path:=...``)."""
    import sys

    return run_node(list(sys.argv if argv is None else argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``dicnet node`` options; they become ROS parameters / remaps, anything after --ros-args is passed on."""
    parser.add_argument("--model", help="model file (default: the package's default model)")
    parser.add_argument("--backend", choices=BACKENDS, help="inference runtime (default auto)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--params-file", help="ROS parameter YAML (e.g. config/anomaly.yaml)")
    parser.add_argument("--image-topic", help="camera topic to remap ~/image (and ~/image/compressed) to")
    parser.add_argument("--image-transport", choices=("raw", "compressed"), help="raw Image or CompressedImage")
    parser.add_argument("--threshold", type=float, help="mask threshold (default: the model's)")
    parser.add_argument("--namespace", help="node namespace (one per camera)")
    parser.add_argument("--use-sim-time", action="store_true", help="use /clock (bag replay)")
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
    return run_node(["dicnet-node", *build_ros_args(args)])


if __name__ == "__main__":
    raise SystemExit(main())
