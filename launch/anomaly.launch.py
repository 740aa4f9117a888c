"""Launch the DiCNet anomaly node on one camera (optionally with RViz).

    ros2 launch dicnet_ros anomaly.launch.py image_topic:=/camera/image_raw model:=/path/model.onnx

Several cameras, one node and one model (frames batched through it):

    ros2 launch dicnet_ros anomaly.launch.py cameras:=front,left,right,rear

camera NAME reads /NAME/image_raw (per-camera topics, transports and thresholds: camera.NAME.* in the params
file) and publishes /NAME/anomaly_node/anomaly_mask, ... exactly like a single-camera node in namespace NAME.
Or one node per camera, as namespaced includes (every topic under its own namespace, so nothing clashes):

    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch.substitutions import PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare

    anomaly = PathJoinSubstitution([FindPackageShare("dicnet_ros"), "launch", "anomaly.launch.py"])
    for cam in ("front", "rear"):
        ld.add_action(IncludeLaunchDescription(
            PythonLaunchDescriptionSource(anomaly),
            launch_arguments={"namespace": cam, "image_topic": f"/{cam}/image_raw"}.items()))

Bag replay: ``use_sim_time:=true`` and ``ros2 bag play --clock ...``. A compressed camera:
``image_topic:=/camera/image_raw`` plus ``image_transport: compressed`` in the params file (the node then
subscribes <image_topic>/compressed).

``rviz:=true`` starts RViz (node ``rviz2`` in the same namespace) with rviz/anomaly.rviz rewritten for the
namespace and image_topic, or with one overlay display per camera (written to $ROS_HOME/dicnet_ros/rviz/);
without RViz installed it warns and runs the node alone. The node is required: when it exits with an error (a
FATAL at start-up, a crash) the launch stops and ``ros2 launch`` exits 1. ``fastdds_profile`` picks the Fast DDS
profile of the node process (large images).
"""

from functools import partial
from pathlib import Path

from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events.process import ProcessExited
from launch.launch_context import LaunchContext
from launch.logging import get_logger
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from dicnet_ros.launch_helpers import (
    NODE_NAME,
    effective_namespace,
    fastdds_profile_setting,
    find_rviz,
    node_exit_failure,
    parse_bool,
    parse_camera_list,
    rviz_config_dirs,
    rviz_install_hint,
    write_rviz_config,
)
from launch import Action, LaunchDescription

# launch argument -> node parameter; passed only when the argument is not empty, so a params file keeps
# its value unless the argument overrides it (node defaults apply when neither sets it)
PARAMETER_ARGUMENTS = {
    "model": "model_path",
    "backend": "backend",
    "device": "device",
}

_logger = get_logger("launch.user")


class NodeFailed(RuntimeError):
    """Raised when the required node fails: the only way launch 3.7 makes `ros2 launch` exit non-zero."""


def _on_node_exit(node_name: str, event: ProcessExited, context: LaunchContext) -> None:
    """Stop the launch with exit code 1 when the node fails (not on Ctrl-C, not while shutting down).

    LaunchService.run returns 1 only for an exception raised inside launch (a Shutdown action alone returns 0);
    launch logs it as one ERROR line and shuts everything down with that reason.
    """
    failure = node_exit_failure(event.returncode, context.is_shutdown, node_name)
    if failure:
        raise NodeFailed(failure)


def _rviz(context: LaunchContext, namespace: str, image_topic: str, use_sim_time: bool,
          cameras: list[str]) -> list[Action]:
    """RViz with a config for this namespace (and cameras), or a warning (and nothing) without RViz."""
    rviz = find_rviz()
    if rviz is None:
        _logger.warning(rviz_install_hint(context.environment))
        return []
    template = Path(FindPackageShare("dicnet_ros").perform(context)) / "rviz" / "anomaly.rviz"
    try:
        config = write_rviz_config(template, namespace, image_topic, rviz_config_dirs(context.environment), cameras)
    except OSError as exc:
        _logger.warning(f"{exc}; RViz uses {template} (topics of the default namespace)")
        config = template
    _logger.info(f"RViz config: {config}")
    return [Node(
        package=rviz.package,
        executable=rviz.executable,
        name="rviz2",
        namespace=LaunchConfiguration("namespace"),
        arguments=["-d", str(config)],
        parameters=[{"use_sim_time": use_sim_time}],
    )]


def _anomaly_node(context: LaunchContext, *args: object, **kwargs: object) -> list[Action]:
    """Build the node with only the non-empty overrides (OpaqueFunction: launch arguments resolved here).

    Everything that can fail (a bad argument, a missing profile) is checked before the first process starts.
    """
    overrides: dict[str, object] = {}
    for argument, parameter in PARAMETER_ARGUMENTS.items():
        value = LaunchConfiguration(argument).perform(context)
        if value:
            overrides[parameter] = value
    use_sim_time = parse_bool(LaunchConfiguration("use_sim_time").perform(context), "use_sim_time")
    start_rviz = parse_bool(LaunchConfiguration("rviz").perform(context), "rviz")
    image_topic = LaunchConfiguration("image_topic").perform(context)
    cameras = parse_camera_list(LaunchConfiguration("cameras").perform(context))
    if cameras:
        overrides["cameras"] = cameras
    namespace = effective_namespace(LaunchConfiguration("namespace").perform(context),
                                    context.launch_configurations.get("ros_namespace"))
    node_name = f"{namespace.rstrip('/')}/{NODE_NAME}"
    profile = fastdds_profile_setting(LaunchConfiguration("fastdds_profile").perform(context), context.environment)
    if profile.warning:
        _logger.warning(profile.warning)
    _logger.info(f"{node_name} Fast DDS profile: {profile.description}")
    node = Node(
        package="dicnet_ros",
        executable="anomaly_node",
        name="anomaly_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), {**overrides, "use_sim_time": use_sim_time}],
        remappings=[] if cameras else [("~/image", image_topic), ("~/image/compressed", image_topic + "/compressed")],
        additional_env=profile.additional_env,
    )
    required = RegisterEventHandler(OnProcessExit(target_action=node, on_exit=partial(_on_node_exit, node_name)))
    rviz = _rviz(context, namespace, image_topic, use_sim_time, cameras) if start_rviz else []
    return [required, node, *rviz]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("dicnet_ros")
    return LaunchDescription([
        DeclareLaunchArgument("model", default_value="",
                              description="model file (.onnx / checkpoint / engine); empty: params file, else the "
                                          "package's default model"),
        DeclareLaunchArgument("backend", default_value="",
                              description="tensorrt | onnxruntime | torch | auto; empty: params file, else auto"),
        DeclareLaunchArgument("device", default_value="",
                              description="auto | cpu | cuda | cuda:N; empty: params file, else auto"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="camera topic (sensor_msgs/Image) remapped to ~/image"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="comma-separated camera names served by ONE node (e.g. front,left,right,"
                                          "rear): camera NAME reads /NAME/image_raw and publishes /NAME/anomaly_node/"
                                          "...; empty: one camera on image_topic"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="node namespace, one per camera"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([share, "config", "anomaly.yaml"]),
                              description="ROS parameter file of the node"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (rosbag replay with --clock)"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="start RViz (rviz/anomaly.rviz adapted to namespace and image_topic); "
                                          "without RViz installed: a warning, the node runs alone"),
        DeclareLaunchArgument("fastdds_profile", default_value="",
                              description="Fast DDS profile of the node process (large images); empty: "
                                          "config/fastdds_large_images.xml unless the environment names one "
                                          "(FASTDDS_DEFAULT_PROFILES_FILE, DICNET_FASTDDS_PROFILE); a path; or "
                                          "none: middleware defaults"),
        OpaqueFunction(function=_anomaly_node),
    ])
