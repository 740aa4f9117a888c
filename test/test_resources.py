"""dicnet_ros.resources: the model a --model value means (the same in every command); and the messages for a
missing extra, worded by dicnet_ros.installation for how the package was installed."""

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


def test_missing_dependency_messages_fit_the_install(tmp_path: Path) -> None:
    """The one install helper (dicnet_ros.installation) words every missing-extra message the same way."""
    from dicnet_ros.installation import Installation, installation, missing_dependency_message

    checkout = installation()
    message = missing_dependency_message("bag-eval", "rosbags.rosbag2")
    assert message == (f"dicnet bag-eval: missing dependency 'rosbags.rosbag2' (the 'bag' extra). Install it with: "
                       f"{checkout.install_hint('bag')}")
    colcon = Installation("colcon", tmp_path)
    assert "source your ROS 2 installation first" in missing_dependency_message("node", "rclpy", colcon)
    assert missing_dependency_message("infer", "some_module") is None
