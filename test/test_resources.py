"""dicnet_ros.resources: the model a --model value means (the same in every command), and install commands that
fit how the package was installed (a checkout, pip, or a colcon workspace)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicnet_ros import resources

REPO = Path(__file__).resolve().parents[1]


def test_model_values_resolve_the_same_way_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = resources.package_file("models/dicnet_sim_default_int8.onnx")  # source tree, or an install's share
    assert shipped.is_file() and shipped.parent == resources.package_file("models")
    assert resources.resolve_model(None) == shipped.parent / resources.DEFAULT_MODEL_NAME
    assert resources.resolve_model("") == resources.resolve_model(None)
    assert resources.resolve_model("dicnet_sim_default_int8.onnx") == shipped
    (tmp_path / "dicnet_sim_default_int8.onnx").write_bytes(b"mine")  # a file of that name here wins
    assert resources.resolve_model("dicnet_sim_default_int8.onnx") == Path("dicnet_sim_default_int8.onnx")
    assert resources.resolve_model("sub/missing.onnx") == Path("sub/missing.onnx")  # the loader names it
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx .*shipped models: .*dicnet_sim_default\.onnx"):
        resources.resolve_model("missing.onnx")
    assert "dicnet_sim_default.pt" in resources.shipped_models()


def test_install_hints_fit_a_checkout_and_a_colcon_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    assert resources.install_kind() == "source"
    assert resources.install_hint("bag") == f"pip install -e '{REPO}[bag]'"
    prefix = tmp_path / "install" / "dicnet_ros"  # what colcon build installs: the package in the ament index
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "dicnet_ros").touch()
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{prefix}:/opt/ros/kilted")
    assert resources.install_kind() == "colcon"
    hint = resources.install_hint("bag")
    assert hint.startswith("python3 -m pip install 'rosbags>=") and "'pillow>=" in hint and "-e" not in hint
    message = resources.missing_dependency_message("bag-eval", "rosbags.rosbag2")
    assert message == f"dicnet bag-eval: missing dependency 'rosbags.rosbag2'. Install it with: {hint}"
    assert "source your ROS 2 installation first" in resources.missing_dependency_message("node", "rclpy")
    assert resources.missing_dependency_message("infer", "some_module") is None
