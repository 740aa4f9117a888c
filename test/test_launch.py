"""launch/anomaly.launch.py, config/anomaly.yaml and rviz/anomaly.rviz against the node's parameter table.

The `launch` packages are not on PyPI, so the launch file is compiled and inspected (ast), not run. Every
parameter it passes and every key of the YAML must be one the node declares (dicnet_ros.node.parameters.PARAMETERS).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from dicnet_ros.node.parameters import PARAMETER_NAMES, PARAMETERS, ParameterError, validate_parameter

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
    assert {"LaunchDescription", "DeclareLaunchArgument", "LaunchConfiguration", "IfCondition",
            "PathJoinSubstitution", "FindPackageShare", "Node"} <= imported
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert all(m.split(".")[0] in ("launch", "launch_ros") for m in modules)
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)


def test_launch_arguments() -> None:
    declared = {c.args[0].value for c in _calls(_tree(), "DeclareLaunchArgument")}
    assert {"model", "backend", "image_topic", "namespace", "params_file", "use_sim_time", "rviz"} <= declared


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
    commented = set(re.findall(r"^\s+#\s*(\w+):", CONFIG.read_text(encoding="utf-8"), flags=re.M))
    assert commented <= PARAMETER_NAMES, commented - PARAMETER_NAMES


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
