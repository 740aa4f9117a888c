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
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
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
#: Decode work a compressed frame may cost, in full-size passes over ``max_pixels``: a progressive JPEG is decoded
#: once per scan (10 scans is typical), so a file that repeats its last scan 1000 times stalls a decoder for
#: seconds while staying inside the pixel limit. scans x pixels above ``max_pixels x MAX_DECODE_PASSES`` is refused.
MAX_DECODE_PASSES = 16
#: The least a JPEG can spend on one 8 x 8 block is about one bit: fewer bytes than pixels / 512 cannot hold the
#: image it claims (a truncated file, or a bomb whose decoder would invent the rest).
MIN_JPEG_BITS_PER_BLOCK = 1

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOS, _JPEG_EOI = b"\xff\xda", b"\xff\xd9"


def _as_bytes(data: bytes | np.ndarray) -> bytes:
    return data if isinstance(data, bytes) else np.asarray(data, dtype=np.uint8).reshape(-1).tobytes()


def _webp_size(buf: memoryview) -> tuple[int, int] | None:
    """(width, height) of a RIFF WebP (lossy VP8, lossless VP8L or extended VP8X), from its first chunk."""
    if len(buf) < 30 or bytes(buf[:4]) != b"RIFF" or bytes(buf[8:12]) != b"WEBP":
        return None
    chunk = bytes(buf[12:16])
    if chunk == b"VP8 " and bytes(buf[23:26]) == b"\x9d\x01\x2a":
        return int.from_bytes(buf[26:28], "little") & 0x3FFF, int.from_bytes(buf[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and buf[20] == 0x2F:
        bits = int.from_bytes(buf[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(buf[24:27], "little") + 1, int.from_bytes(buf[27:30], "little") + 1
    return None


def compressed_image_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG or WebP header without decoding, or None for other data.

    Why: a few hundred bytes of JPEG can claim 12000 x 12000 pixels, and OpenCV would allocate and decode all of
    them (seconds, gigabytes) before anyone could object; the header answers in microseconds.
    """
    buf = memoryview(np.asarray(data, dtype=np.uint8).reshape(-1)) if not isinstance(data, bytes) else memoryview(data)
    if len(buf) >= 24 and bytes(buf[:8]) == _PNG_SIGNATURE and bytes(buf[12:16]) == b"IHDR":
        return int.from_bytes(buf[16:20], "big"), int.from_bytes(buf[20:24], "big")
    webp = _webp_size(buf)
    if webp is not None:
        return webp
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


# What libjpeg / libpng / libwebp print on their own (to the process's stderr) when data is corrupt or truncated.
_DECODER_MESSAGE = re.compile(
    r"^(libpng (warning|error)|Corrupt JPEG data|Premature end of JPEG|Invalid (JPEG|SOS|component|crop)|Bogus |"
    r"Inconsistent progression|Unsupported (JPEG|marker)|Huffman table|Quantization table|Not a JPEG file|"
    r"JPEG datastream|Empty JPEG image|Warning: unknown JFIF|Scan script|Adobe APP14|JFIF|Didn't expect more|"
    r"Bad (JPEG|Huffman)|Wrong JPEG|Sampling factors|Maximum supported|Requested features|Application transferred|"
    r"Failed to|Could not|ERROR|Error)")
_stderr_lock = threading.Lock()
_capture_file: Any = None  # one scratch file per process, reused under the lock (creating one costs ~1 ms)


@contextmanager
def _decoder_messages() -> Iterator[list[str]]:
    """Collect what the C decoders print to stderr during the block (one line per bad frame would otherwise
    flood the log past any throttle). Anything else printed meanwhile (other threads' log lines) goes back
    to stderr unchanged; the list is filled with the decoders' own lines when the block ends."""
    global _capture_file
    messages: list[str] = []
    with _stderr_lock:
        if _capture_file is None:
            _capture_file = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for the process
        capture = _capture_file
        capture.seek(0)
        capture.truncate(0)
        with suppress(AttributeError, ValueError, OSError):
            sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if capture.tell() or os.fstat(capture.fileno()).st_size:
                capture.seek(0)
                others = []
                for line in capture.read().decode("utf-8", "replace").splitlines():
                    (messages if _DECODER_MESSAGE.match(line.strip()) else others).append(line)
                if others:
                    os.write(2, ("\n".join(others) + "\n").encode())


def check_compressed(data: bytes | np.ndarray, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     what: str = "compressed image") -> tuple[int, int] | None:
    """Everything a compressed frame must pass before it reaches a decoder; (width, height) from its header.

    With a pixel limit: the size must be readable from a PNG / JPEG / WebP header and within ``max_pixels``; a
    JPEG must end with its end-of-image marker (a truncated file decodes to invented grey), hold at least about
    one bit per 8 x 8 block, and cost at most ``MAX_DECODE_PASSES`` full-size decodes (scans x pixels); a PNG
    must end with its IEND chunk. Without a limit (None or 0) nothing is checked and None is returned.
    """
    if not max_pixels:
        return None
    raw = _as_bytes(data)
    size = compressed_image_size(raw)
    if size is None:
        raise ImageConversionError(f"could not decode {what}: no PNG, JPEG or WebP header ({len(raw)} bytes), so "
                                   "its size cannot be checked first")
    width, height = size
    check_pixel_count(width, height, max_pixels, what=f"{what} (header, {len(raw)} bytes)")
    if width <= 0 or height <= 0:
        raise ImageConversionError(f"{what}: header claims {width}x{height} pixels")
    if raw.startswith(_PNG_SIGNATURE):
        if b"IEND" not in raw[-64:]:
            raise ImageConversionError(f"{what}: truncated PNG ({len(raw)} bytes, no IEND chunk at the end)")
    elif raw.startswith(b"\xff\xd8"):
        if _JPEG_EOI not in raw[-64:]:
            raise ImageConversionError(f"{what}: truncated JPEG ({len(raw)} bytes, no end-of-image marker)")
        blocks = ((width + 7) // 8) * ((height + 7) // 8)
        if len(raw) * 8 < blocks * MIN_JPEG_BITS_PER_BLOCK:
            raise ImageConversionError(f"{what}: truncated JPEG ({len(raw)} bytes cannot hold the {width}x{height} "
                                       "pixels its header claims)")
        scans = raw.count(_JPEG_SOS)  # 0xFF 0xDA never occurs inside entropy-coded data (0xFF is stuffed there)
        if scans * width * height > max_pixels * MAX_DECODE_PASSES:
            raise ImageConversionError(
                f"{what}: JPEG with {scans} scans of {width}x{height} pixels exceeds the decode budget of "
                f"{MAX_DECODE_PASSES} x max_input_pixels ({max_pixels}) pixel passes; refused without decoding")
    return size


def decode_compressed(data: bytes | np.ndarray, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                      what: str = "compressed image") -> np.ndarray:
    """PNG / JPEG / WebP bytes (colour or grey) -> (H, W, 3) uint8 RGB, as the camera recorded it.

    ``check_compressed`` runs first (pixel limit, truncation, decode budget). EXIF orientation is ignored: a camera
    frame is never re-oriented, so outputs keep the input's size. A frame the decoder calls corrupt (libjpeg /
    libpng messages) is refused instead of published half-invented; the message is in the error, not on stderr.
    """
    check_compressed(data, max_pixels, what)
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else np.asarray(data, np.uint8).reshape(-1)
    with _decoder_messages() as messages:
        try:
            bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        except cv2.error:
            bgr = None
    if messages:
        raise ImageConversionError(f"corrupt {what} ({buf.size} bytes): {bounded(messages[0])}")
    if bgr is None:
        raise ImageConversionError(f"could not decode {what} ({buf.size} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def compressed_msg_to_rgb(msg: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """CompressedImage (jpeg / png / webp, colour or grey) -> (H, W, 3) uint8 RGB via ``decode_compressed``.

    With a pixel limit, data whose size cannot be read from its header is refused, since nothing would bound
    what decoding it costs; without one (None or 0) other formats OpenCV reads are accepted too.
    """
    fmt = str(getattr(msg, "format", "")).lower()
    if "compresseddepth" in fmt:
        raise ImageConversionError(f"compressed depth images are not supported (format '{bounded(fmt)}')")
    data = _buffer(msg.data)
    if data.size == 0:
        raise ImageConversionError("compressed image has no data")
    return decode_compressed(data, max_pixels, f"compressed image (format '{bounded(fmt)}')")


def read_image_file(path: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB under the same rules as camera frames (``decode_compressed``)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise ImageConversionError(f"{path}: empty file")
    return decode_compressed(data, max_pixels, str(path))


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
