"""Checks that an INT8 graph keeps the float model's quality on the CPU that runs it, and on the AVX2 path.

Two checks, because integer kernels differ per CPU (``dicnet_ros.inference.cpu_features``):

- ``saturation_check`` (static, CPU-independent): ONNX Runtime multiplies u8 activations with s8 weights on AVX2
  and on AVX-512 without VNNI with VPMADDUBSW, which adds two products into a saturating 16-bit integer. Activations
  can reach 255, so a product can saturate there when two same-sign weights of one output sum beyond 128 in
  magnitude (255 x 129 > 32767). 7-bit weights (``reduce_range``, |w| <= 64) make it impossible; u8 weights are
  multiplied in 16 bits without pair sums. The check reads the graph ONNX Runtime runs after its optimisations,
  which can turn float layers into integer ones (``optimized_graph``).
- ``parity_check`` (measured): the integer kernels' ``anomaly_score`` against the same graph run as float
  arithmetic on the dequantised values (ONNX Runtime graph optimisations off) and against the FP32 model, on
  labelled held-out images: per-pixel score error and pooled AUROC / AP / FPR95 within ``ParityBar``. Natively it
  measures this CPU's path; ``emulate="x86-avx2"`` runs the integer kernels under ``qemu-x86_64 -cpu Haswell``
  (AVX2, no VNNI) in a child process, so any machine can measure the AVX2 path.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicnet_ros.inference.cpu_features import INT8_PATHS, detect_int8_path

log = logging.getLogger(__name__)

INT16_MAX = 32767
U8_MAX = 255
# user-mode emulators that make ONNX Runtime take another CPU's integer path (kind -> command prefix)
EMULATORS = {"x86-avx2": ("qemu-x86_64", "-cpu", "Haswell")}
# ros_wheels_bootstrapper (the PyPI ROS wheels) re-executes Python at start-up to set LD_LIBRARY_PATH; under a
# user-mode emulator that re-exec would leave the emulator and run natively. The worker needs no ROS library.
_NO_REEXEC = {"_ROS_WHEELS_BOOTSTRAP_COMPLETE": "1"}


class Int8CheckError(RuntimeError):
    """A check could not run (no data, no emulator, the emulator did not emulate); the message says why."""


# ------------------------------------------------------------------------------------------- saturation
@dataclass
class SaturationReport:
    """Integer products of the graph ONNX Runtime runs and which of them can saturate 16-bit pair sums."""

    products: int  # integer convolutions / matrix products with a constant weight in the graph ORT runs
    can_saturate: list[str] = field(default_factory=list)  # node names: two same-sign weights of one output > 128
    adjacent_pairs: list[str] = field(default_factory=list)  # the subset whose pairs as ONNX Runtime packs them do
    not_analysed: list[str] = field(default_factory=list)  # s8 activations: kernels not characterised here
    largest_pair_sum: int = 0  # the largest same-sign pair |w1 + w2| of any output (<= 128 cannot saturate)
    op_types: dict[str, str] = field(default_factory=dict)  # node name -> QLinearConv / QLinearMatMul / ...

    def metadata(self) -> dict[str, Any]:
        saturating: dict[str, int] = {}
        for name in self.can_saturate:
            saturating[self.op_types[name]] = saturating.get(self.op_types[name], 0) + 1
        return {"rule": "u8 x s8 pair sums vs int16 (VPMADDUBSW: AVX2, AVX-512 without VNNI)",
                "graph": "ONNX Runtime's optimised CPU graph", "products": self.products,
                "can_saturate": len(self.can_saturate), "by_op": saturating,
                "adjacent_pairs": len(self.adjacent_pairs), "not_analysed": len(self.not_analysed),
                "largest_pair_sum": self.largest_pair_sum}

    def summary(self) -> str:
        counts = ", ".join(f"{n} {op}" for op, n in sorted(self.metadata()["by_op"].items()))
        return (f"{len(self.can_saturate)} of {self.products} integer products can saturate 16-bit pair sums on "
                f"AVX2 / AVX-512 without VNNI ({counts or 'none'}; largest same-sign weight pair "
                f"{self.largest_pair_sum}, saturating above 128)")


def _largest_pair_sums(rows: np.ndarray) -> np.ndarray:
    """Per row (one output's reduction): the largest |w1 + w2| over two same-sign weights, in any order."""
    ordered = np.sort(rows.astype(np.int32), axis=1)
    positive = np.clip(ordered[:, -2:], 0, None).sum(axis=1)
    negative = -np.clip(ordered[:, :2], None, 0).sum(axis=1)
    return np.maximum(positive, negative)


def _adjacent_pair_sums(rows: np.ndarray) -> np.ndarray:
    """Per row: the largest same-sign |w1 + w2| of the pairs (0, 1), (2, 3), ... VPMADDUBSW adds."""
    rows = rows.astype(np.int32)
    if rows.shape[1] % 2:
        rows = np.pad(rows, ((0, 0), (0, 1)))
    a, b = rows[:, 0::2], rows[:, 1::2]
    positive = np.clip(a, 0, None) + np.clip(b, 0, None)
    negative = -(np.clip(a, None, 0) + np.clip(b, None, 0))
    return np.maximum(positive, negative).max(axis=1)


# integer ops of ONNX Runtime's optimised CPU graph -> (activation zero point, weight) input indices, for each
# operand the constant weight may be (a MatMul's B first, then its A)
_INTEGER_OPS = {"QLinearConv": ((2, 3),), "ConvInteger": ((2, 1),), "QLinearMatMul": ((2, 3), (5, 0)),
                "MatMulInteger": ((2, 1), (3, 0))}


def _reduction_rows(op_type: str, weight: np.ndarray, weight_is_b: bool) -> np.ndarray:
    """The weight as (outputs, reduction) in the order ONNX Runtime's x86 kernels pair it: convolutions run
    channels-last (kernel tap by tap, input channels fastest); a MatMul reduces over K."""
    if "Conv" in op_type:
        return np.moveaxis(weight, 1, -1).reshape(weight.shape[0], -1)
    return weight.T if weight_is_b else weight  # B (K, N): one row per column; A (M, K): rows as they are


def optimized_graph(model_path: Path) -> Any:
    """The graph ONNX Runtime's CPU provider runs, after its optimisations: they fuse QDQ pairs into integer ops and
    quantize to per-tensor int8 the float weights of a convolution whose input is dequantized (WeightBiasQuantization),
    so a layer kept float in the QDQ file can still run in integer arithmetic."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="dicnet_int8_optimized_") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath).graph


def saturation_check(model_path: Path) -> SaturationReport:
    """Which integer products of the graph ONNX Runtime runs for ``model_path`` can saturate on a VPMADDUBSW path."""
    from onnx import numpy_helper

    graph = optimized_graph(model_path)
    initializers = {init.name: init for init in graph.initializer}
    report = SaturationReport(products=0)
    for node in graph.node:
        if node.op_type not in _INTEGER_OPS:
            continue
        operands = [(zero, w) for zero, w in _INTEGER_OPS[node.op_type] if node.input[w] in initializers]
        if not operands:
            continue  # activation x activation: no product of this model does that
        x_zero, w = operands[0]
        weight_is_b = w != 0
        weight = numpy_helper.to_array(initializers[node.input[w]])
        zero = node.input[x_zero] if len(node.input) > x_zero else ""
        activation = numpy_helper.to_array(initializers[zero]).dtype if zero in initializers else np.dtype(np.uint8)
        report.products += 1
        report.op_types[node.name] = node.op_type
        if activation != np.uint8:
            report.not_analysed.append(node.name)
            continue
        if weight.dtype != np.int8:
            continue  # u8 x u8: ONNX Runtime multiplies in 16 bits and sums in 32, no pair saturates
        rows = _reduction_rows(node.op_type, weight, weight_is_b)
        largest = int(_largest_pair_sums(rows).max())
        report.largest_pair_sum = max(report.largest_pair_sum, largest)
        if U8_MAX * largest > INT16_MAX:
            report.can_saturate.append(node.name)
            if U8_MAX * int(_adjacent_pair_sums(rows).max()) > INT16_MAX:
                report.adjacent_pairs.append(node.name)
    return report


# ----------------------------------------------------------------------------------------------- parity
@dataclass
class ParityBar:
    """How close the integer kernels must stay (score error in points = % of the model's calibrated score range)."""

    score_error_points: float = 1.0  # mean |int8 - float QDQ| per pixel
    auroc_points: float = 0.3
    ap_relative: float = 0.03
    fpr95_points: float = 1.0


@dataclass
class ParityResult:
    """One path's measurement: pooled metrics (in %) of each score and the differences the bar judges."""

    path: str  # an INT8_PATHS kind
    how: str  # "native on <cpu>" or the emulator command
    images: int
    data: str
    metrics: dict[str, dict[str, float]]  # "int8", "float_qdq", "fp32" -> auroc / ap / fpr95 (%)
    score_error_points: dict[str, float]  # "float_qdq" / "fp32" -> mean |int8 - it| in points
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        m = self.metrics
        return (f"{INT8_PATHS[self.path][0]} ({self.how}), {self.images} images: INT8 AUROC / AP / FPR95 "
                f"{m['int8']['auroc']:.2f} / {m['int8']['ap']:.2f} / {m['int8']['fpr95']:.2f}, float QDQ "
                f"{m['float_qdq']['auroc']:.2f} / {m['float_qdq']['ap']:.2f} / {m['float_qdq']['fpr95']:.2f}, FP32 "
                f"{m['fp32']['auroc']:.2f} / {m['fp32']['ap']:.2f} / {m['fp32']['fpr95']:.2f}; score error "
                f"{self.score_error_points['float_qdq']:.2f} points vs float QDQ"
                + (f"; FAILED: {'; '.join(self.failures)}" if self.failures else ""))

    def metadata(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "path"}


def load_parity_data(root: Path, count: int, split: str = "test") -> tuple[list[np.ndarray], list[np.ndarray], Any]:
    """The first ``count`` labelled images of a dataset split with anomalies (images, labels, dataset spec)."""
    from dicnet_ros.data import open_dataset

    try:
        dataset = open_dataset(Path(root), split)
    except (ValueError, FileNotFoundError) as exc:
        raise Int8CheckError(f"parity data {root}: {exc}") from None
    n = min(count, len(dataset))
    if n == 0:
        raise Int8CheckError(f"parity data {root}: no images in the {split} split")
    samples = [dataset[i] for i in range(n)]
    return [s.image for s in samples], [s.label for s in samples], dataset.spec


def score_maps(model_path: Path, images: list[np.ndarray], graph_optimization: str = "all",
               threads: int = 0) -> np.ndarray:
    """``anomaly_score`` of every image through ONNX Runtime on the CPU (graph_optimization "disable" runs a QDQ
    graph as float arithmetic on the dequantised values)."""
    from dicnet_ros.inference import load_model

    model = load_model(model_path, "onnxruntime", "cpu", graph_optimization=graph_optimization, threads=threads)
    return np.stack([model.infer(image).anomaly_score for image in images]).astype(np.float32)


def emulated_scores(model_path: Path, images: list[np.ndarray], path: str, threads: int = 2,
                    emulator: tuple[str, ...] | None = None) -> np.ndarray:
    """``score_maps`` computed in a child Python under the user-mode emulator of ``path`` (EMULATORS, or
    ``emulator``); the child refuses to score unless CPUID there reports ``path``."""
    if emulator is None and path not in EMULATORS:
        raise Int8CheckError(f"no emulator for {path}; emulated paths: {', '.join(EMULATORS)}")
    emulator = emulator or EMULATORS[path]
    if shutil.which(emulator[0]) is None:
        raise Int8CheckError(f"{emulator[0]} not found: install it (Debian/Ubuntu: apt-get install qemu-user) to "
                             f"measure the {INT8_PATHS[path][0]} path, or skip the emulated check")
    with tempfile.TemporaryDirectory(prefix="dicnet_int8_emulated_") as tmp:
        source, target = Path(tmp) / "images.npy", Path(tmp) / "scores.npy"
        np.save(source, np.stack(images))
        command = [*emulator, sys.executable, "-m", "dicnet_training.int8_check", "--model", str(model_path),
                   "--images", str(source), "--scores", str(target), "--threads", str(threads), "--expect", path]
        done = subprocess.run(command, env={**os.environ, **_NO_REEXEC}, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "TCG doesn't support" not in ln]
            why = lines[-1] if lines else f"exit status {done.returncode}"
            raise Int8CheckError(f"emulated run ({' '.join(emulator)}) failed: {why}")
        return np.load(target)


def _pooled(scores: np.ndarray, labels: list[np.ndarray], spec: Any) -> dict[str, float]:
    from dicnet_ros.metrics import AnomalyEvaluator

    evaluator = AnomalyEvaluator(spec.anomaly_ids, (spec.ignore_id,), keep_exact_pooled=True, per_image=False)
    for score, label in zip(scores, labels, strict=True):
        evaluator.update(score, label)
    pooled = evaluator.compute()["pooled"]
    if pooled.get("auroc") is None:
        raise Int8CheckError(f"parity data needs anomaly and normal pixels: {pooled.get('error')}")
    return {"auroc": 100 * pooled["auroc"], "ap": 100 * pooled["aupr"], "fpr95": 100 * pooled["fpr95"]}


def judge(path: str, how: str, data: str, int8: np.ndarray, float_qdq: np.ndarray, fp32: np.ndarray,
          labels: list[np.ndarray], spec: Any, score_range: tuple[float, float],
          bar: ParityBar | None = None) -> ParityResult:
    """Compare the integer-kernel scores with the float QDQ and FP32 scores of the same images against ``bar``."""
    bar = bar or ParityBar()
    span = max(score_range[1] - score_range[0], 1e-12)
    errors = {name: float(np.abs(int8 - other).mean() / span * 100) for name, other in
              (("float_qdq", float_qdq), ("fp32", fp32))}
    metrics = {name: _pooled(scores, labels, spec) for name, scores in
               (("int8", int8), ("float_qdq", float_qdq), ("fp32", fp32))}
    failures = []
    if errors["float_qdq"] > bar.score_error_points:
        failures.append(f"score error {errors['float_qdq']:.2f} points vs float QDQ > {bar.score_error_points:g}")
    got = metrics["int8"]
    for name in ("float_qdq", "fp32"):
        ref = metrics[name]
        if abs(got["auroc"] - ref["auroc"]) > bar.auroc_points:
            failures.append(f"AUROC {got['auroc']:.2f} vs {name} {ref['auroc']:.2f}")
        if abs(got["ap"] - ref["ap"]) > bar.ap_relative * ref["ap"]:
            failures.append(f"AP {got['ap']:.2f} vs {name} {ref['ap']:.2f}")
        if abs(got["fpr95"] - ref["fpr95"]) > bar.fpr95_points:
            failures.append(f"FPR95 {got['fpr95']:.2f} vs {name} {ref['fpr95']:.2f}")
    return ParityResult(path, how, len(labels), data, metrics, errors, failures)


@dataclass
class ParityReferences:
    """What an INT8 model's integer kernels are judged against, computed once for every CPU path measured: the
    labelled images and the scores of the same graph run as float (QDQ) and of the FP32 model."""

    data: str
    split: str
    images: list[np.ndarray]
    labels: list[np.ndarray]
    spec: Any
    float_qdq: np.ndarray
    fp32: np.ndarray
    score_range: tuple[float, float]

    @classmethod
    def measure(cls, int8_model: Path, fp32_model: Path, data: Path, count: int,
                split: str = "test") -> ParityReferences:
        """The first ``count`` labelled images of ``data`` and both reference score sets."""
        from dicnet_ros.inference import load_model

        images, labels, spec = load_parity_data(data, count, split)
        fp32 = load_model(fp32_model, "onnxruntime", "cpu")
        return cls(str(data), split, images, labels, spec, score_maps(int8_model, images, "disable"),
                   np.stack([fp32.infer(image).anomaly_score for image in images]).astype(np.float32),
                   tuple(fp32.metadata.score_range))


def parity_check(int8_model: Path, fp32_model: Path, data: Path, count: int, emulate: str | None = None,
                 bar: ParityBar | None = None, split: str = "test",
                 references: ParityReferences | None = None) -> ParityResult:
    """Measure the INT8 model's integer kernels on this CPU (or, with ``emulate``, on that emulated path) against
    its float QDQ execution and the FP32 model on the first ``count`` labelled images of ``data`` (``references``
    measured for at least as many images: reused instead of computed again)."""
    if references is None or len(references.images) < count or references.split != split:
        references = ParityReferences.measure(int8_model, fp32_model, data, count, split)
    n = min(count, len(references.images))
    images, labels = references.images[:n], references.labels[:n]
    if emulate:
        int8 = emulated_scores(int8_model, images, emulate)
        path, how = emulate, " ".join(EMULATORS[emulate])
    else:
        cpu = detect_int8_path()
        int8 = score_maps(int8_model, images)
        path, how = cpu.kind, f"native on {cpu.cpu}"
    source = f"{references.data} ({references.split}, first {n})"
    result = judge(path, how, source, int8, references.float_qdq[:n], references.fp32[:n], labels, references.spec,
                   references.score_range, bar)
    log.info("INT8 parity: %s", result.summary())
    return result


def verify_export(int8_model: Path, fp32_model: Path, report: Any, options: Any) -> None:
    """The export-time checks of ``dicnet export --int8``: fill ``report.saturation`` / ``report.parity``
    (quantize.Int8Report) and raise Int8CheckError where the model must not be written.

    Refused: a 7-bit export that can still saturate, or any measured path outside the parity bar. Warned (and
    recorded, so the model warns at run time on such CPUs): 8-bit weights that can saturate, no parity data."""
    saturation = saturation_check(int8_model)
    report.saturation = saturation.metadata()
    if saturation.can_saturate and report.weight_bits == 7:
        raise Int8CheckError(f"INT8 export refused: {saturation.summary()}")
    if saturation.can_saturate:
        log.warning("INT8 with %d-bit weights: %s; it keeps its quality only on VNNI / ARM CPUs",
                    report.weight_bits, saturation.summary())
    if options.parity_data is None:
        log.warning("INT8 parity not measured (no parity data): the model will say so on every CPU at run time")
        return
    bar = options.parity_bar or ParityBar()
    counts = [options.parity_images, *([options.emulated_images] if options.parity_emulate else [])]
    references = ParityReferences.measure(int8_model, fp32_model, options.parity_data, max(counts))
    results = [parity_check(int8_model, fp32_model, options.parity_data, options.parity_images, bar=bar,
                            references=references)]
    results += [parity_check(int8_model, fp32_model, options.parity_data, options.emulated_images, emulate=path,
                             bar=bar, references=references) for path in options.parity_emulate]
    report.parity = {"bar": asdict(bar), "paths": {r.path: r.metadata() for r in results}}
    failed = [r for r in results if not r.passed]
    if failed:
        raise Int8CheckError("INT8 export refused, parity outside the bar: " + " | ".join(r.summary() for r in failed))


# ----------------------------------------------------------------------------------------- emulated worker
def _worker(argv: list[str] | None = None) -> int:
    """Child process of ``emulated_scores``: score an image stack and check the CPU it sees is the one expected."""
    parser = argparse.ArgumentParser(prog="python -m dicnet_training.int8_check")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--scores", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--expect", default=None, help="the INT8_PATHS kind CPUID must report")
    args = parser.parse_args(argv)
    seen = detect_int8_path(use_cpuid=True).kind
    if args.expect and seen != args.expect:
        print(f"this process sees a {INT8_PATHS[seen][0]} CPU, not {INT8_PATHS[args.expect][0]}: not emulated",
              file=sys.stderr)
        return 3
    np.save(args.scores, score_maps(args.model, list(np.load(args.images)), threads=args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
