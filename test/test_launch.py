"""launch/anomaly.launch.py, config/anomaly.yaml and rviz/anomaly.rviz against the node's parameter table.

The `launch` packages are not on PyPI, so the launch file is compiled and inspected (ast), not run. Every
parameter it passes and every key of the YAML must be one the node declares (dicnet_ros.node.parameters.PARAMETERS).
Its decisions (RViz available? which RViz config, which Fast DDS profile, is a node exit a failure?) live in
dicnet_ros.launch_helpers, which imports no launch package and is tested here directly.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicnet_ros import launch_helpers
from dicnet_ros.launch_helpers import (
    RvizCommand,
    effective_namespace,
    fastdds_profile_setting,
    find_rviz,
    node_exit_failure,
    parse_bool,
    resolve_topic,
    rviz_config,
    rviz_config_name,
    rviz_install_hint,
    write_rviz_config,
)
from dicnet_ros.node.middleware import PROFILE_ENV
from dicnet_ros.node.parameters import PARAMETER_NAMES, PARAMETERS, ParameterError, parse_cameras, validate_parameter

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch" / "anomaly.launch.py"
CONFIG = ROOT / "config" / "anomaly.yaml"
RVIZ = ROOT / "rviz" / "anomaly.rviz"
BUILTIN = {"use_sim_time"}  # declared by every rclpy node


def _tree() -> ast.Module:
    source = LAUNCH.read_text(encoding="utf-8")
    compile(source, str(LAUNCH), "exec")
    return ast.parse(source)


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def test_launch_file_compiles_and_uses_the_standard_api() -> None:
    tree = _tree()
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert {"LaunchDescription", "DeclareLaunchArgument", "LaunchConfiguration", "OpaqueFunction",
            "RegisterEventHandler", "OnProcessExit", "PathJoinSubstitution", "FindPackageShare", "Node"} <= imported
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    # launch APIs, the standard library, and from this package only its launch helpers
    assert all(m.split(".")[0] in ("launch", "launch_ros") or m in sys.stdlib_module_names
               or m == "dicnet_ros.launch_helpers" for m in modules), modules
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)


def test_launch_arguments() -> None:
    declared = {c.args[0].value for c in _calls(_tree(), "DeclareLaunchArgument")}
    assert {"model", "backend", "image_topic", "namespace", "params_file", "use_sim_time", "rviz",
            "fastdds_profile"} <= declared


def test_launch_parameters_exist_in_the_node() -> None:
    tree = _tree()
    mapping = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                   and getattr(n.targets[0], "id", "") == "PARAMETER_ARGUMENTS")
    assert set(mapping.values()) <= PARAMETER_NAMES, set(mapping.values()) - PARAMETER_NAMES
    assert mapping["model"] == "model_path" and mapping["backend"] == "backend"
    declared = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
    assert set(mapping) <= declared
    # every literal key of a dict passed as parameters=[...] to a Node
    for call in _calls(tree, "Node"):
        for kw in call.keywords:
            if kw.arg != "parameters":
                continue
            for d in (n for n in ast.walk(kw.value) if isinstance(n, ast.Dict)):
                keys = {k.value for k in d.keys if isinstance(k, ast.Constant)}
                assert keys <= PARAMETER_NAMES | BUILTIN, keys - PARAMETER_NAMES - BUILTIN


def test_launch_remaps_the_input() -> None:
    source = LAUNCH.read_text(encoding="utf-8")
    assert '("~/image", image_topic)' in source
    assert '("~/image/compressed", image_topic + "/compressed")' in source
    node_calls = [c for c in _calls(_tree(), "Node")
                  if any(kw.arg == "executable" and getattr(kw.value, "value", "") == "anomaly_node"
                         for kw in c.keywords)]
    assert node_calls and any(kw.arg == "namespace" for kw in node_calls[0].keywords)


def test_config_keys_exist_and_values_are_valid() -> None:
    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert list(data) == ["/**"]
    params = data["/**"]["ros__parameters"]
    assert set(params) <= PARAMETER_NAMES, set(params) - PARAMETER_NAMES
    for name, value in params.items():
        validate_parameter(name, value)
    # commented-out examples must name real parameters too
    text = CONFIG.read_text(encoding="utf-8")
    commented = set(re.findall(r"^\s+#\s*(\w+):", text, flags=re.M))
    # the per-camera example: camera: {NAME: {setting: value}} with NAME from the commented cameras list
    example_cameras = set(parse_cameras(re.search(r"#\s*cameras:\s*\[([^\]]*)\]", text).group(1)))
    assert commented <= PARAMETER_NAMES | {"camera"} | example_cameras, commented - PARAMETER_NAMES
    block = yaml.safe_load("\n".join(line.split("#", 1)[1] for line in text.splitlines()
                                     if re.match(r"^\s+#\s*(camera:|  \w+: \{)", line)))
    for camera, settings in block["camera"].items():
        assert camera in example_cameras
        for name, value in settings.items():
            validate_parameter(f"camera.{camera}.{name}", value)


def test_parameter_table_is_consistent() -> None:
    names = [p.name for p in PARAMETERS]
    assert len(names) == len(set(names))
    for spec in PARAMETERS:
        assert spec.description
        validate_parameter(spec.name, spec.default)


def test_validation_messages_name_the_parameter() -> None:
    cases = {("overlay_alpha", 1.7): "parameter 'overlay_alpha' must be in [0, 1], got 1.7",
             ("backend", "cuda"): "parameter 'backend' must be one of",
             ("device", "gpu0"): "parameter 'device' must be auto, cpu, cuda or cuda:N",
             ("input_depth", "3"): "parameter 'input_depth' must be a integer"}
    for (name, value), message in cases.items():
        try:
            validate_parameter(name, value)
        except ParameterError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"{name}={value!r} accepted")
    assert validate_parameter("overlay_alpha", 1) == 1.0  # an integer where a double is expected is fine


def test_rviz_shows_the_outputs() -> None:
    data = yaml.safe_load(RVIZ.read_text(encoding="utf-8"))
    displays = data["Visualization Manager"]["Displays"]
    topics = {d["Topic"]["Value"] for d in displays if d["Class"] == "rviz_default_plugins/Image"}
    assert {"/anomaly_node/anomaly_score_color", "/anomaly_node/anomaly_mask", "/anomaly_node/overlay"} <= topics
    assert len(topics) >= 4  # plus the input image


# --- the launch file's wiring ----------------------------------------------------------------------------------

def _node_call(executable: str) -> ast.Call:
    return next(c for c in _calls(_tree(), "Node") if any(
        kw.arg in ("executable", "name") and getattr(kw.value, "value", "") == executable for kw in c.keywords))


def test_launch_uses_existing_helpers() -> None:
    names = {alias.name for node in ast.walk(_tree()) if isinstance(node, ast.ImportFrom)
             and node.module == "dicnet_ros.launch_helpers" for alias in node.names}
    assert names and all(hasattr(launch_helpers, name) for name in names), names


def test_node_is_required_and_gets_the_fastdds_profile() -> None:
    tree = _tree()
    keywords = {kw.arg for kw in _node_call("anomaly_node").keywords}
    assert "additional_env" in keywords
    handlers = _calls(tree, "OnProcessExit")
    assert len(handlers) == 1 and {kw.arg for kw in handlers[0].keywords} == {"target_action", "on_exit"}
    assert _calls(tree, "RegisterEventHandler")
    # the exit handler decides through node_exit_failure (so exit 0 / Ctrl-C is no failure) and raises
    handler = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_on_node_exit")
    assert _calls(handler, "node_exit_failure") and any(isinstance(n, ast.Raise) for n in ast.walk(handler))


def test_rviz_is_checked_and_namespaced() -> None:
    tree = _tree()
    assert _calls(tree, "find_rviz") and _calls(tree, "rviz_install_hint") and _calls(tree, "write_rviz_config")
    keywords = {kw.arg: kw.value for kw in _node_call("rviz2").keywords}
    assert {"namespace", "arguments", "package", "executable"} <= set(keywords)
    # package and executable come from find_rviz (package None = an rviz2 found on PATH only)
    assert not isinstance(keywords["package"], ast.Constant)


def test_launch_helpers_import_no_launch_or_rclpy() -> None:
    code = ("import sys, dicnet_ros.launch_helpers; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('launch', 'launch_ros', 'rclpy')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- names -----------------------------------------------------------------------------------------------------

def test_namespaces_and_topics_resolve_like_ros() -> None:
    assert effective_namespace("", None) == "/"
    assert effective_namespace("front/", None) == "/front"
    assert effective_namespace("front", "/robot") == "/robot/front"
    assert effective_namespace("/front", "/robot") == "/front"
    assert resolve_topic("/camera/image_raw", "front") == "/camera/image_raw"
    assert resolve_topic("image_raw", "front") == "/front/image_raw"
    assert resolve_topic("image_raw", "") == "/image_raw"
    assert resolve_topic("~/overlay", "front") == "/front/anomaly_node/overlay"
    assert resolve_topic("~/", "") == "/anomaly_node"


def test_parse_bool() -> None:
    assert parse_bool("True", "rviz") and parse_bool("1", "rviz") and not parse_bool("false", "rviz")
    with pytest.raises(ValueError, match="rviz:=maybe"):
        parse_bool("maybe", "rviz")


# --- RViz ------------------------------------------------------------------------------------------------------

def _image_topics(text: str) -> dict[str, str]:
    displays = yaml.safe_load(text)["Visualization Manager"]["Displays"]
    return {d["Name"]: d["Topic"]["Value"] for d in displays if d["Class"] == "rviz_default_plugins/Image"}


def test_rviz_config_for_the_default_namespace_is_the_shipped_one() -> None:
    shipped = RVIZ.read_text(encoding="utf-8")
    assert yaml.safe_load(rviz_config(shipped, "", "/camera/image_raw")) == yaml.safe_load(shipped)


def test_rviz_config_follows_namespace_and_image_topic() -> None:
    shipped = RVIZ.read_text(encoding="utf-8")
    topics = _image_topics(rviz_config(shipped, "front", "/front/image_raw"))
    assert set(topics.values()) == {"/front/image_raw", "/front/anomaly_node/anomaly_score_color",
                                    "/front/anomaly_node/anomaly_mask", "/front/anomaly_node/overlay"}
    assert _image_topics(rviz_config(shipped, "rear", "image_raw"))["Camera image"] == "/rear/image_raw"
    # everything but the topics stays as shipped
    generated = yaml.safe_load(rviz_config(shipped, "front", "/front/image_raw"))
    assert generated["Window Geometry"] == yaml.safe_load(shipped)["Window Geometry"]


def test_rviz_config_reaches_displays_in_groups() -> None:
    template = yaml.safe_dump({"Visualization Manager": {"Displays": [{"Class": "rviz_common/Group", "Displays": [
        {"Class": "rviz_default_plugins/Image", "Name": "Overlay", "Topic": {"Value": "/anomaly_node/overlay"}}]}]}})
    nested = yaml.safe_load(rviz_config(template, "front", "/camera/image_raw"))
    assert nested["Visualization Manager"]["Displays"][0]["Displays"][0]["Topic"]["Value"] == \
        "/front/anomaly_node/overlay"


def test_rviz_config_file_per_namespace(tmp_path: Path) -> None:
    assert rviz_config_name("") == "anomaly.rviz"
    assert rviz_config_name("/front/") == "anomaly_front.rviz"
    assert rviz_config_name("robot/front") == "anomaly_robot_front.rviz"
    blocked = tmp_path / "not_a_dir"
    blocked.write_text("a file where the cache directory should be")
    written = write_rviz_config(RVIZ, "front", "/front/image_raw", [blocked / "rviz", tmp_path / "cache"])
    assert written == tmp_path / "cache" / "anomaly_front.rviz"
    assert "/front/anomaly_node/overlay" in _image_topics(written.read_text(encoding="utf-8")).values()
    assert [p.name for p in written.parent.iterdir()] == ["anomaly_front.rviz"]  # no partial file left
    with pytest.raises(OSError, match="cannot write the RViz config"):
        write_rviz_config(RVIZ, "front", "/front/image_raw", [blocked / "rviz"])


def test_find_rviz_by_package_then_path(tmp_path: Path) -> None:
    executable = tmp_path / "lib" / "rviz2" / "rviz2"
    executable.parent.mkdir(parents=True)
    executable.write_text("")

    def not_indexed(package: str) -> str:
        raise LookupError(package)

    assert find_rviz(lambda package: str(tmp_path), lambda name: None) == RvizCommand("rviz2", "rviz2")
    assert find_rviz(not_indexed, lambda name: "/opt/bin/rviz2") == RvizCommand(None, "/opt/bin/rviz2")
    assert find_rviz(not_indexed, lambda name: None) is None
    # an index entry without the executable (a partial install) does not count
    assert find_rviz(lambda package: str(tmp_path / "empty"), lambda name: None) is None


def test_rviz_install_hint() -> None:
    hint = rviz_install_hint({"ROS_DISTRO": "kilted"})
    assert "sudo apt install ros-kilted-rviz2" in hint and "without RViz" in hint
    assert "ros-<distro>-rviz2" in rviz_install_hint({})


# --- Fast DDS profile ------------------------------------------------------------------------------------------

def test_fastdds_profile_default_is_the_shipped_profile(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped.xml"
    shipped.write_text("<dds/>")
    setting = fastdds_profile_setting("", {}, lambda: shipped)
    assert setting.additional_env == {PROFILE_ENV: str(shipped)} and setting.warning is None
    assert setting.description == f"FASTDDS_DEFAULT_PROFILES_FILE={shipped}"
    # the environment's own choices are kept
    assert fastdds_profile_setting("", {PROFILE_ENV: "none"}, lambda: shipped).additional_env == {}
    by_env = fastdds_profile_setting("", {"FASTDDS_DEFAULT_PROFILES_FILE": "/etc/mine.xml"}, lambda: shipped)
    assert "set by the environment" in by_env.description and by_env.warning is None


def test_fastdds_profile_none_path_and_precedence(tmp_path: Path) -> None:
    mine = tmp_path / "mine.xml"
    mine.write_text("<dds/>")
    off = fastdds_profile_setting("none", {PROFILE_ENV: str(mine)}, lambda: mine)
    assert off.additional_env == {PROFILE_ENV: "none"} and off.description.startswith("middleware defaults")
    explicit = fastdds_profile_setting(str(mine), {}, lambda: tmp_path / "unused.xml")
    assert explicit.additional_env == {PROFILE_ENV: str(mine)} and str(mine) in explicit.description
    overridden = fastdds_profile_setting(str(mine), {"FASTRTPS_DEFAULT_PROFILES_FILE": "/etc/x.xml"}, lambda: mine)
    assert overridden.warning and "FASTRTPS_DEFAULT_PROFILES_FILE=/etc/x.xml" in overridden.warning
    other_rmw = fastdds_profile_setting("", {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}, lambda: mine)
    assert "Fast DDS only" in other_rmw.description
    with pytest.raises(FileNotFoundError, match="fastdds_profile:="):
        fastdds_profile_setting(str(tmp_path / "missing.xml"), {}, lambda: mine)


# --- node exit -------------------------------------------------------------------------------------------------

def test_node_exit_failure() -> None:
    assert node_exit_failure(0, shutting_down=False) is None  # Ctrl-C / SIGTERM: the node exits 0
    assert node_exit_failure(-2, shutting_down=True) is None  # killed while the launch stops it
    assert node_exit_failure(1, shutting_down=True) is None
    assert node_exit_failure(None, shutting_down=False) is None
    message = node_exit_failure(1, shutting_down=False, node="/front/anomaly_node")
    assert message and message.startswith("/front/anomaly_node exited with code 1") and "FATAL" in message
    assert "SIGSEGV" in (node_exit_failure(-11, shutting_down=False) or "")
