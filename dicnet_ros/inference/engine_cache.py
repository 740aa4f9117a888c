"""TensorRT engine cache: where a plan lives, what it was built for, and when to rebuild it.

A plan only runs with the TensorRT version and GPU it was built with, and only matches the ONNX and input
shapes (batch range included) it came from. Isaac ROS never checks, Autoware checks the version only; here the
full key (TensorRT version, GPU name, compute capability, ONNX hash, input shapes, precision, batch range) is
stored in a JSON sidecar next to the engine and compared on load, together with the plan's own size and hash
(so a truncated or overwritten plan is rebuilt, not fed to the runtime). Pure Python: testable without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SIDECAR_FORMAT = "dicnet-engine-key/1"
_KEY_FIELDS = ("tensorrt_version", "gpu_name", "compute_capability", "onnx_sha256", "input_shapes", "precision",
               "batch_range")
# a key without a batch range is one of a plan built for exactly one image per call
_KEY_DEFAULTS: dict[str, Any] = {"batch_range": [1, 1]}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shape_tag(input_shapes: dict[str, list[int]], batch_range: tuple[int, int] = (1, 1)) -> str:
    """'1x360x640x3' for the image input (or all inputs joined), used in file names; a batch range replaces the
    batch size: '1-4x360x640x3'."""
    low, high = batch_range
    items = [input_shapes["image"]] if "image" in input_shapes else [s for _, s in sorted(input_shapes.items())]
    tags = []
    for shape in items:
        dims = [str(d) for d in shape]
        if low != high and dims:
            dims[0] = f"{low}-{high}"
        tags.append("x".join(dims))
    return "_".join(tags)


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized plan depends on; any change means a rebuild."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"
    onnx_sha256: str
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...]  # sorted (name, shape) pairs, at the largest batch
    precision: str  # "fp32" | "fp16" (from the ONNX) [+ "+fp16flag" on TensorRT < 10.12]
    batch_range: tuple[int, int] = (1, 1)  # (min, max) images per call of the optimisation profile

    @classmethod
    def create(cls, tensorrt_version: str, gpu_name: str, compute_capability: str, onnx_sha256: str,
               input_shapes: dict[str, list[int] | tuple[int, ...]], precision: str,
               batch_range: tuple[int, int] | list[int] = (1, 1)) -> EngineKey:
        shapes = tuple(sorted((name, tuple(int(d) for d in shape)) for name, shape in input_shapes.items()))
        low, high = (int(b) for b in batch_range)
        return cls(str(tensorrt_version), str(gpu_name), str(compute_capability), onnx_sha256, shapes, precision,
                   (low, high))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shapes"] = {name: list(shape) for name, shape in self.input_shapes}
        data["batch_range"] = list(self.batch_range)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineKey:
        data = {**_KEY_DEFAULTS, **data}
        missing = [k for k in _KEY_FIELDS if k not in data]
        if missing:
            raise ValueError(f"engine key lacks {', '.join(missing)}")
        try:
            return cls.create(data["tensorrt_version"], data["gpu_name"], data["compute_capability"],
                              data["onnx_sha256"], data["input_shapes"], data["precision"], data["batch_range"])
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"engine key has a malformed field ({exc})") from exc

    def differences(self, other: EngineKey) -> list[str]:
        """Human-readable 'field: old -> new' for every field that differs (other = the stored key)."""
        out = []
        for name in _KEY_FIELDS:
            old, new = getattr(other, name), getattr(self, name)
            if old != new:
                if name == "onnx_sha256":
                    old, new = old[:12], new[:12]
                out.append(f"{name}: {old} -> {new}")
        return out


@dataclass(frozen=True)
class CacheDecision:
    rebuild: bool
    reason: str


def engine_path_for(onnx_path: str | Path, key: EngineKey, cache_dir: str | Path | None = None,
                    role: str = "") -> Path:
    """``<cache_dir or onnx dir>/<stem>[.role].<shape>.<precision>.engine``; the full key is in the sidecar."""
    onnx_path = Path(onnx_path)
    folder = Path(cache_dir) if cache_dir else onnx_path.parent
    shapes = {name: list(shape) for name, shape in key.input_shapes}
    parts = [onnx_path.stem, role, shape_tag(shapes, key.batch_range), key.precision.replace("+", "_")]
    return folder / (".".join(p for p in parts if p) + ".engine")


def sidecar_path(engine_path: str | Path) -> Path:
    return Path(str(engine_path) + ".json")


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """The stored sidecar dict; raises ValueError when it is missing or unreadable."""
    path = sidecar_path(engine_path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"no key file {path.name}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable key file {path.name} ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"key file {path.name} has an unknown format")
    return data


def decide(engine_path: str | Path, key: EngineKey, force: bool = False, verify_hash: bool = True) -> CacheDecision:
    """Reuse the cached plan only if it exists, is intact and was built for exactly ``key``."""
    engine_path = Path(engine_path)
    if force:
        return CacheDecision(True, "rebuild forced")
    if not engine_path.is_file():
        return CacheDecision(True, f"no cached engine {engine_path.name}")
    try:
        stored = read_sidecar(engine_path)
        stored_key = EngineKey.from_dict(stored.get("key", {}))
    except ValueError as exc:
        return CacheDecision(True, f"cached engine has no valid key ({exc})")
    diffs = key.differences(stored_key)
    if diffs:
        return CacheDecision(True, "cached engine was built for another setup: " + "; ".join(diffs))
    size = engine_path.stat().st_size
    if size == 0 or size != stored.get("engine_bytes"):
        return CacheDecision(True, f"cached engine is truncated or replaced ({size} bytes, key says "
                                   f"{stored.get('engine_bytes')})")
    if verify_hash and stored.get("engine_sha256") and sha256_file(engine_path) != stored["engine_sha256"]:
        return CacheDecision(True, "cached engine is corrupt (hash differs from its key file)")
    return CacheDecision(False, f"cached engine {engine_path.name} matches")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def store(engine_path: str | Path, key: EngineKey, plan: bytes, build_seconds: float | None = None) -> Path:
    """Write the plan, then its sidecar (atomically: a crash never leaves a plan with a matching key)."""
    engine_path = Path(engine_path)
    sidecar = sidecar_path(engine_path)
    if sidecar.exists():
        sidecar.unlink()
    _atomic_write(engine_path, plan)
    info = {"format": SIDECAR_FORMAT, "key": key.to_dict(), "key_digest": key.digest(),
            "engine_bytes": len(plan), "engine_sha256": hashlib.sha256(plan).hexdigest(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_seconds": build_seconds}
    _atomic_write(sidecar, json.dumps(info, indent=2, sort_keys=True).encode())
    return engine_path


def invalidate(engine_path: str | Path) -> None:
    """Remove a plan and its key (e.g. after the runtime refused to deserialize it)."""
    for p in (Path(engine_path), sidecar_path(engine_path)):
        if p.exists():
            p.unlink()


def timing_cache_path(cache_folder: str | Path, tensorrt_version: str, gpu_name: str) -> Path:
    """One timing cache per TensorRT version and GPU (a foreign cache is useless or rejected)."""
    slug = "".join(c if c.isalnum() else "-" for c in gpu_name).strip("-").lower() or "gpu"
    return Path(cache_folder) / f"dicnet.trt{tensorrt_version}.{slug}.timing.cache"


class EngineLoadError(RuntimeError):
    """The runtime refused a plan (corrupt, or built by an incompatible TensorRT)."""


def load_or_build(engine_path: str | Path, key: EngineKey, build: Any, deserialize: Any, force: bool = False,
                  log: Any = None) -> tuple[Any, str]:
    """Reuse a matching cached plan or build one; a plan the runtime refuses is deleted and rebuilt once.

    ``build() -> bytes`` and ``deserialize(bytes) -> engine`` (raising EngineLoadError) are injected so the
    decision logic is the same with TensorRT and in GPU-less tests. Returns (engine, what happened).
    """
    engine_path = Path(engine_path)
    decision = decide(engine_path, key, force)
    if not decision.rebuild:
        try:
            return deserialize(engine_path.read_bytes()), f"loaded {engine_path}"
        except EngineLoadError as exc:
            decision = CacheDecision(True, f"the runtime refused the cached engine ({exc})")
            invalidate(engine_path)
    if log is not None:
        log.info("building TensorRT engine %s: %s", engine_path.name, decision.reason)
    start = time.perf_counter()
    plan = build()
    seconds = time.perf_counter() - start
    store(engine_path, key, plan, seconds)
    try:
        engine = deserialize(plan)
    except EngineLoadError as exc:
        invalidate(engine_path)
        raise EngineLoadError(f"{engine_path}: a freshly built engine cannot be deserialized ({exc})") from exc
    return engine, f"built {engine_path} in {seconds:.0f} s ({decision.reason})"
