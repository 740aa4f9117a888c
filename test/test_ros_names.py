"""dicnet_ros.ros_names agrees with ROS's own name checks (rclpy's validate_namespace / validate_full_topic_name,
i.e. rmw's), so the bag tools refuse exactly the names a ROS node would refuse, without needing rclpy."""

from __future__ import annotations

import pytest

from dicnet_ros.ros_names import InvalidRosNameError, validate_namespace, validate_topic_name

NAMES = ["/", "/a", "/a/", "//a", "/a//b", "/1a", "/a/2b", "/a b", "/a.b", "/~a", "/a-b", "/a__b", "/_a/b_",
         "/A/Z9", "/a/{b}", "/" + "x" * 244, "/" + "x" * 245, "/" + "x" * 246, "/" + "x" * 247, "/../..//x y", "",
         "a", "/a/ä"]


def _ros_accepts(check, name: str) -> bool:
    try:
        check(name)
    except Exception:  # rclpy raises InvalidNamespaceException / InvalidTopicNameException
        return False
    return True


def _ours_accepts(check, name: str) -> bool:
    try:
        check(name)
    except InvalidRosNameError:
        return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_same_verdict_as_rclpy(name: str) -> None:
    pytest.importorskip("rclpy", reason="the reference is rclpy's own check: pip install -e '.[ros]'")
    from rclpy.validate_full_topic_name import validate_full_topic_name
    from rclpy.validate_namespace import validate_namespace as ros_namespace

    assert _ours_accepts(validate_topic_name, name) == _ros_accepts(validate_full_topic_name, name)
    if name.startswith("/") or not name:
        assert _ours_accepts(validate_namespace, name or "/") == _ros_accepts(ros_namespace, name or "/")


def test_relative_namespace_is_made_absolute_and_errors_say_where() -> None:
    assert validate_namespace("front/cam") == "/front/cam"
    assert validate_namespace("") == "/"
    with pytest.raises(InvalidRosNameError, match=r"--namespace '/\.\./\.\.//x y' has '\.' at position 1"):
        validate_namespace("../..//x y", "--namespace")
