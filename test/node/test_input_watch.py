"""The camera-link bookkeeping of the node without DDS: losses, gaps, silence and the advice given."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dicnet_ros.image_conversion import (
    ImageConversionError,
    ImageTooLargeError,
    compressed_image_size,
    compressed_msg_to_rgb,
)
from dicnet_ros.node.input_watch import InputWatch
from dicnet_ros.node.middleware import PROFILE_ENV, apply_large_image_profile, shipped_profile
from dicnet_ros.node.qos import auto_preset
from dicnet_ros.text import bounded


def test_gaps_already_reported_lost_are_not_counted_twice() -> None:
    watch = InputWatch(5.0)
    watch.lost_total(3)  # DDS: 3 frames lost in transport
    assert watch.queue_share_of_gap(5) == 2  # of a 5-frame gap, 3 were those lost frames
    assert watch.queue_share_of_gap(4) == 4
    watch.subscription_replaced()  # input_qos auto re-subscribed: the new subscription counts from 0
    watch.lost_total(1)
    assert watch.lost == 4
    assert watch.queue_share_of_gap(1) == 0


def test_silence_after_a_match_is_reported_once_per_episode() -> None:
    watch = InputWatch(2.0)
    assert watch.silent_publisher_warning(100.0, "/cam", False, "auto") is None  # nobody matched
    watch.matched(1, 100.0)
    assert watch.silent_publisher_warning(101.0, "/cam", False, "auto") is None
    text = watch.silent_publisher_warning(102.5, "/cam", False, "auto")
    assert text and "1 publisher(s) matched on /cam" in text and "UDP" in text and "Fix:" in text
    watch.frame_arrived(103.0)
    assert watch.silent_publisher_warning(104.0, "/cam", False, "auto") is None
    reliable = watch.silent_publisher_warning(106.0, "/cam", True, "auto")
    assert reliable and "ros2 topic hz /cam" in reliable
    assert InputWatch(0.0).silent_publisher_warning(1e9, "/cam", False, "auto") is None  # 0 = off


def test_auto_qos_follows_the_publishers() -> None:
    assert auto_preset([True, True]) == "reliable"
    assert auto_preset([True, False]) == "best_effort"
    assert auto_preset([]) == "best_effort"


def test_profile_is_applied_only_when_the_environment_has_none(tmp_path) -> None:
    env: dict[str, str] = {}
    assert apply_large_image_profile(env=env).startswith("FASTDDS_DEFAULT_PROFILES_FILE=")
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(shipped_profile()) and shipped_profile().is_file()
    mine = {"FASTRTPS_DEFAULT_PROFILES_FILE": "/etc/my.xml"}
    assert "set by the environment" in apply_large_image_profile(env=mine)
    assert "FASTDDS_DEFAULT_PROFILES_FILE" not in mine
    off = {PROFILE_ENV: "none"}
    assert "off" in apply_large_image_profile(env=off) and len(off) == 1
    cyclone = {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert "Fast DDS only" in apply_large_image_profile(env=cyclone) and len(cyclone) == 1
    with pytest.raises(FileNotFoundError, match="none"):
        apply_large_image_profile(str(tmp_path / "missing.xml"), env={})


class _Msg:
    def __init__(self, data: bytes, fmt: str = "jpeg") -> None:
        self.data, self.format = data, fmt


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_compressed_size_is_read_from_the_header(ext: str) -> None:
    ok, enc = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))
    assert ok and compressed_image_size(enc.tobytes()) == (53, 37) == compressed_image_size(enc)
    with pytest.raises(ImageTooLargeError, match="37 = 1961 pixels exceeds the limit of 1000"):
        compressed_msg_to_rgb(_Msg(enc.tobytes()), max_pixels=1000)
    assert compressed_msg_to_rgb(_Msg(enc.tobytes()), max_pixels=53 * 37).shape == (37, 53, 3)


def test_unsized_compressed_data_is_refused_with_a_limit() -> None:
    assert compressed_image_size(b"GIF89a....") is None
    with pytest.raises(ImageConversionError, match="no PNG, JPEG or WebP header"):
        compressed_msg_to_rgb(_Msg(b"GIF89a" + bytes(100), "gif"))


def test_sender_text_is_bounded_in_messages() -> None:
    huge = "x" * 10_000
    assert len(bounded(huge)) <= 80
    with pytest.raises(ImageConversionError) as info:
        compressed_msg_to_rgb(_Msg(b"\x00" * 10, "compressedDepth" + huge))
    assert len(str(info.value)) < 200


def test_every_frame_of_a_publisher_is_counted_somewhere() -> None:
    """Frames before the first one taken: replaced in the queue for a publisher that joined after the node was
    listening, 'before_first_frame' for one that was already publishing; duplicates (two subscriptions) ignored."""
    watch = InputWatch(5.0)
    watch.subscribed(100.0, [b"camera-already-there"])
    assert watch.sequence(b"camera-already-there", 5000, 100.2) == (0, 4999)  # it ran long before the node
    assert watch.sequence(b"camera-already-there", 5003, 100.3) == (2, 0)
    assert watch.sequence(b"camera-already-there", 5003, 100.3) is None  # the same frame through the other sub
    watch.publishers_present([b"burst-publisher"], 105.0)  # joined later: every frame it sent was sent to us
    assert watch.sequence(b"burst-publisher", 131, 105.1) == (130, 0)
    assert watch.sequence(b"unknown-late", 7, 106.0) == (6, 0)  # not yet in the graph, but seen long after start
    watch.lost_total(4, "best_effort")
    assert watch.sequence(b"burst-publisher", 141, 106.1) == (5, 0)  # 9 missing, 4 of them lost in transport
