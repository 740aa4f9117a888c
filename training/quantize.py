"""INT8 export: the fused FP32 graph -> a QDQ INT8 graph calibrated on in-distribution images.

Why QDQ: TensorRT 11 takes precision from the graph (Q/DQ nodes) instead of builder flags, and ONNX Runtime
runs QDQ graphs on a CPU. The teacher and student are quantized (``quantizable_nodes``); preprocessing, the
score (Eq. 7, smoothing, upsampling) and the baselines stay in float32, so the graph still takes uint8 images
and returns float32 maps.

Two targets, because the two runtimes want different activation encodings (measured on this project's model,
2-core Xeon, 640x360, convolutions only: FP32 27 ms; ``cpu`` 19 ms; ``tensorrt`` 37 ms on the CPU):
- ``cpu`` (default): asymmetric uint8 activations, int8 per-channel weights in 7 bits (``reduce_range``, |w| <= 64).
  ONNX Runtime folds each ReLU into the quantisation and fuses every Conv into one QLinearConv. 7 bits because on
  AVX2 and AVX-512 without VNNI ONNX Runtime multiplies u8 x s8 with VPMADDUBSW, whose 16-bit pair sums saturate
  with 8-bit weights (255 x 127 x 2 > 32767; measured: pooled FPR95 up by 5 points there, none on VNNI CPUs);
  255 x 64 x 2 cannot saturate (``int8_check.saturation_check`` proves it for every exported graph).
- ``tensorrt``: symmetric int8 activations and weights (zero point 0), the only form TensorRT's explicit
  quantization accepts. On a CPU the ReLUs then stay between Q/DQ pairs and half of the convolutions cannot be
  fused, so this form is for the GPU.

Which convolutions stay in float is measured, not guessed: every convolution is quantized alone and the error
it causes in the published ``anomaly_score`` (relative RMS against the FP32 graph on held-back calibration
images) is recorded; the most sensitive ones are kept in float until the fully quantized graph is within the
error budget. The per-layer table is written next to the model (``<stem>.int8_report.json`` / ``.md``), and the
calibration (method, images, dataset hash, float layers, measured error) goes into the model metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from dicnet_training.int8_check import ParityBar

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
INT8_TARGETS = ("cpu", "tensorrt")
WEIGHT_BITS = (7, 8)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
INPUT_NAME = "image"
SCORE_OUTPUT = "anomaly_score"


class QuantizationError(RuntimeError):
    """The INT8 export cannot be done as asked; the message says why."""


@dataclass
class Int8Options:
    """How to calibrate and how much error the published score may take (mirrors ``dicnet export --int8``)."""

    calibration_data: Path
    calibration_images: int = 64
    method: str = "minmax"
    target: str = "cpu"  # INT8_TARGETS
    calibration_split: str = "train"  # used when calibration_data is a dataset root
    sensitivity_images: int = 8  # held back from calibration, used to measure each layer's error
    max_score_error: float = 0.05  # relative RMS error of anomaly_score vs FP32 the INT8 graph may have
    max_float_layers: int = 8
    percentile: float = 99.999
    weight_bits: int | None = None  # WEIGHT_BITS; None: 7 for the cpu target (see the module doc), 8 for tensorrt
    parity_data: Path | None = None  # labelled held-out images (dataset root, test split) for int8_check
    parity_images: int = 120
    parity_emulate: tuple[str, ...] = ()  # also measure these paths under an emulator (int8_check.EMULATORS)
    emulated_images: int = 48  # emulation is ~100x slower than the native run
    parity_bar: ParityBar | None = None  # None: ParityBar() (the bar models/README.md#int8 states)

    def bits(self) -> int:
        """The weight bits this export uses (the target's default unless set)."""
        return self.weight_bits or (7 if self.target == "cpu" else 8)


@dataclass
class LayerSensitivity:
    node: str  # ONNX node name
    layer: str  # the PyTorch module it comes from (from the weight name)
    score_error: float  # relative RMS error of anomaly_score with only this layer in INT8
    kept_float: bool = False


@dataclass
class Int8Report:
    """What the INT8 export measured and decided; also stored (without the table) in the model metadata."""

    target: str
    method: str
    calibration_images: int
    sensitivity_images: int
    dataset: str
    dataset_sha256: str
    quantized_layers: int
    float_layers: list[str]
    score_error: float  # of the exported INT8 graph, on the sensitivity images
    score_error_all_int8: float
    max_score_error: float
    seconds: float
    layers: list[LayerSensitivity] = field(default_factory=list)
    weight_bits: int = 8
    saturation: dict[str, Any] = field(default_factory=dict)  # int8_check.SaturationReport.metadata()
    parity: dict[str, Any] = field(default_factory=dict)  # {"bar": ..., "paths": {kind: ParityResult.metadata()}}

    def metadata(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("layers")
        activations = "int8 symmetric" if self.target == "tensorrt" else "uint8 asymmetric"
        weights = "int8 symmetric per channel" + (", 7-bit range (reduce_range)" if self.weight_bits == 7 else "")
        return {"format": "QDQ", "activations": activations, "weights": weights, **data}


# ------------------------------------------------------------------------------------------------ data
def calibration_files(source: Path, count: int, split: str = "train") -> tuple[list[Path], str]:
    """``count`` image files spread evenly over ``source`` (a folder of images, or a dataset root's split).

    Never a split with anomalies: a dataset root must name an anomaly-free split (train / val).
    """
    source = Path(source)
    if not source.exists():
        raise QuantizationError(f"calibration data not found: {source}")
    if split == "test":
        raise QuantizationError("calibrate on in-distribution images (train / val), never on the test split")
    files: list[Path]
    label = str(source)
    try:
        from dicnet_ros.data import open_dataset

        dataset = open_dataset(source, split)
        files = [Path(item[0] if isinstance(item, (tuple, list)) else item) for item in dataset.items]
        label = f"{source} ({dataset.kind} {split} split)"
    except (ValueError, FileNotFoundError, TypeError):
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise QuantizationError(f"no images (png/jpg) under {source}")
    if count < len(files):
        picks = np.linspace(0, len(files) - 1, count).round().astype(int)
        files = [files[i] for i in sorted(set(picks.tolist()))]
    return files, label


def files_sha256(files: Sequence[Path]) -> str:
    """One hash over the names and bytes of the calibration images: which data calibrated this model."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_rgb(path: Path, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 RGB, resized to ``size_hw`` when the graph takes one fixed input size."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise QuantizationError(f"{path}: not a readable image")
    if size_hw is not None and bgr.shape[:2] != tuple(size_hw):
        bgr = cv2.resize(bgr, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def fixed_input_size(model_path: Path) -> tuple[int, int] | None:
    """(height, width) of a graph exported for one input size; None for a dynamic-size export."""
    import onnx

    dims = onnx.load(str(model_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    height, width = dims[1], dims[2]
    if height.HasField("dim_value") and width.HasField("dim_value"):
        return int(height.dim_value), int(width.dim_value)
    return None


class _ImageFeed:
    """ONNX Runtime calibration reader: one uint8 RGB image per run, at its own size (the graph resizes)."""

    def __init__(self, images: Sequence[np.ndarray]):
        self._images = list(images)
        self._iter: Iterator[np.ndarray] = iter(self._images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._iter, None)
        return None if image is None else {INPUT_NAME: image[None]}

    def rewind(self) -> None:
        self._iter = iter(self._images)


# ------------------------------------------------------------------------------------------------ graph
NETWORK_OPS = ("Conv", "Add", "Relu", "MatMul", "Concat", "Resize")  # quantized inside teacher and student


def _in_networks(node: Any) -> bool:
    """Exported from inside the teacher or the student (the dynamo exporter records the module scopes)?"""
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
    return "model.teacher" in scopes or "model.student" in scopes


DOMAIN_OUTPUT = "domain_score"


def domain_only_nodes(graph: Any) -> set[str]:
    """Names of the nodes that feed the ``domain_score`` output and no other output: the domain head, which stays
    float (a handful of reductions and a small matrix product on image-level statistics; quantizing them would cost
    precision where the score divides by small calibration spreads, and save nothing)."""
    producer = {out: node for node in graph.node for out in node.output}

    def ancestors(names: list[str]) -> set[str]:
        seen: set[str] = set()
        stack = [producer[n] for n in names if n in producer]
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            stack += [producer[i] for i in node.input if i in producer]
        return seen

    outputs = [o.name for o in graph.output]
    if DOMAIN_OUTPUT not in outputs:
        return set()
    return ancestors([DOMAIN_OUTPUT]) - ancestors([o for o in outputs if o != DOMAIN_OUTPUT])


def quantizable_nodes(model_path: Path) -> tuple[dict[str, str], list[str]]:
    """(Conv node name -> the PyTorch module it came from, the other nodes quantized with them).

    Inside the two networks the ReLUs, residual additions, pyramid-pooling products, concatenations and resizes
    are quantized too, so ONNX Runtime keeps whole blocks in int8 instead of converting at every op (measured on
    the shipped model at 640x360: convolutions only 16.3 ms, with the rest 13.4 ms; FP32 22.4 ms) and folds the
    ReLUs into the quantisation, which also halves the score error. Preprocessing and scoring stay float: an Add
    with a constant input (the normalisation) would cost more quantized than it saves. So does the domain head
    (``domain_only_nodes``).
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    domain_head = domain_only_nodes(graph)
    layers, others = {}, []
    for node in graph.node:
        if node.name in domain_head:
            continue
        if node.op_type == "Conv":
            weight = node.input[1]
            name = weight[len("model."):] if weight.startswith("model.") else weight
            layers[node.name] = name.removesuffix(".weight")
        elif node.op_type == "Add" and not any(i in constants for i in node.input):
            others.append(node.name)  # residual
        elif node.op_type in NETWORK_OPS and node.op_type != "Add" and (node.op_type == "Relu" or _in_networks(node)):
            others.append(node.name)
    return layers, others


def _quantize(fp32: Path, out: Path, feed: _ImageFeed | None, method: str, cache: Path, nodes: Sequence[str],
              percentile: float, target: str, weight_bits: int) -> Path:
    """One QDQ quantization of exactly ``nodes`` (names); tensor ranges from ``cache`` if it exists."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if feed is not None:
        feed.rewind()
    symmetric = target == "tensorrt"  # zero-point-0 int8 activations: what TensorRT's explicit quantization accepts
    extra_options = {"ActivationSymmetric": symmetric, "WeightSymmetric": True, "CalibPercentile": percentile}
    if target == "tensorrt":
        # biases stay float: onnx-tensorrt dequantizes INT8 / FP8 / INT4 data, not the INT32 bias encoding, and
        # TensorRT fuses the float bias into its INT8 convolution itself (NVIDIA's Q/DQ recipe does the same)
        extra_options["QuantizeBias"] = False
    advice = _DropPreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        quantize_static(
            str(fp32), str(out), feed, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(NETWORK_OPS),
            per_channel=True, reduce_range=weight_bits == 7, weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            nodes_to_quantize=list(nodes),
            calibrate_method=methods[method], calibration_cache_path=str(cache),
            extra_options=extra_options)
    finally:
        logging.getLogger().removeFilter(advice)
    if target == "cpu":
        _float_layers_read_float(out, set(nodes))
    return out


def _float_layers_read_float(path: Path, quantized: set[str]) -> None:
    """Feed every convolution kept in float the float tensor instead of its quantize -> dequantize copy.

    ONNX Runtime quantizes, at load time, the weights of a float convolution whose input comes from a
    DequantizeLinear (to per-tensor 8 bits: WeightBiasQuantization), which turns a layer the sensitivity scan kept in
    float into an integer one that can saturate on AVX2. The quantizer hands such a layer the dequantized tensor when
    another consumer of the same tensor (the other network's first convolution) is quantized."""
    import onnx

    model = onnx.load(str(path))
    producer = {out: node for node in model.graph.node for out in node.output}
    changed = False
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name in quantized:
            continue
        dequantize = producer.get(node.input[0])
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        quantize = producer.get(dequantize.input[0])
        if quantize is not None and quantize.op_type == "QuantizeLinear":
            node.input[0] = quantize.input[0]
            changed = True
    if changed:
        onnx.save(model, str(path))


class _DropPreprocessingAdvice(logging.Filter):
    """ONNX Runtime's quantizer advises its shape-inference pre-processing on every one of the per-layer runs;
    the exported graph already has its shapes and folded constants, so the advice is noise here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


class _ScoreError:
    """Relative RMS error of ``anomaly_score`` against the FP32 graph on fixed images."""

    def __init__(self, fp32: Path, images: Sequence[np.ndarray]):
        self.images = list(images)
        self.reference = [self._scores(fp32, image) for image in self.images] if self.images else []
        self._sessions: dict[Path, Any] = {}

    @staticmethod
    def _session(path: Path) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _scores(self, path: Path, image: np.ndarray, session: Any = None) -> np.ndarray:
        session = session or self._session(path)
        return session.run([SCORE_OUTPUT], {INPUT_NAME: image[None]})[0].astype(np.float64)

    def __call__(self, path: Path) -> float:
        session = self._session(path)
        num = den = 0.0
        for image, ref in zip(self.images, self.reference, strict=True):
            got = self._scores(path, image, session)
            num += float(((got - ref) ** 2).sum())
            den += float((ref ** 2).sum())
        return float(np.sqrt(num / max(den, 1e-30)))


def quantize_int8(fp32_onnx: Path, out: Path, options: Int8Options) -> Int8Report:
    """FP32 fused ONNX -> INT8 QDQ ONNX at ``out``; returns what was measured and decided (metadata not written)."""
    import onnx

    start = time.perf_counter()
    if options.target not in INT8_TARGETS:
        raise QuantizationError(f"INT8 target must be one of {', '.join(INT8_TARGETS)}")
    if options.method not in CALIBRATION_METHODS:
        raise QuantizationError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}")
    bits = options.bits()
    if bits not in WEIGHT_BITS or (bits == 7 and options.target != "cpu"):
        raise QuantizationError(f"INT8 weights are 7 bits (cpu target only) or 8, not {bits} for the {options.target} "
                                "target")
    total = options.calibration_images + options.sensitivity_images
    files, label = calibration_files(Path(options.calibration_data), total, options.calibration_split)
    if len(files) < 2:
        raise QuantizationError(f"need at least 2 calibration images, found {len(files)} in {label}")
    # every k-th image is held back to measure the error, so calibration and measurement never share an image
    n_sens = min(options.sensitivity_images, len(files) // 2)
    step = max(1, len(files) // max(1, n_sens))
    sens_idx = set(range(0, len(files), step)[:n_sens]) if n_sens else set()
    calib_files = [f for i, f in enumerate(files) if i not in sens_idx]
    sens_files = [f for i, f in enumerate(files) if i in sens_idx]
    log.info("INT8 calibration: %d images from %s (%s), %d held back for the sensitivity analysis",
             len(calib_files), label, options.method, len(sens_files))
    size_hw = fixed_input_size(fp32_onnx)
    feed = _ImageFeed([read_rgb(f, size_hw) for f in calib_files])
    error_of = _ScoreError(fp32_onnx, [read_rgb(f, size_hw) for f in sens_files])
    layers, others = quantizable_nodes(fp32_onnx)
    everything = [*layers, *others]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dicnet_int8_") as tmp:
        work = Path(tmp)
        cache = work / "calibration.json"
        candidate = work / "candidate.onnx"
        _quantize(fp32_onnx, candidate, feed, options.method, cache, everything, options.percentile,
                  options.target, bits)  # calibrates
        all_int8 = error_of(candidate) if error_of.images else 0.0
        table: list[LayerSensitivity] = []
        for node, layer in layers.items() if error_of.images else ():  # each layer alone in INT8 (cached ranges)
            _quantize(fp32_onnx, candidate, None, options.method, cache, [node], options.percentile, options.target,
                      bits)
            table.append(LayerSensitivity(node, layer, error_of(candidate)))
        table.sort(key=lambda row: row.score_error, reverse=True)
        float_layers: list[str] = []
        error = all_int8
        for row in table[: options.max_float_layers]:  # the most sensitive first, until within the budget
            if error <= options.max_score_error:
                break
            float_layers.append(row.node)
            row.kept_float = True
            _quantize(fp32_onnx, candidate, None, options.method, cache,
                      [n for n in everything if n not in float_layers], options.percentile, options.target, bits)
            error = error_of(candidate)
            log.info("kept %s in float: score error %.4f", row.layer, error)
        _quantize(fp32_onnx, candidate, None, options.method, cache,
                  [n for n in everything if n not in float_layers], options.percentile, options.target, bits)
        model = onnx.load(str(candidate))
        onnx.save(model, str(out))
    if error > options.max_score_error:
        log.warning("INT8 score error %.4f is above the budget %.4f even with %d layers in float", error,
                    options.max_score_error, len(float_layers))
    return Int8Report(
        target=options.target, method=options.method, calibration_images=len(calib_files),
        sensitivity_images=len(sens_files),
        dataset=label, dataset_sha256=files_sha256(files), quantized_layers=len(layers) - len(float_layers),
        float_layers=[layers[n] for n in float_layers], score_error=error, score_error_all_int8=all_int8,
        max_score_error=options.max_score_error, seconds=time.perf_counter() - start, layers=table,
        weight_bits=bits)


def write_report(report: Int8Report, onnx_path: Path) -> tuple[Path, Path]:
    """``<stem>.int8_report.json`` (everything) and ``.md`` (the per-layer table) next to the model."""
    base = onnx_path.with_name(onnx_path.stem)
    json_path = base.with_name(base.name + ".int8_report.json")
    md_path = base.with_name(base.name + ".int8_report.md")
    json_path.write_text(json.dumps(asdict(report), indent=2, default=float) + "\n")
    lines = [f"# INT8 sensitivity report: `{onnx_path.name}`", "",
             f"Calibration: {report.method}, {report.calibration_images} images of {report.dataset} "
             f"(sha256 {report.dataset_sha256[:16]}...); error = relative RMS of `anomaly_score` against FP32 on "
             f"{report.sensitivity_images} held-back images; budget {report.max_score_error:g}.", "",
             f"Weights: {report.weight_bits}-bit range. All {report.quantized_layers + len(report.float_layers)} "
             f"convolutions in INT8: error {report.score_error_all_int8:.4f}. Exported: {len(report.float_layers)} "
             f"kept in float, error {report.score_error:.4f}.", ""]
    if report.saturation:
        sat = report.saturation
        lines += [f"Saturation check ({sat['rule']}): {sat['can_saturate']} of {sat['products']} integer products "
                  f"can saturate (largest same-sign weight pair {sat['largest_pair_sum']}; above 128 can).", ""]
    paths = (report.parity or {}).get("paths", {})
    if paths:
        lines += ["Parity of the integer kernels (pooled AUROC / AP / FPR95 in %; score error = mean |INT8 - float "
                  "QDQ| per pixel in % of the score range):", "",
                  "| CPU path | how | images | INT8 | float QDQ | FP32 | score error | bar |",
                  "|---|---|---|---|---|---|---|---|"]
        for kind, r in paths.items():
            cells = [" / ".join(f"{r['metrics'][k][m]:.2f}" for m in ("auroc", "ap", "fpr95"))
                     for k in ("int8", "float_qdq", "fp32")]
            lines.append(f"| {kind} | {r['how']} | {r['images']} | {' | '.join(cells)} | "
                         f"{r['score_error_points']['float_qdq']:.2f} | {'met' if not r['failures'] else 'MISSED'} |")
        lines.append("")
    if report.layers:
        lines += ["| layer (PyTorch module) | ONNX node | score error with only this layer in INT8 | kept float |",
                  "|---|---|---|---|"]
        lines += [f"| `{r.layer}` | {r.node} | {r.score_error:.4f} | {'yes' if r.kept_float else ''} |"
                  for r in report.layers]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
