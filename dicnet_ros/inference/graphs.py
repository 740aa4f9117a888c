"""Model files as the runtimes see them: the fused ONNX or the separate teacher/student/score graphs.

This module never imports torch: it finds the graph files, reads and checks the DiCNet metadata, and
composes graph runners (ONNX Runtime sessions or TensorRT engines) into one ``image -> (score, labels, extras)``
call, so every ONNX-based backend handles both forms, and the optional baseline outputs, the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from dicnet_ros.inference.base import DOMAIN_KEY, ModelLoadError
from dicnet_ros.integrity import IntegrityError, check_digest
from dicnet_ros.metadata import METADATA_KEY, MetadataError, ModelMetadata

SEPARATE_FORMAT = "dicnet-separate/1"
SEPARATE_ROLES = ("teacher", "student", "score")
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_score", "semantic_labels")
# optional outputs (graph name -> InferenceResult.extras key); older exports without them still load, and their
# extras simply lack the key
EXTRA_OUTPUTS = {"msp_score": "msp", "maxlogit_score": "maxlogit", "domain_score": DOMAIN_KEY}
# role -> (input names, output names) every graph of that role must have
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fused": ((INPUT_NAME,), OUTPUT_NAMES),
    "teacher": ((INPUT_NAME,), ("teacher_feature", "teacher_logits")),
    "student": ((INPUT_NAME,), ("student_feature",)),
    "score": (("teacher_feature", "student_feature", "teacher_logits"), OUTPUT_NAMES),
}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass
class ModelFiles:
    """Where the graphs of one model are: ``{'fused': path}`` or ``{'teacher','student','score': path}``."""

    path: Path  # what the user gave
    form: str  # "fused" | "separate"
    graphs: dict[str, Path]
    manifest_metadata: ModelMetadata | None = None


def is_checkpoint(path: Path) -> bool:
    return path.suffix.lower() in CHECKPOINT_SUFFIXES


def check_file(path: Path, what: str = "model file") -> None:
    """Missing or empty files fail early with one line naming the file."""
    if not path.exists():
        raise ModelLoadError(f"{path}: {what} not found")
    if path.is_file() and path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: {what} is empty")


def resolve_model_files(path: str | Path) -> ModelFiles:
    """A fused ``.onnx``, a ``*.separate.json`` manifest or a folder holding one -> the graph paths."""
    path = Path(path)
    check_file(path)
    manifest = path
    if path.is_dir():
        found = sorted(path.glob("*.separate.json"))
        if len(found) != 1:
            raise ModelLoadError(f"{path}: a model folder needs exactly one *.separate.json manifest, "
                                 f"found {len(found)}")
        manifest = found[0]
    if not manifest.name.endswith(".separate.json"):
        return ModelFiles(path, "fused", {"fused": path})
    try:
        data = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{manifest}: not a readable separate-graph manifest ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != SEPARATE_FORMAT:
        raise ModelLoadError(f"{manifest}: not a DiCNet separate-graph manifest (format {SEPARATE_FORMAT!r})")
    graphs = data.get("graphs", {})
    missing = [r for r in SEPARATE_ROLES if r not in graphs]
    if missing:
        raise ModelLoadError(f"{manifest}: manifest lacks the graphs {', '.join(missing)}")
    paths = {role: manifest.parent / graphs[role] for role in SEPARATE_ROLES}
    for role, graph in paths.items():
        check_file(graph, f"{role} graph")
    try:
        meta = ModelMetadata.from_dict(data.get("metadata") or {}, str(manifest))
    except (MetadataError, TypeError) as exc:
        raise ModelLoadError(str(exc).splitlines()[0]) from exc
    return ModelFiles(manifest, "separate", paths, meta)


def parse_metadata(props: dict[str, str], path: Path) -> ModelMetadata:
    """DiCNet metadata from an ONNX's custom metadata map (the file's weights checked against the checksum it
    carries), or ModelLoadError naming the file."""
    if METADATA_KEY not in props:
        raise ModelLoadError(f"{path}: ONNX model has no DiCNet metadata (metadata_props key '{METADATA_KEY}'); "
                             f"export it with `dicnet export`")
    try:
        metadata = ModelMetadata.from_json(props[METADATA_KEY], str(path))
    except (MetadataError, TypeError) as exc:
        raise ModelLoadError(" ".join(str(exc).split())) from exc
    try:
        check_digest(path, metadata.weights_sha256)
    except IntegrityError as exc:
        raise ModelLoadError(str(exc)) from None
    return metadata


def check_io(role: str, inputs: dict[str, tuple[str, list]], outputs: dict[str, tuple[str, list]],
             path: Path) -> None:
    """The graph's inputs/outputs must be the ones ``dicnet export`` writes for ``role``."""
    want_in, want_out = GRAPH_IO[role]
    missing_in = [n for n in want_in if n not in inputs]
    missing_out = [n for n in want_out if n not in outputs]
    if missing_in or missing_out:
        raise ModelLoadError(f"{path}: not a DiCNet {role} graph: inputs {sorted(inputs)}, outputs {sorted(outputs)} "
                             f"(expected inputs {list(want_in)}, outputs {list(want_out)})")
    if INPUT_NAME in inputs:
        dtype, shape = inputs[INPUT_NAME]
        if "uint8" not in dtype.lower() or len(shape) != 4 or shape[-1] != 3:
            raise ModelLoadError(f"{path}: input '{INPUT_NAME}' must be uint8 (N, H, W, 3), got {dtype} {shape}")


def fixed_input_hw(shape: list) -> tuple[int, int] | None:
    """(H, W) of an image input with a static size, None when dynamic."""
    h, w = shape[1], shape[2]
    return (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None


def check_image_size(image: np.ndarray, fixed: tuple[int, int] | None, path: Path) -> None:
    if fixed is not None and image.shape[:2] != fixed:
        raise ValueError(f"{path.name} was exported for {fixed[1]}x{fixed[0]} images, got "
                         f"{image.shape[1]}x{image.shape[0]}; re-export with --input-size "
                         f"{image.shape[1]}x{image.shape[0]} or --dynamic")


class GraphRunner(Protocol):
    """One graph on one runtime: feeds by name -> outputs by name (numpy)."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def compose(form: str, runners: dict[str, GraphRunner]) -> Callable[[np.ndarray], list[tuple]]:
    """(N, H, W, 3) uint8 -> one (score float32 (H', W'), labels uint8 (H', W'), extras) per image, via the fused
    or the separate graphs (both take a batch)."""

    def fused(batch: np.ndarray) -> list[tuple]:
        return _split(runners["fused"].run({INPUT_NAME: batch}), len(batch))

    def separate(batch: np.ndarray) -> list[tuple]:
        teacher = runners["teacher"].run({INPUT_NAME: batch})
        student = runners["student"].run({INPUT_NAME: batch})
        return _split(runners["score"].run({**teacher, **student, INPUT_NAME: batch}), len(batch))

    return fused if form == "fused" else separate


def _split(out: dict[str, np.ndarray], count: int) -> list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """The batch outputs by name -> per image (score, labels, extras); extras hold the optional outputs present."""
    results = []
    for i in range(count):
        score = np.asarray(out["anomaly_score"][i], dtype=np.float32)
        labels = np.asarray(out["semantic_labels"][i]).astype(np.uint8, copy=False)
        extras = {key: np.asarray(out[name][i], dtype=np.float32) for name, key in EXTRA_OUTPUTS.items()
                  if name in out}
        results.append((score, labels, extras))
    return results
