"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers, fused or separate graphs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from dicnet_ros.inference.base import AnomalyModel, BackendUnavailableError, ModelLoadError
from dicnet_ros.inference.graphs import (
    INPUT_NAME,
    ModelFiles,
    check_image_size,
    check_io,
    compose,
    fixed_input_hw,
    parse_metadata,
    resolve_model_files,
)
from dicnet_ros.metadata import ModelMetadata

log = logging.getLogger(__name__)

OPTIONS = ("providers", "threads", "graph_optimization", "trt_cache_dir")
_OPT_LEVELS = ("disable", "basic", "extended", "all")


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError("backend 'onnxruntime' needs the onnxruntime package "
                                      "(pip install onnxruntime, or onnxruntime-gpu for CUDA)") from exc
    return onnxruntime


def available_providers() -> list[str]:
    try:
        return list(import_onnxruntime().get_available_providers())
    except BackendUnavailableError:
        return []


def choose_providers(device: str, path: Path, providers: list[str] | None = None,
                     trt_cache_dir: str | Path | None = None) -> list[Any]:
    """Execution providers for ``device`` (auto | cpu | cuda[:N] | tensorrt[:N]) or an explicit list."""
    available = available_providers()
    if providers:
        missing = [p for p in providers if (p[0] if isinstance(p, tuple) else p) not in available]
        if missing:
            raise BackendUnavailableError(f"ONNX Runtime providers {missing} are not available; "
                                          f"available: {', '.join(available)}")
        return list(providers)
    kind, _, index = device.partition(":")
    device_id = int(index or 0)
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "auto":
        return ([cuda] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    if kind in ("cuda", "gpu"):
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailableError(f"device '{device}' needs onnxruntime-gpu with CUDA "
                                          f"(pip install onnxruntime-gpu); available providers: {', '.join(available)}")
        return [cuda, "CPUExecutionProvider"]
    if kind == "tensorrt":
        if "TensorrtExecutionProvider" not in available:
            raise BackendUnavailableError(f"device '{device}' needs onnxruntime-gpu built with TensorRT and the "
                                          f"TensorRT libraries; available providers: {', '.join(available)}")
        cache = Path(trt_cache_dir) if trt_cache_dir else path.parent / f"{path.stem}.ort_trt_cache"
        cache.mkdir(parents=True, exist_ok=True)
        trt = ("TensorrtExecutionProvider", {"device_id": device_id, "trt_engine_cache_enable": True,
                                             "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True,
                                             "trt_timing_cache_path": str(cache)})
        return [trt, cuda, "CPUExecutionProvider"]
    raise BackendUnavailableError(f"unknown device '{device}' for onnxruntime; use auto, cpu, cuda[:N] or "
                                  f"tensorrt[:N]")


def _describe_io(args: list[Any]) -> dict[str, tuple[str, list]]:
    return {a.name: (a.type, list(a.shape)) for a in args}


class OrtGraph:
    """One ONNX Runtime session; checks the file is a DiCNet graph of the given role."""

    def __init__(self, path: Path, role: str, providers: list[Any], threads: int = 0,
                 graph_optimization: str = "all", spin: bool | None = None):
        ort = import_onnxruntime()
        if graph_optimization not in _OPT_LEVELS:
            raise ValueError(f"graph_optimization must be one of {_OPT_LEVELS}")
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        options.intra_op_num_threads = int(threads or 0)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # Worker threads busy-wait between the operators of one run (waking sleeping threads for each of ~100
        # small parallel operators costs more than the work on a small CPU: 640x360 INT8 20.9 -> 13.1 ms) but
        # stop at the end of each run: threads spinning after it kept every core hot and slowed the rest of a
        # ROS node (measured before: 720p publish 1.8 vs 0.2 ms; CPU burnt in the 30 ms after a run 29 ms with
        # plain spinning, 0.1 ms with the stop). spin=True spins after runs too, spin=False never spins.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0" if spin is False else "1")
        if spin is None:
            options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for bad files
            text = " ".join(str(exc).split())
            if "protobuf" in text.lower() or "invalid_graph" in text.lower() or "load model" in text.lower():
                raise ModelLoadError(f"{path}: not a valid ONNX model (truncated or corrupt?): {text[:300]}") from exc
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {text[:300]}") from exc
        self.path = path
        self.metadata = parse_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        self.inputs = _describe_io(self.session.get_inputs())
        check_io(role, self.inputs, _describe_io(self.session.get_outputs()), path)
        self.fixed_hw = fixed_input_hw(self.inputs[INPUT_NAME][1]) if INPUT_NAME in self.inputs else None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        wanted = {k: v for k, v in feeds.items() if k in self.inputs}
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, wanted), strict=True))

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()


class OrtModel(AnomalyModel):
    """DiCNet on ONNX Runtime. Options: providers (list), threads (intra-op, 0 = ORT default),
    graph_optimization (disable|basic|extended|all), trt_cache_dir (TensorRT EP engine cache),
    spin (None = busy-wait only inside a run, the default; True = also between runs; False = never; see OrtGraph)."""

    backend_name = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "auto", providers: list[str] | None = None,
                 threads: int = 0, graph_optimization: str = "all", trt_cache_dir: str | Path | None = None,
                 spin: bool | None = None):
        files: ModelFiles = resolve_model_files(path)
        chosen = choose_providers(device, files.path, providers, trt_cache_dir)
        self.graphs = {role: OrtGraph(p, role, chosen, threads, graph_optimization, spin)
                       for role, p in files.graphs.items()}
        first = self.graphs["fused"] if files.form == "fused" else self.graphs["teacher"]
        metadata: ModelMetadata = files.manifest_metadata or first.metadata
        self.form = files.form
        self.fixed_hw = first.fixed_hw
        self._call = compose(files.form, self.graphs)
        used = first.providers
        super().__init__(files.path, metadata, "cuda" if "CUDAExecutionProvider" in used[:1] else
                         ("tensorrt" if "TensorrtExecutionProvider" in used[:1] else "cpu"))
        self.threads = threads
        log.info("onnxruntime: %s (%s) on %s", files.path, files.form, ", ".join(used))

    def _run(self, image: np.ndarray) -> tuple:
        return self._run_batch(image[None])[0]

    def _run_batch(self, batch: np.ndarray) -> list[tuple]:
        check_image_size(batch[0], self.fixed_hw, self.path)
        return self._call(batch)

    def warmup(self, iterations: int = 2) -> None:
        if self.fixed_hw is None:
            super().warmup(iterations)
            return
        dummy = np.zeros((*self.fixed_hw, 3), np.uint8)
        for _ in range(iterations):
            self._run(dummy)

    def close(self) -> None:
        self.graphs.clear()

    def describe(self) -> dict[str, str]:
        providers = next(iter(self.graphs.values())).providers if self.graphs else []
        return {**super().describe(), "form": self.form, "providers": ",".join(providers),
                "threads": str(self.threads or "default")}
