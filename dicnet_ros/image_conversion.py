"""sensor_msgs/Image <-> numpy without cv_bridge (which PyPI ROS installs lack), with cv_bridge's semantics.

Why our own: cv_bridge is not installable from PyPI, and it trusts ``step`` / data length, so a malformed
message from a camera driver can crash or silently garble a frame. Here every field is checked first and a
bad message raises ``ImageConversionError`` naming the problem; the node counts and skips it.

The arrays match ``CvBridge().imgmsg_to_cv2(msg)`` (passthrough: native byte order, row padding cropped) and
``imgmsg_to_cv2(msg, "rgb8")`` (16-bit scaled by 255/65535, rounded, like cv_bridge's ``convertTo``).

Functions use duck typing on the message fields (height, width, encoding, is_bigendian, step, data), so the
rosbag tools can pass ``rosbags`` message objects; rclpy / sensor_msgs are imported only when a message is built.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from dicnet_ros.text import bounded

# encoding -> (dtype, channels, cv2 code to RGB or None when already RGB / mono handled separately)
_INPUT_ENCODINGS: dict[str, tuple[type, int, int | None]] = {
    "rgb8": (np.uint8, 3, None),
    "bgr8": (np.uint8, 3, cv2.COLOR_BGR2RGB),
    "rgba8": (np.uint8, 4, cv2.COLOR_RGBA2RGB),
    "bgra8": (np.uint8, 4, cv2.COLOR_BGRA2RGB),
    "mono8": (np.uint8, 1, cv2.COLOR_GRAY2RGB),
    "rgb16": (np.uint16, 3, None),
    "bgr16": (np.uint16, 3, cv2.COLOR_BGR2RGB),
    "rgba16": (np.uint16, 4, cv2.COLOR_RGBA2RGB),
    "bgra16": (np.uint16, 4, cv2.COLOR_BGRA2RGB),
    "mono16": (np.uint16, 1, cv2.COLOR_GRAY2RGB),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_INPUT_ENCODINGS)

# encodings this module writes: encoding -> (dtype, channels)
_OUTPUT_ENCODINGS: dict[str, tuple[type, int]] = {
    "32FC1": (np.float32, 1),
    "mono8": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
}
OUTPUT_ENCODINGS: tuple[str, ...] = tuple(_OUTPUT_ENCODINGS)

_LITTLE_ENDIAN_HOST = sys.byteorder == "little"


class ImageConversionError(ValueError):
    """A message cannot be turned into an image (unknown encoding, inconsistent size/step/data)."""


class ImageTooLargeError(ImageConversionError):
    """The image (or what a compressed header claims) has more pixels than allowed: refused before decoding."""


#: Default pixel limit: a 4096 x 4096 image (fits 4K UHD 3840 x 2160 and DCI 4K 4096 x 2160).
DEFAULT_MAX_PIXELS = 4096 * 4096
def compressed_image_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding, or None when the header is not one of those.

    Why: a few hundred bytes of JPEG can claim 12000 x 12000 pixels, and OpenCV would allocate and decode all of
    them (seconds, gigabytes) before anyone could object; the header answers in microseconds.
    """
    buf = memoryview(np.asarray(data, dtype=np.uint8).reshape(-1)) if not isinstance(data, bytes) else memoryview(data)
    if len(buf) >= 24 and bytes(buf[:8]) == b"\x89PNG\r\n\x1a\n" and bytes(buf[12:16]) == b"IHDR":
        return int.from_bytes(buf[16:20], "big"), int.from_bytes(buf[20:24], "big")
    if len(buf) < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    pos = 2
    while pos + 4 <= len(buf):
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(buf[pos + 2: pos + 4], "big")
        # start of frame (baseline, progressive, lossless, arithmetic...): precision, height, width
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if pos + 9 > len(buf):
                return None
            return int.from_bytes(buf[pos + 7: pos + 9], "big"), int.from_bytes(buf[pos + 5: pos + 7], "big")
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a JPEG we can size
            return None
        pos += 2 + length
    return None


def check_pixel_count(width: int, height: int, max_pixels: int | None, what: str = "image") -> None:
    """Raise ImageTooLargeError when ``width x height`` exceeds ``max_pixels`` (None or 0 = no limit)."""
    if max_pixels and width * height > max_pixels:
        raise ImageTooLargeError(f"{what} of {width}x{height} = {width * height} pixels exceeds the limit of "
                                 f"{max_pixels} pixels (max_input_pixels); refused without decoding")


def _buffer(data: Any) -> np.ndarray:
    """The message's data as a flat uint8 array, a zero-copy view when the data supports the buffer protocol."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain list of ints (e.g. a hand-built message)
        return np.asarray(data, dtype=np.uint8)


def image_msg_to_array(msg: Any) -> np.ndarray:
    """Image message -> array in its own encoding (cv_bridge passthrough): (H, W) or (H, W, C), native byte order.

    A view on the message buffer when possible (no row padding, native endianness): cheap on the hot path.
    """
    encoding = str(msg.encoding)
    spec = _INPUT_ENCODINGS.get(encoding)
    if spec is None:
        if encoding in _OUTPUT_ENCODINGS:
            spec = (*_OUTPUT_ENCODINGS[encoding], None)
        else:
            raise ImageConversionError(
                f"unsupported image encoding '{bounded(encoding)}'; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    dtype, channels, _ = spec
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image has no pixels ({width}x{height})")
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width x channels x bytes = {width}x{channels}x{itemsize} = {row_bytes} "
            f"for {encoding} {width}x{height}")
    if step % itemsize:
        raise ImageConversionError(f"step {step} is not a multiple of the {itemsize}-byte sample size of {encoding}")
    flat = _buffer(msg.data)
    needed = step * height
    if flat.size < needed:
        raise ImageConversionError(
            f"data has {flat.size} bytes, but step x height = {step}x{height} = {needed} "
            f"for {encoding} {width}x{height}")
    wire = np.dtype(dtype)
    if itemsize > 1:
        wire = wire.newbyteorder(">" if msg.is_bigendian else "<")
    shape: tuple[int, ...] = (height, width, channels) if channels > 1 else (height, width)
    strides: tuple[int, ...] = (step, channels * itemsize, itemsize) if channels > 1 else (step, itemsize)
    image = np.ndarray(shape=shape, dtype=wire, buffer=flat, strides=strides)
    if not wire.isnative:
        image = image.astype(wire.newbyteorder("="))  # byteswap into native order (a copy)
    return image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit the way cv_bridge does (``convertTo(CV_8U, 255/65535)``, rounded); 8-bit unchanged."""
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.uint16:
        raise ImageConversionError(f"cannot scale {image.dtype} samples to 8 bit")
    # round(v / 257) exactly: no ties exist because 257 is odd
    return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """Image message of a supported encoding -> (H, W, 3) uint8 RGB (== cv_bridge ``imgmsg_to_cv2(msg, "rgb8")``).

    rgb8 without row padding comes back as a read-only view of the message buffer (no copy).
    """
    encoding = str(msg.encoding)
    if encoding not in _INPUT_ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding '{bounded(encoding)}'; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    code = _INPUT_ENCODINGS[encoding][2]
    image = to_uint8(image_msg_to_array(msg))
    if code is None:
        return image
    return cv2.cvtColor(np.ascontiguousarray(image), code)


def compressed_msg_to_rgb(msg: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """CompressedImage (jpeg / png, colour or grey) -> (H, W, 3) uint8 RGB.

    The size in the PNG / JPEG header is checked against ``max_pixels`` before anything is decoded (None or 0 =
    no limit, then other formats OpenCV reads are accepted too); with a limit, data whose size cannot be read
    from its header is refused, since nothing would bound what decoding it costs.
    """
    fmt = str(getattr(msg, "format", "")).lower()
    if "compresseddepth" in fmt:
        raise ImageConversionError(f"compressed depth images are not supported (format '{bounded(fmt)}')")
    data = _buffer(msg.data)
    if data.size == 0:
        raise ImageConversionError("compressed image has no data")
    if max_pixels:
        size = compressed_image_size(data)
        if size is None:
            raise ImageConversionError(f"could not decode compressed image: no PNG or JPEG header (format "
                                       f"'{bounded(fmt)}', {data.size} bytes), so its size cannot be checked first")
        check_pixel_count(*size, max_pixels, what=f"compressed image (header, {data.size} bytes)")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageConversionError(f"could not decode compressed image (format '{bounded(fmt)}', {data.size} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _check_array(array_: np.ndarray, encoding: str) -> np.ndarray:
    """Refuse arrays whose dtype / channels do not fit ``encoding`` (cv_bridge ``cv2_to_imgmsg`` does the same)."""
    if encoding not in _OUTPUT_ENCODINGS:
        raise ImageConversionError(f"cannot write encoding {encoding!r}; supported: {', '.join(OUTPUT_ENCODINGS)}")
    dtype, channels = _OUTPUT_ENCODINGS[encoding]
    got_channels = 1 if array_.ndim == 2 else (array_.shape[2] if array_.ndim == 3 else -1)
    if array_.dtype != dtype or got_channels != channels:
        raise ImageConversionError(
            f"encoding {encoding} needs {np.dtype(dtype).name} with {channels} channel(s), "
            f"got {array_.dtype} shaped {array_.shape}")
    return np.ascontiguousarray(array_)


def array_to_image_msg(array_: np.ndarray, encoding: str, header: Any = None,
                       msg_factory: Callable[[], Any] | None = None) -> Any:
    """numpy array -> Image message (32FC1, mono8, mono16, rgb8, bgr8), one copy of the pixels.

    ``header`` is assigned as is (the node passes the input's header so stamp and frame_id are unchanged).
    ``msg_factory`` builds the empty message; default ``sensor_msgs.msg.Image`` (imported here, not at import).
    """
    data = _check_array(array_, encoding)
    if msg_factory is None:
        from sensor_msgs.msg import Image

        msg = Image()
    else:
        msg = msg_factory()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(data.shape[0]), int(data.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0 if _LITTLE_ENDIAN_HOST or data.dtype.itemsize == 1 else 1
    msg.step = int(data.strides[0])
    if isinstance(getattr(msg, "data", None), array.array) or msg_factory is None:
        # the fastest way into rclpy's uint8[] (Kilted, 720p rgb8): an array.array("B") filled by one memcpy is
        # kept as is by the setter (0.12 ms); bytes are copied twice (tobytes + array, 0.15 ms); a memoryview or
        # numpy array is converted element by element (~60 ms). rclpy then memcpy's the buffer into the C message.
        buf = array.array("B")
        buf.frombytes(data.data.cast("B"))
        msg.data = buf
    else:  # rosbags-style messages hold numpy arrays
        msg.data = data.reshape(-1).view(np.uint8).copy()
    return msg


def rgb_to_image_msg(rgb: np.ndarray, header: Any = None, encoding: str = "rgb8",
                     msg_factory: Callable[[], Any] | None = None) -> Any:
    """(H, W, 3) uint8 RGB -> Image message as rgb8 (or bgr8, channels swapped)."""
    if encoding == "bgr8":
        rgb = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    elif encoding != "rgb8":
        raise ImageConversionError(f"rgb_to_image_msg writes rgb8 or bgr8, not {encoding!r}")
    return array_to_image_msg(rgb, encoding, header, msg_factory)


def make_image_decoder(prefer_cv_bridge: bool = True) -> tuple[Callable[[Any], np.ndarray], str]:
    """A function Image msg -> RGB uint8 and its name: cv_bridge when installed (after our checks), else ours.

    Our checks run first either way, so a malformed message is an ``ImageConversionError``, not a crash.
    """
    if prefer_cv_bridge:
        try:
            from cv_bridge import CvBridge, CvBridgeError  # type: ignore[import-not-found]
        except ImportError:
            pass
        else:
            bridge = CvBridge()

            def decode(msg: Any) -> np.ndarray:
                if str(msg.encoding) not in _INPUT_ENCODINGS:
                    raise ImageConversionError(
                        f"unsupported image encoding '{bounded(msg.encoding)}'; supported: "
                        f"{', '.join(SUPPORTED_ENCODINGS)}")
                image_msg_to_array(msg)  # validation only (a view, cheap)
                try:
                    return bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
                except CvBridgeError as exc:
                    raise ImageConversionError(str(exc)) from exc

            return decode, "cv_bridge"
    return image_msg_to_rgb, "dicnet_ros.image_conversion"
