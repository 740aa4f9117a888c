"""A camera in its own process for the cross-process node tests: plain rclpy, default middleware settings.

    python test/node/fake_camera.py --topic /cam/image_raw --size 1920x1080 --reliability best_effort \
        --rate 5 --count 25

Waits until a subscriber is matched (and stays matched for ``--settle`` seconds, so a node with input_qos auto
has switched its subscription), publishes ``--count`` bgr8 frames with header stamps ``--first-stamp + i`` s,
and prints one JSON line: how many frames it published and when.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topic", required=True)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--count", type=int, default=25)
    parser.add_argument("--first-stamp", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--compressed", choices=("jpeg", "png"), help="publish CompressedImage on TOPIC/compressed")
    parser.add_argument("--frame-id", default="fake_camera")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rclpy.init()
    node = rclpy.create_node("fake_camera")
    reliable = args.reliability == "reliable"
    # what camera drivers use: reliable keep-last (REP 2003 "system default") or the sensor-data profile
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5 if reliable else 1,
                     reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
    if args.compressed:
        pub = node.create_publisher(CompressedImage, f"{args.topic}/compressed", qos)
    else:
        pub = node.create_publisher(Image, args.topic, qos)
    deadline = time.monotonic() + args.timeout
    matched_since = None
    while time.monotonic() < deadline:
        if pub.get_subscription_count() > 0:
            matched_since = matched_since or time.monotonic()
            if time.monotonic() - matched_since >= args.settle:
                break
        else:
            matched_since = None
        time.sleep(0.05)
    else:
        print(json.dumps({"published": 0, "error": "no subscriber matched"}), flush=True)
        return 1
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    frame = pixels.tobytes()
    if args.compressed:
        import cv2

        frame = cv2.imencode(f".{'jpg' if args.compressed == 'jpeg' else 'png'}", pixels)[1].tobytes()
    start = time.monotonic()
    stamps = []
    for i in range(args.count):
        if args.compressed:
            msg = CompressedImage(format=args.compressed)
        else:
            msg = Image(height=height, width=width, encoding="bgr8", is_bigendian=0, step=width * 3)
        msg.header.frame_id = args.frame_id
        msg.header.stamp.sec = args.first_stamp + i
        msg.data = frame
        pub.publish(msg)
        stamps.append(args.first_stamp + i)
        next_at = start + (i + 1) / args.rate
        time.sleep(max(0.0, next_at - time.monotonic()))
    last_publish = time.time()
    time.sleep(1.0)  # let the middleware deliver the last frames before the process goes away
    print(json.dumps({"published": len(stamps), "first_stamp": stamps[0], "last_stamp": stamps[-1],
                      "seconds": time.monotonic() - start, "last_publish_wall": last_publish}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
