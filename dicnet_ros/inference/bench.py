"""`dicnet bench`: latency / FPS of every available backend against the official code's way of inferring.

The reference is what zhouhuan-hust/DiCNet evaluation_with_seg.py does per image: a teacher forward (feature +
classifier logits) and a separate student forward in eager PyTorch under ``no_grad``, score = mean over
channels of (T - S)^2, bilinear upsampling (align_corners=True) to the image size, per-image min-max, and the
teacher logits upsampled to the image size and arg-maxed in numpy. Our backends run the same model (same
weights, same network size, same input) through ``AnomalyModel.infer``, so the speed-up is a ratio measured
on one machine. Every timing includes host-side preprocessing and returns numpy score + labels + mask.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dicnet_ros.cli_options import add_device_argument
from dicnet_ros.inference.base import BackendUnavailableError, ModelLoadError
from dicnet_ros.inference.cpu_features import cpu_name, detect_int8_path, int8_notice
from dicnet_ros.preprocessing import parse_size

log = logging.getLogger(__name__)

DEFAULT_RESOLUTIONS = ((640, 360), (1280, 720))
# onnxruntime = the default export (class ids / MSP at the network size, see DiCNet.outputs); -exact = logits
# upsampled to the image before the arg-max, like the reference; -nearest = ids at the feature resolution.
ORT_LABEL_MODES = {"onnxruntime": "network", "onnxruntime-exact": "bilinear", "onnxruntime-nearest": "nearest"}
# precision variants: (export dtype, label mode); INT8 rows use the shipped INT8 model's label mode (feature
# resolution), so compare them with onnxruntime-nearest for the effect of the precision alone
PRECISION_BACKENDS = {"onnxruntime-fp16": ("float16", "network"), "onnxruntime-int8": ("int8", "nearest"),
                      "tensorrt-fp16": ("float16", "network"), "tensorrt-int8": ("int8", "nearest")}
BENCH_BACKENDS = ("reference", "torch", *ORT_LABEL_MODES, "tensorrt", *PRECISION_BACKENDS)
DEFAULT_BACKENDS = ("reference", "torch", "onnxruntime", "onnxruntime-exact", "onnxruntime-nearest",
                    "onnxruntime-fp16", "onnxruntime-int8", "tensorrt", "tensorrt-fp16", "tensorrt-int8")


# -------------------------------------------------------------------------------------------- environment
def hardware_info() -> dict[str, Any]:
    path = detect_int8_path()
    info: dict[str, Any] = {"cpu": cpu_name(), "cpu_cores": os.cpu_count(), "platform": platform.platform(),
                            "gpu": None, "int8_path": path.kind, "int8_path_description": path.describe()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("numpy", "torch", "onnxruntime", "tensorrt", "onnx"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # ImportError, or a broken native library
            out[name] = None
    return out


# -------------------------------------------------------------------------------------------- reference
def official_reference(model: Any) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The official evaluation_with_seg.py inference on one image (two eager passes + its post-processing).

    Its data loader normalises on the host; here the same ``preprocess`` is used so only inference differs.
    """
    import copy

    import torch
    import torch.nn.functional as F

    from dicnet_ros.model.pyramid_pooling import MatrixAdaptiveAvgPool2d
    from dicnet_ros.preprocessing import preprocess

    cfg = model.preprocess_config
    model = copy.deepcopy(model)
    for module in model.modules():  # the official code pools with nn.AdaptiveAvgPool2d (same numbers)
        if isinstance(module, torch.nn.Sequential):
            for i, child in enumerate(module):
                if isinstance(child, MatrixAdaptiveAvgPool2d):
                    module[i] = torch.nn.AdaptiveAvgPool2d(child.bins)

    def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        x = preprocess(torch.from_numpy(image)[None], cfg)
        with torch.no_grad():
            t = model.teacher(x)  # their teacher returns (feature, classifier logits)
            tf, logits = t.feature, t.logits
            sf = model.student(x)
        score = torch.pow(tf - sf, 2).mean(dim=1)
        score = F.interpolate(score.unsqueeze(1), (h, w), mode="bilinear", align_corners=True)
        score = (score - torch.min(score)) / (torch.max(score) - torch.min(score))
        logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
        pred = logits[0].cpu().numpy().argmax(axis=0)
        return score[0, 0].cpu().numpy(), pred

    return run


# ------------------------------------------------------------------------------------------------ timing
def summarize(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(np.ceil(0.95 * len(samples))) - 1)]
    p50 = statistics.median(samples)
    return {"p50_ms": p50, "p95_ms": p95, "mean_ms": statistics.fmean(samples), "min_ms": samples[0],
            "fps": 1e3 / p50, "iterations": len(samples)}


def time_round_robin(calls: dict[str, Callable[[], Any]], warmup: int, iterations: int,
                     failed: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    """Warm every call up, then time them in turns, so load from other processes hits all backends alike. A call
    that fails while warming up is left out (its reason goes into ``failed``) instead of ending the run."""
    for name, fn in list(calls.items()):
        try:
            for _ in range(warmup):
                fn()
        except Exception as exc:  # a backend that loads but cannot run (e.g. a GPU error) loses its row only
            calls.pop(name)
            if failed is not None:
                failed[name] = _reason(exc)
            log.info("skipping %s: %s", name, exc)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(iterations):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: summarize(values) for name, values in samples.items()}


def _reason(exc: BaseException) -> str:
    """One line for the skipped table: the message, named by its type where the message alone is unclear."""
    text = (str(exc).strip().splitlines() or [""])[0]
    known = isinstance(exc, (BackendUnavailableError, ModelLoadError, ImportError, ValueError))
    return text if known and text else f"{type(exc).__name__}: {text}"


def _prepare_checkpoint(args: argparse.Namespace, workdir: Path) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    from dicnet_ros.inference.random_models import random_checkpoint

    log.info("building an untrained '%s' model at network size %dx%d", args.model_config, *args.network_size)
    return random_checkpoint(workdir / f"{args.model_config}.pt", args.model_config, tuple(args.network_size),
                             num_classes=args.num_classes)


def _export(checkpoint: Path, workdir: Path, size: tuple[int, int], dynamic: bool, fp16: bool = False,
            labels: str = "network", int8: Any = None) -> Path:
    """The export a bench row runs (cached in the work folder); ``int8``: Int8Options for an INT8 graph."""
    from dicnet_training.export import ExportOptions, export_onnx

    tag = "dynamic" if dynamic else f"{size[0]}x{size[1]}"
    precision = f"_int8{int8.target}" if int8 is not None else ("_fp16" if fp16 else "")
    out = workdir / f"model_{tag}{precision}_{labels}.onnx"
    if not out.exists():
        export_onnx(checkpoint, out, ExportOptions(dynamic=dynamic, input_size=None if dynamic else size, fp16=fp16,
                                                   labels=labels, int8=int8))
    return out


def _precision_export(args: argparse.Namespace, backend: str, checkpoint: Path, workdir: Path,
                      size: tuple[int, int]) -> Path:
    """FP16 or INT8 export for a precision row; INT8 needs --calibration-data (in-distribution images)."""
    dtype, labels = PRECISION_BACKENDS[backend]
    int8 = None
    if backend == "onnxruntime-int8" and args.int8_model:
        return Path(args.int8_model)
    if dtype == "int8":
        if not args.calibration_data:
            raise ValueError("INT8 rows need --calibration-data (in-distribution images to calibrate on) or, for "
                             "onnxruntime-int8, --int8-model")
        from dicnet_training.quantize import Int8Options

        int8 = Int8Options(Path(args.calibration_data), args.calibration_images,
                           target="tensorrt" if backend.startswith("tensorrt") else "cpu")
    return _export(checkpoint, workdir, size, args.dynamic, fp16=dtype == "float16", labels=labels, int8=int8)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every requested backend at every resolution; returns the JSON-ready report."""
    import torch

    from dicnet_ros.inference import load_model
    from dicnet_ros.inference.availability import tensorrt_status
    from dicnet_ros.model.checkpoint import model_from_checkpoint

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dicnet_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = _prepare_checkpoint(args, workdir)
    model, metadata, _ = model_from_checkpoint(checkpoint)
    pre = metadata.preprocess_config
    params = sum(p.numel() for p in model.parameters())
    report: dict[str, Any] = {
        "hardware": hardware_info(), "versions": versions(),
        "settings": {"threads": threads, "warmup": args.warmup, "iterations": args.iterations,
                     "export": "dynamic" if args.dynamic else "fixed input size per resolution"},
        "model": {"source": str(args.checkpoint or f"untrained preset '{args.model_config}'"),
                  "config": metadata.model_config, "network_size": [pre.width, pre.height],
                  "parameters_m": round(params / 1e6, 3), "classes": metadata.num_classes},
        "results": [], "skipped": {}, "warnings": [],
    }
    wanted = [b for b in args.backends if b in BENCH_BACKENDS]
    rng = np.random.default_rng(0)
    for width, height in args.resolutions:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        calls: dict[str, Callable[[], Any]] = {}
        labels: dict[str, str] = {}
        for backend in wanted:
            try:
                if backend == "reference":
                    fn = official_reference(model)
                    calls[backend] = lambda fn=fn, image=image: fn(image)
                    labels[backend] = "reference (official 2-pass eager)"
                elif backend == "torch":
                    m = load_model(checkpoint, "torch", args.device, threads=threads)
                    calls[backend] = lambda m=m, image=image: m.infer(image)
                    labels[backend] = "torch eager (fused forward)"
                elif backend in PRECISION_BACKENDS:
                    runtime = "tensorrt" if backend.startswith("tensorrt") else "onnxruntime"
                    if runtime == "tensorrt":
                        ok, why = tensorrt_status()
                        if not ok:
                            raise BackendUnavailableError(why)
                    onnx_path = _precision_export(args, backend, checkpoint, workdir, (width, height))
                    options = ({"input_size": (width, height), "cache_dir": str(workdir / "engines")}
                               if runtime == "tensorrt" else {"threads": threads})
                    m = load_model(onnx_path, runtime, "cuda" if runtime == "tensorrt" else args.device, **options)
                    calls[backend] = lambda m=m, image=image: m.infer(image)
                    warning = int8_notice(m)[1]
                    if warning and f"{backend}: {warning}" not in report["warnings"]:
                        report["warnings"].append(f"{backend}: {warning}")
                        log.warning("%s: %s", backend, warning)
                    precision = m.describe()["precision"]
                    labels[backend] = f"{runtime} fused {precision} (ids: {PRECISION_BACKENDS[backend][1]})"
                elif backend.startswith("onnxruntime"):
                    mode = ORT_LABEL_MODES[backend]
                    onnx_path = _export(checkpoint, workdir, (width, height), args.dynamic, labels=mode)
                    m = load_model(onnx_path, "onnxruntime", args.device, threads=threads)
                    calls[backend] = lambda m=m, image=image: m.infer(image)
                    providers = m.describe()["providers"].replace("ExecutionProvider", "")
                    labels[backend] = f"onnxruntime fused ({providers}, ids: {mode})"
                else:
                    ok, why = tensorrt_status()
                    if not ok:
                        raise BackendUnavailableError(why)
                    onnx_path = _export(checkpoint, workdir, (width, height), args.dynamic, fp16=args.trt_fp16)
                    m = load_model(onnx_path, "tensorrt", "cuda", input_size=(width, height),
                                   cache_dir=str(workdir / "engines"))
                    calls[backend] = lambda m=m, image=image: m.infer(image)
                    labels[backend] = f"tensorrt ({m.describe()['precision']})"
            except Exception as exc:  # unavailable, unparsable, unbuildable ...: this row is skipped, not the run
                report["skipped"][backend] = _reason(exc)
                log.info("skipping %s: %s", backend, exc)
        stats = time_round_robin(calls, args.warmup, args.iterations, report["skipped"])
        reference_ms = stats.get("reference", {}).get("p50_ms")
        for backend, row_stats in stats.items():
            report["results"].append({
                "backend": backend, "label": labels[backend], "resolution": f"{width}x{height}", **row_stats,
                "speedup_vs_reference": (reference_ms / row_stats["p50_ms"]) if reference_ms else None})
            log.info("%dx%d %s: p50 %.1f ms", width, height, labels[backend], row_stats["p50_ms"])
    return report


def format_table(report: dict[str, Any]) -> str:
    hw, model = report["hardware"], report["model"]
    lines = [f"model: {model['source']}  network {model['network_size'][0]}x{model['network_size'][1]}  "
             f"{model['parameters_m']} M params",
             f"hardware: {hw['cpu']} ({hw['cpu_cores']} cores){', GPU ' + hw['gpu'] if hw['gpu'] else ''}; "
             f"threads {report['settings']['threads']}; " +
             ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v),
             f"CPU INT8 path: {hw['int8_path_description']}",
             f"{'input':>10} | {'backend':<40} | {'p50 ms':>8} | {'p95 ms':>8} | {'FPS':>7} | speed-up",
             "-" * 98]
    for r in report["results"]:
        speed = f"{r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] else "-"
        lines.append(f"{r['resolution']:>10} | {r['label']:<40} | {r['p50_ms']:8.1f} | {r['p95_ms']:8.1f} | "
                     f"{r['fps']:7.2f} | {speed}")
    for name, why in report["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    for warning in report.get("warnings", []):
        lines.append(f"WARNING {warning}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- CLI
def _sizes(text: str) -> list[tuple[int, int]]:
    return [parse_size(s) for s in text.split(",") if s.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="trained checkpoint (.pt); exported on the fly")
    source.add_argument("--model-config", default="lite",
                        help="untrained architecture preset when no checkpoint is given: tiny | lite | paper")
    parser.add_argument("--network-size", type=parse_size, default=(320, 176),
                        help="network size WxH for --model-config (default 320x176)")
    parser.add_argument("--num-classes", type=int, default=13)
    parser.add_argument("--resolutions", type=_sizes, default=list(DEFAULT_RESOLUTIONS),
                        help="comma-separated input sizes, default 640x360,1280x720")
    parser.add_argument("--backends", type=lambda s: [b.strip() for b in s.split(",")], default=list(DEFAULT_BACKENDS),
                        help=f"comma-separated subset of {','.join(BENCH_BACKENDS)} (default: all but "
                             f"onnxruntime-nearest, the export with --labels nearest)")
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch and ONNX Runtime (0 = torch's)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--dynamic", action="store_true", help="benchmark a dynamic-size export instead of fixed ones")
    parser.add_argument("--trt-fp16", action="store_true", help="the plain tensorrt row from an --fp16 export")
    parser.add_argument("--calibration-data", type=Path, default=None,
                        help="in-distribution images (folder or dataset root) for the INT8 rows; without it they "
                             "are skipped")
    parser.add_argument("--calibration-images", type=int, default=32, help="images to calibrate INT8 on")
    parser.add_argument("--int8-model", type=Path, default=None,
                        help="an INT8 ONNX already exported from the same checkpoint (e.g. "
                             "models/dicnet_sim_default_int8.onnx) for the onnxruntime-int8 row, instead of "
                             "exporting one with --calibration-data")
    parser.add_argument("--workdir", type=Path, default=None, help="where exports/engines go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dicnet_ros").setLevel(logging.INFO if args.iterations > 3 else logging.WARNING)
    report = run_benchmark(args)
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0
