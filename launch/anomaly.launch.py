"""Launch the DiCNet anomaly node on one camera (optionally with RViz).

    ros2 launch dicnet_ros anomaly.launch.py image_topic:=/camera/image_raw model:=/path/model.onnx

Several cameras = several namespaced includes; every topic then lives under its own namespace
(/front/anomaly_node/anomaly_mask, /rear/anomaly_node/anomaly_mask), so nothing clashes:

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
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

# launch argument -> node parameter; passed only when the argument is not empty, so a params file keeps
# its value unless the argument overrides it (node defaults apply when neither sets it)
PARAMETER_ARGUMENTS = {
    "model": "model_path",
    "backend": "backend",
    "device": "device",
}


def _anomaly_node(context, *args, **kwargs):
    """Build the node with only the non-empty overrides (OpaqueFunction: launch arguments resolved here)."""
    overrides = {}
    for argument, parameter in PARAMETER_ARGUMENTS.items():
        value = LaunchConfiguration(argument).perform(context)
        if value:
            overrides[parameter] = value
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1", "yes")
    image_topic = LaunchConfiguration("image_topic").perform(context)
    return [Node(
        package="dicnet_ros",
        executable="anomaly_node",
        name="anomaly_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), {**overrides, "use_sim_time": use_sim_time}],
        remappings=[("~/image", image_topic), ("~/image/compressed", image_topic + "/compressed")],
    )]


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
        DeclareLaunchArgument("namespace", default_value="",
                              description="node namespace, one per camera"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([share, "config", "anomaly.yaml"]),
                              description="ROS parameter file of the node"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (rosbag replay with --clock)"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz with rviz/anomaly.rviz"),
        OpaqueFunction(function=_anomaly_node),
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", PathJoinSubstitution([share, "rviz", "anomaly.rviz"])],
            parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
            condition=IfCondition(LaunchConfiguration("rviz")),
        ),
    ])
