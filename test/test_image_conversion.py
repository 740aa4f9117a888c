"""image_conversion against hand-built arrays and cv_bridge's documented semantics (cv_bridge is not on PyPI).

cv_bridge reference points: ``imgmsg_to_cv2(msg)`` = passthrough array in native byte order with row padding
cropped; ``imgmsg_to_cv2(msg, "rgb8")`` swaps BGR -> RGB, drops alpha, replicates mono, and scales 16 -> 8 bit
with ``convertTo(CV_8U, 255/65535)`` (rounded); ``cv2_to_imgmsg`` refuses arrays that do not fit the encoding.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from dicnet_ros.image_conversion import (
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    ImageTooLargeError,
    array_to_image_msg,
    compressed_image_size,
    compressed_msg_to_rgb,
    decode_compressed,
    image_msg_to_array,
    image_msg_to_rgb,
    make_image_decoder,
    read_image_file,
    rgb_to_image_msg,
    to_uint8,
)

RNG = np.random.default_rng(0)
CHANNELS = {"rgb": 3, "bgr": 3, "rgba": 4, "bgra": 4, "mono": 1}


def make_msg(array: np.ndarray, encoding: str, big_endian: bool = False, pad: int = 0, data_kind: str = "bytes",
             overrides: dict | None = None) -> SimpleNamespace:
    """A duck-typed Image (the rosbags / rclpy field names) built byte by byte, optionally with row padding."""
    height, width = array.shape[:2]
    wire = array.astype(array.dtype.newbyteorder(">" if big_endian else "<"))
    rows = wire.reshape(height, -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, RNG.integers(0, 256, (height, pad), dtype=np.uint8)], axis=1)
    data = np.ascontiguousarray(rows).reshape(-1)
    payload = {"bytes": data.tobytes(), "list": data.tolist(), "numpy": data}[data_kind]
    fields = {"height": height, "width": width, "encoding": encoding, "is_bigendian": int(big_endian),
              "step": rows.shape[1], "data": payload}
    fields.update(overrides or {})
    return SimpleNamespace(**fields)


def sample(encoding: str, height: int = 17, width: int = 33) -> np.ndarray:
    """Random pixels of the encoding's dtype and channel count, shaped like cv_bridge's passthrough array."""
    channels = CHANNELS[encoding.rstrip("0123456789")]
    dtype = np.uint16 if encoding.endswith("16") else np.uint8
    shape = (height, width) if channels == 1 else (height, width, channels)
    return RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def expected_rgb(array: np.ndarray, encoding: str) -> np.ndarray:
    """cv_bridge ``imgmsg_to_cv2(msg, "rgb8")`` written out by hand."""
    if array.dtype == np.uint16:
        array = np.round(array.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    base = encoding.rstrip("0123456789")
    if base == "mono":
        return np.repeat(array[:, :, None], 3, axis=2)
    rgb = array[:, :, :3]
    return rgb[:, :, ::-1] if base.startswith("bgr") else rgb


def test_supported_encodings_are_the_ten() -> None:
    assert set(SUPPORTED_ENCODINGS) == {f"{b}{d}" for b in CHANNELS for d in (8, 16)}


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 6])
def test_every_encoding_to_rgb(encoding: str, big_endian: bool, pad: int) -> None:
    array = sample(encoding)
    msg = make_msg(array, encoding, big_endian=big_endian, pad=pad)
    passthrough = image_msg_to_array(msg)
    assert passthrough.dtype.isnative and passthrough.dtype == array.dtype
    np.testing.assert_array_equal(passthrough, array)
    rgb = image_msg_to_rgb(msg)
    assert rgb.shape == (17, 33, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, expected_rgb(array, encoding))


def test_bgr8_swaps_to_rgb_order() -> None:
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 0] = 10  # blue
    bgr[..., 2] = 200  # red
    rgb = image_msg_to_rgb(make_msg(bgr, "bgr8"))
    assert rgb[0, 0].tolist() == [200, 0, 10]


def test_16bit_scaling_matches_cv_bridge_convert_to() -> None:
    values = np.array([[0, 128, 129, 257, 257 * 100 + 128, 257 * 100 + 129, 65534, 65535]], np.uint16)
    assert to_uint8(values).tolist() == [[0, 0, 1, 1, 100, 101, 255, 255]]
    rgb = image_msg_to_rgb(make_msg(values, "mono16"))
    assert rgb[0, :, 0].tolist() == [0, 0, 1, 1, 100, 101, 255, 255]


def test_big_endian_16bit_is_byteswapped() -> None:
    value = np.array([[0x1234]], np.uint16)
    msg = make_msg(value, "mono16", big_endian=True)
    assert bytes(msg.data) == b"\x12\x34"
    assert image_msg_to_array(msg)[0, 0] == 0x1234
    little = make_msg(value, "mono16", big_endian=False)
    assert bytes(little.data) == b"\x34\x12"
    assert image_msg_to_array(little)[0, 0] == 0x1234


def test_step_padding_rows_are_cropped() -> None:
    array = sample("rgb8", 5, 7)
    msg = make_msg(array, "rgb8", pad=11)
    assert msg.step == 7 * 3 + 11
    np.testing.assert_array_equal(image_msg_to_rgb(msg), array)


@pytest.mark.parametrize("data_kind", ["bytes", "list", "numpy"])
def test_data_field_kinds(data_kind: str) -> None:
    array = sample("bgra8", 4, 6)
    np.testing.assert_array_equal(image_msg_to_rgb(make_msg(array, "bgra8", data_kind=data_kind)),
                                  expected_rgb(array, "bgra8"))


def test_rgb8_without_padding_is_a_view() -> None:
    array = sample("rgb8", 8, 8)
    msg = make_msg(array, "rgb8", data_kind="numpy")
    rgb = image_msg_to_rgb(msg)
    assert np.shares_memory(rgb, msg.data)


def test_real_sensor_msgs_image() -> None:
    pytest.importorskip("sensor_msgs")
    from sensor_msgs.msg import Image

    array = sample("bgr16", 9, 11)
    fake = make_msg(array, "bgr16", big_endian=True, pad=2)
    msg = Image(height=fake.height, width=fake.width, encoding=fake.encoding, is_bigendian=1, step=fake.step,
                data=fake.data)
    np.testing.assert_array_equal(image_msg_to_rgb(msg), expected_rgb(array, "bgr16"))


@pytest.mark.parametrize(("overrides", "match"), [
    ({"encoding": "yuv422"}, "unsupported image encoding 'yuv422'"),
    ({"encoding": "bayer_rggb8"}, "unsupported image encoding"),
    ({"step": 33 * 3 - 1}, "step 98 is smaller than"),
    ({"data": b"\x00" * 100}, "data has 100 bytes"),
    ({"height": 0}, "no pixels"),
    ({"width": 0}, "no pixels"),
])
def test_malformed_messages_raise(overrides: dict, match: str) -> None:
    msg = make_msg(sample("rgb8"), "rgb8", overrides=overrides)
    with pytest.raises(ImageConversionError, match=match):
        image_msg_to_rgb(msg)


def test_odd_step_for_16bit_raises() -> None:
    msg = make_msg(sample("mono16", 2, 3), "mono16", pad=1)
    with pytest.raises(ImageConversionError, match="not a multiple"):
        image_msg_to_array(msg)


def test_error_is_a_value_error() -> None:
    assert issubclass(ImageConversionError, ValueError)


@pytest.mark.parametrize(("encoding", "array"), [
    ("32FC1", RNG.random((17, 33), dtype=np.float32)),
    ("mono8", RNG.integers(0, 256, (17, 33), dtype=np.uint8)),
    ("rgb8", RNG.integers(0, 256, (17, 33, 3), dtype=np.uint8)),
])
def test_array_to_image_msg_round_trip(encoding: str, array: np.ndarray) -> None:
    pytest.importorskip("sensor_msgs")
    from std_msgs.msg import Header

    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = array_to_image_msg(array, encoding, header)
    assert msg.header.frame_id == "cam" and msg.header.stamp.sec == 12 and msg.header.stamp.nanosec == 345
    assert (msg.height, msg.width, msg.encoding) == (17, 33, encoding)
    assert msg.step == 33 * array.itemsize * (3 if array.ndim == 3 else 1)
    assert len(msg.data) == msg.step * msg.height
    np.testing.assert_array_equal(image_msg_to_array(msg), array)


def test_array_to_image_msg_with_a_factory_and_non_contiguous_input() -> None:
    array = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)[:, ::2]
    msg = array_to_image_msg(array, "rgb8", msg_factory=lambda: SimpleNamespace(data=None))
    assert msg.step == 15 and msg.data.dtype == np.uint8
    np.testing.assert_array_equal(image_msg_to_rgb(msg), array)


@pytest.mark.parametrize(("encoding", "array"), [
    ("32FC1", np.zeros((4, 4), np.float64)),
    ("mono8", np.zeros((4, 4, 3), np.uint8)),
    ("rgb8", np.zeros((4, 4), np.uint8)),
    ("8UC3", np.zeros((4, 4, 3), np.uint8)),
])
def test_array_to_image_msg_refuses_mismatches(encoding: str, array: np.ndarray) -> None:
    with pytest.raises(ImageConversionError):
        array_to_image_msg(array, encoding, msg_factory=lambda: SimpleNamespace(data=None))


def test_rgb_to_image_msg_bgr8() -> None:
    pytest.importorskip("sensor_msgs")
    rgb = RNG.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    msg = rgb_to_image_msg(rgb, encoding="bgr8")
    assert msg.encoding == "bgr8"
    np.testing.assert_array_equal(image_msg_to_array(msg), rgb[:, :, ::-1])
    np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed(fmt: str) -> None:
    rgb = np.zeros((17, 33, 3), np.uint8)
    rgb[:, :16] = (200, 30, 10)
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", rgb[:, :, ::-1])
    assert ok
    out = compressed_msg_to_rgb(SimpleNamespace(format=fmt, data=buf.tobytes()))
    assert out.shape == (17, 33, 3) and out.dtype == np.uint8
    if fmt == "png":
        np.testing.assert_array_equal(out, rgb)
    else:
        assert np.abs(out.astype(int) - rgb).mean() < 6
        assert out[8, 4, 0] > 150 and out[8, 4, 2] < 60  # still red, i.e. not BGR


def test_compressed_grey_png_becomes_rgb() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    _, buf = cv2.imencode(".png", grey)
    out = compressed_msg_to_rgb(SimpleNamespace(format="png", data=buf.tobytes()))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


@pytest.mark.parametrize(("data", "fmt", "match"), [
    (b"", "jpeg", "no data"),
    (b"not an image at all", "jpeg", "could not decode"),
    (b"\x00" * 16, "16UC1; compressedDepth", "compressed depth"),
])
def test_compressed_errors(data: bytes, fmt: str, match: str) -> None:
    with pytest.raises(ImageConversionError, match=match):
        compressed_msg_to_rgb(SimpleNamespace(format=fmt, data=data))


def test_decoder_falls_back_without_cv_bridge() -> None:
    decode, name = make_image_decoder()
    try:
        import cv_bridge  # noqa: F401
    except ImportError:
        assert decode is image_msg_to_rgb and name == "dicnet_ros.image_conversion"
    else:
        assert name == "cv_bridge"
    with pytest.raises(ImageConversionError):
        decode(make_msg(sample("rgb8"), "yuv422"))


def test_import_does_not_pull_in_rclpy() -> None:
    code = "import sys, dicnet_ros.image_conversion, dicnet_ros.visualization; assert 'rclpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------------------------------ hostile compressed data
ATTACKS = Path(__file__).with_name("data") / "attacks"


def attack(name: str) -> bytes:
    """An input found by an outside fuzz client (test/data/attacks, byte for byte as found)."""
    return (ATTACKS / name).read_bytes()


def jpeg_bytes(shape: tuple[int, int] = (360, 640), quality: int = 90) -> bytes:
    image = cv2.resize(RNG.integers(0, 256, (9, 16, 3), dtype=np.uint8), (shape[1], shape[0]))
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def test_exif_orientation_is_ignored() -> None:
    """A 64x48 frame tagged EXIF Orientation=6 stays 64 wide and 48 high: camera frames are never re-oriented."""
    data = attack("exif_rot6_64x48.jpg")
    assert decode_compressed(data).shape == (48, 64, 3)
    assert compressed_msg_to_rgb(SimpleNamespace(format="jpeg", data=data)).shape == (48, 64, 3)


def test_scan_bomb_is_refused_before_decoding() -> None:
    """4096x4096 grey progressive JPEG whose last scan repeats 1000 times: inside the pixel limit, over the budget."""
    data = attack("scan_bomb_1000.jpg")
    assert compressed_image_size(data) == (4096, 4096)
    with pytest.raises(ImageConversionError, match=r"1006 scans .* decode budget"):
        decode_compressed(data)
    # an ordinary progressive frame (libjpeg's 10 scans) decodes
    rgb = cv2.resize(RNG.integers(0, 256, (9, 16, 3), dtype=np.uint8), (640, 360))
    progressive = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert progressive.count(b"\xff\xda") > 1
    assert decode_compressed(progressive).shape == (360, 640, 3)


def test_huge_png_is_refused_from_its_header() -> None:
    with pytest.raises(ImageTooLargeError, match="12000x12000"):
        decode_compressed(attack("png_12000x12000.png"))


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda d: d[: len(d) // 2], "truncated JPEG .* no end-of-image"),
    (lambda d: d[: len(d) // 2] + b"\xff\xd9", "corrupt .* Corrupt JPEG data"),
    (lambda d: d[:3000] + bytes(RNG.integers(0, 256, 2000, dtype=np.uint8)) + d[5000:], "corrupt"),
    (lambda d: d[:400] + b"\xff\xd9", "cannot hold the 4096x4096"),
])
def test_truncated_or_corrupt_jpeg_is_refused_quietly(mutate: Callable[[bytes], bytes], match: str,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    """Never publish a half-invented frame, and say why in the error, not as a stray libjpeg line on stderr."""
    source = attack("scan_bomb_1000.jpg") if "4096" in match else jpeg_bytes()
    with pytest.raises(ImageConversionError, match=match):
        decode_compressed(mutate(source))
    assert capfd.readouterr().err == ""


def test_truncated_or_corrupt_png_is_refused_quietly(capfd: pytest.CaptureFixture[str]) -> None:
    png = cv2.imencode(".png", RNG.integers(0, 256, (60, 80, 3), dtype=np.uint8))[1].tobytes()
    with pytest.raises(ImageConversionError, match="truncated PNG"):
        decode_compressed(png[: len(png) // 2])
    with pytest.raises(ImageConversionError, match=r"corrupt .* libpng"):
        decode_compressed(png[:100] + bytes([png[100] ^ 0xFF]) + png[101:])
    assert capfd.readouterr().err == ""


def test_other_stderr_output_during_a_decode_is_kept(capfd: pytest.CaptureFixture[str]) -> None:
    """Lines other threads print while a decode holds stderr reach it afterwards, unchanged."""
    import os
    import threading

    started = threading.Event()

    def noisy() -> None:
        started.wait()
        os.write(2, b"[INFO] [0.0] [other]: still here\n")

    thread = threading.Thread(target=noisy)
    thread.start()
    big = jpeg_bytes((1080, 1920))
    for _ in range(5):
        started.set()
        decode_compressed(big)
    thread.join()
    assert "[INFO] [0.0] [other]: still here" in capfd.readouterr().err


def test_webp_header_size_and_file_reading(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for quality in (80, 101):  # lossy VP8 and lossless VP8L
        data = cv2.imencode(".webp", rgb, [cv2.IMWRITE_WEBP_QUALITY, quality])[1].tobytes()
        assert compressed_image_size(data) == (53, 37)
        (tmp_path / "a.webp").write_bytes(data)
        assert read_image_file(tmp_path / "a.webp").shape == (37, 53, 3)
    with pytest.raises(ImageTooLargeError):
        read_image_file(tmp_path / "a.webp", max_pixels=100)
