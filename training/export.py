"""`dicnet export`: a checkpoint -> ONE ONNX graph (uint8 image in, anomaly score + class ids + baselines out, and
the image-level out-of-domain score when the checkpoint has a domain head).

Preprocessing (resize to the fixed network size, normalise, pad) and the score/upsampling are traced from the
same torch functions the training and the torch backend use, so no runtime re-implements them. The network
runs at a fixed size inside the graph (pyramid pooling does not export with dynamic feature sizes, see
pitfalls), while the image input may have a fixed or a dynamic size. The calibrated metadata travels in the
ONNX ``metadata_props`` so one file is a complete deployable model.

``--separate`` additionally writes teacher / student / score graphs plus a manifest for users who place the
branches on different accelerators; the score graph is exported from the same ``anomaly_score`` /
``restore_size`` code, so there is still one scoring definition.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dicnet_training.command import Outputs, run_command
from dicnet_training.int8_check import EMULATORS, Int8CheckError, verify_export
from dicnet_training.quantize import (
    CALIBRATION_METHODS,
    INT8_TARGETS,
    WEIGHT_BITS,
    Int8Options,
    QuantizationError,
    quantize_int8,
    write_report,
)
from torch import nn

from dicnet_ros.integrity import PLACEHOLDER, stamp_file
from dicnet_ros.metadata import METADATA_KEY, ModelMetadata
from dicnet_ros.model.checkpoint import model_from_checkpoint
from dicnet_ros.model.dicnet import LABEL_MODES, DiCNet, DiCNetOutput
from dicnet_ros.preprocessing import parse_size

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_score", "semantic_labels", "msp_score", "maxlogit_score")
DOMAIN_OUTPUT = "domain_score"  # (N,) float32, only when the model has a domain head (model/domain.py)
DOMAIN_STATISTICS = "domain_statistics"  # separate graphs: the teacher graph's image-level statistics -> score graph
GraphOutputs = tuple[torch.Tensor, ...]  # in ``output_names`` order
SEPARATE_FORMAT = "dicnet-separate/1"
MIN_OPSET = 17
FP32_PARITY_RTOL = 1e-4
FP16_PARITY_RTOL = 5e-2
INT8_PARITY_RTOL = 0.5  # max |int8 - fp32| / max |fp32| of the score; quality parity is checked on labelled data


class ExportError(RuntimeError):
    """The export or its parity check failed; the message says which step."""


# ----------------------------------------------------------------------------------------------- wrappers
def output_names(model: DiCNet) -> list[str]:
    """The fused / score graph's outputs: the maps, and the domain score when the model has a domain head."""
    return [*OUTPUT_NAMES, *((DOMAIN_OUTPUT,) if model.domain_head is not None else ())]


def graph_outputs(out: DiCNetOutput) -> GraphOutputs:
    """What a graph returns, in ``output_names`` order: the fused and the score graph stay alike."""
    maps = (out.anomaly_score, out.semantic_labels.to(torch.uint8), out.msp_score, out.maxlogit_score)
    return maps if out.domain_score is None else (*maps, out.domain_score.float())


class FusedGraph(nn.Module):
    """image uint8 (N, H, W, 3) -> anomaly_score float32, semantic_labels uint8, msp_score float32,
    maxlogit_score float32 (N, H', W') [, domain_score float32 (N,)].

    fp32 calls ``DiCNet.forward`` itself (the one definition); fp16 runs the two branches in half precision
    and post-processes in fp32 with the same ``DiCNet.outputs``, so input stays uint8 and the score float32.
    """

    def __init__(self, model: DiCNet, network_resolution: bool = False, fp16: bool = False, labels: str = "network"):
        super().__init__()
        self.model = model
        self.network_resolution = network_resolution
        self.fp16 = fp16
        self.labels = labels

    def forward(self, image: torch.Tensor) -> GraphOutputs:
        m = self.model
        if not self.fp16:
            out = m(image, network_resolution=self.network_resolution, labels=self.labels)
        else:
            x = m.network_input(image).half()
            t = m.teacher(x)
            s = m.student(x)
            size = None if self.network_resolution else tuple(image.shape[1:3])
            stats = m.domain_statistics(x, t) if m.domain_head is not None else None
            out = m.outputs(t.feature.float(), s.float(), t.logits, size, self.labels, stats)
        return graph_outputs(out)


class TeacherGraph(nn.Module):
    """image -> (teacher_feature, teacher_logits) at feature resolution (the segmentation branch), and the
    image-level domain statistics (N, 3 + D) when the model has a domain head."""

    def __init__(self, model: DiCNet, fp16: bool = False):
        super().__init__()
        self.model = model
        self.fp16 = fp16

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.model.network_input(image)
        x = x.half() if self.fp16 else x
        t = self.model.teacher(x)
        if self.model.domain_head is None:
            return t.feature.float(), t.logits.float()
        return t.feature.float(), t.logits.float(), self.model.domain_statistics(x, t)


class StudentGraph(nn.Module):
    """image -> student_feature at feature resolution."""

    def __init__(self, model: DiCNet, fp16: bool = False):
        super().__init__()
        self.model = model
        self.fp16 = fp16

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.model.network_input(image)
        return self.model.student(x.half() if self.fp16 else x).float()


class ScoreGraph(nn.Module):
    """(teacher_feature, student_feature, teacher_logits, image) -> the fused graph's outputs; ``image`` gives the
    size only. Exported from ``DiCNet.outputs``, so the separate form scores exactly like the fused one."""

    def __init__(self, model: DiCNet, network_resolution: bool = False, labels: str = "network"):
        super().__init__()
        self.model = model
        self.network_resolution = network_resolution
        self.labels = labels

    def forward(self, teacher_feature: torch.Tensor, student_feature: torch.Tensor, teacher_logits: torch.Tensor,
                image: torch.Tensor) -> GraphOutputs:
        size = None if self.network_resolution else tuple(image.shape[1:3])
        return graph_outputs(self.model.outputs(teacher_feature, student_feature, teacher_logits, size, self.labels))


class DomainScoreGraph(ScoreGraph):
    """The score graph of a model with a domain head: the teacher graph's ``domain_statistics`` come in too."""

    def forward(self, teacher_feature: torch.Tensor, student_feature: torch.Tensor,  # type: ignore[override]
                teacher_logits: torch.Tensor, domain_statistics: torch.Tensor, image: torch.Tensor) -> GraphOutputs:
        size = None if self.network_resolution else tuple(image.shape[1:3])
        return graph_outputs(self.model.outputs(teacher_feature, student_feature, teacher_logits, size, self.labels,
                                                domain_statistics))


# ------------------------------------------------------------------------------------------------ export
@dataclass
class ExportOptions:
    """What to export; mirrors the command-line flags."""

    network_resolution: bool = False
    dynamic: bool = False
    input_size: tuple[int, int] | None = None  # (width, height); None = the network size
    fp16: bool = False
    labels: str = "network"  # where class ids / MSP are taken: see DiCNet.outputs (LABEL_MODES)
    separate: bool = False
    opset: int = 18
    check_parity: int = 0
    parity_images: list[Path] = field(default_factory=list)
    int8: Int8Options | None = None  # INT8 QDQ graph calibrated on in-distribution images (training/quantize.py)


@dataclass
class ExportResult:
    """Files written and the parity numbers (if checked)."""

    onnx_path: Path
    metadata: ModelMetadata
    separate_manifest: Path | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    int8_report: Path | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _example_input(model: DiCNet, opts: ExportOptions) -> torch.Tensor:
    """Example image for tracing. Dynamic exports trace at a size unlike the network size, so the in-graph
    resize is recorded (preprocess skips it when sizes match) and batch 2 keeps the batch dim symbolic."""
    pre = model.preprocess_config
    if opts.dynamic:
        return torch.randint(0, 256, (2, pre.height + 8, pre.width + 24, 3), dtype=torch.uint8)
    w, h = opts.input_size or (pre.width, pre.height)
    return torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8)


def _onnx_export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                 output_names: list[str], dynamic_inputs: dict[str, dict[int, str]], opset: int) -> str:
    """Export with the dynamo exporter (pyramid pooling needs it); fall back to the legacy one, saying why."""
    module = module.eval()
    shared: dict[str, Any] = {}  # one Dim per label, so e.g. the batch of every input is the same symbol
    dims: dict[str, Any] = {}
    for name in input_names:
        spec = dynamic_inputs.get(name) or {}
        dims[name] = {axis: shared.setdefault(label, torch.export.Dim(label, min=1 if label == "batch" else 8,
                                                                     max=8192))
                      for axis, label in spec.items()} or None
    try:
        with torch.no_grad():
            program = torch.onnx.export(module, args, input_names=input_names, output_names=output_names,
                                        dynamo=True, opset_version=opset, verbose=False,
                                        dynamic_shapes=dims if any(dims.values()) else None)
        program.save(str(path))
        return "dynamo"
    except Exception as exc:  # any exporter failure leads to the documented fallback
        log.warning("dynamo ONNX exporter failed (%s: %s); falling back to the legacy TorchScript exporter, which "
                    "cannot export pyramid pooling at sizes that are not multiples of the pooling grid. Install "
                    "'onnxscript' and check the torch version if this fails too.", type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "")
    axes: dict[str, dict[int, str]] = {name: dict(spec) for name, spec in dynamic_inputs.items() if spec}
    if axes:
        axes.update({name: {0: "batch", 1: "out_height", 2: "out_width"} for name in output_names})
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamo=False, opset_version=opset, dynamic_axes=axes or None)
    return "torchscript"


def write_metadata(path: Path, metadata: ModelMetadata, check: bool = True) -> None:
    """Put the metadata JSON into ``metadata_props``, check the model, and stamp the weights checksum in."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    metadata.weights_sha256 = PLACEHOLDER  # filled in by stamp_file once the file is final
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    model.producer_name = "dicnet_ros"
    onnx.save(model, str(path))
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    metadata.weights_sha256 = stamp_file(path)


def export_onnx(checkpoint: str | Path, out: str | Path, options: ExportOptions | None = None) -> ExportResult:
    """Export a student-stage checkpoint to a fused ONNX (and optionally the separate graphs)."""
    opts = options or ExportOptions()
    if opts.opset < MIN_OPSET:
        raise ExportError(f"opset {opts.opset} is too old; use {MIN_OPSET} or newer")
    checkpoint, out = Path(checkpoint), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if opts.int8 is not None and (opts.fp16 or opts.separate):
        raise ExportError("--int8 is a precision of the fused graph: combine it with neither --fp16 nor --separate")
    if opts.int8 is not None and opts.int8.target != "cpu" and (opts.int8.parity_data or opts.int8.parity_emulate):
        raise ExportError("the INT8 parity check measures ONNX Runtime's CPU kernels: it is for --int8-target cpu")
    model, metadata, _ = model_from_checkpoint(checkpoint)
    pre = model.preprocess_config
    export_model = copy.deepcopy(model).half() if opts.fp16 else model
    export_model.mu_c.data = model.mu_c.data.float().clone()  # the score is computed in fp32
    export_model.fusion_norm.data = model.fusion_norm.data.float().clone()
    if export_model.domain_head is not None:  # so is the domain score
        export_model.domain_head.float()
    example = _example_input(model, opts)
    dyn = {INPUT_NAME: {0: "batch", 1: "height", 2: "width"}} if opts.dynamic else {}
    start = time.perf_counter()
    if opts.labels not in LABEL_MODES:
        raise ExportError(f"labels must be one of {', '.join(LABEL_MODES)}, got {opts.labels!r}")
    fp32_out = out.with_name(out.stem + ".fp32_tmp.onnx") if opts.int8 is not None else out
    exporter = _onnx_export(FusedGraph(export_model, opts.network_resolution, opts.fp16, opts.labels), (example,),
                            fp32_out, [INPUT_NAME], output_names(model), dyn, opts.opset)
    in_size = None if opts.dynamic else list(opts.input_size or (pre.width, pre.height))
    export_info = {
        "form": "fused",
        "opset": opts.opset,
        "exporter": exporter,
        "dynamic": opts.dynamic,
        "input_size": in_size,  # (width, height) or None when dynamic
        "network_size": [pre.width, pre.height],
        "dtype": "int8" if opts.int8 is not None else ("float16" if opts.fp16 else "float32"),
        "output_resolution": "network" if opts.network_resolution else "input",
        "labels": opts.labels,
        "inputs": {INPUT_NAME: "uint8 (N, H, W, 3) RGB"},
        "outputs": {"anomaly_score": "float32 (N, H, W)", "semantic_labels": "uint8 (N, H, W)",
                    "msp_score": "float32 (N, H, W), 1 - max softmax of the teacher (baseline)",
                    "maxlogit_score": "float32 (N, H, W), -max logit of the teacher (MaxLogit baseline)",
                    **({DOMAIN_OUTPUT: "float32 (N,), out-of-domain score in standard deviations of the calibration "
                                       "images (above domain_threshold: out of domain)"}
                       if model.domain_head is not None else {})},
        "checkpoint_sha256": _sha256(checkpoint),
        "torch_version": torch.__version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta = ModelMetadata(**{**metadata.__dict__, "export": export_info,
                            "source_checkpoint": str(checkpoint.resolve())})
    if not meta.calibration.get("mu_c"):
        meta.calibration = {**meta.calibration, "mu_c": [float(v) for v in model.mu_c]}
    report_path = None
    if opts.int8 is not None:
        # written next to ``out`` and moved over it only once the checks pass: a refused export loses nothing
        work = out.with_name(out.stem + ".int8_tmp.onnx")
        try:
            report = quantize_int8(fp32_out, work, opts.int8)
            meta.export = {**meta.export, "quantization": report.metadata()}
            write_metadata(work, meta)
            if opts.int8.target == "cpu":  # the saturation and parity of ONNX Runtime's CPU kernels
                # the FP32 graph the INT8 one came from is the parity's reference: it loads like any model
                fp32_meta = ModelMetadata(**{**meta.__dict__, "export": {**export_info, "dtype": "float32"}})
                write_metadata(fp32_out, fp32_meta)
                verify_export(work, fp32_out, report, opts.int8)
            os.replace(work, out)
        except (QuantizationError, Int8CheckError) as exc:
            raise ExportError(str(exc)) from None
        finally:
            fp32_out.unlink(missing_ok=True)
            work.unlink(missing_ok=True)  # left only by a refused or failed export
        meta.export = {**meta.export, "quantization": report.metadata()}
        report_path = write_report(report, out)[1]
    write_metadata(out, meta)
    log.info("exported %s (%s exporter, %.1f s)", out, exporter, time.perf_counter() - start)
    result = ExportResult(out, meta, int8_report=report_path)
    if opts.separate:
        result.separate_manifest = export_separate(model, export_model, meta, out, opts)
    if opts.check_parity:
        images = random_images(opts.check_parity, model, opts) + load_images(opts.parity_images, opts)
        result.parity = check_parity(model, out, images, opts)
        if result.separate_manifest is not None:
            result.parity["separate"] = check_parity(model, result.separate_manifest, images, opts)
    return result


def export_separate(model: DiCNet, export_model: DiCNet, meta: ModelMetadata, out: Path,
                    opts: ExportOptions) -> Path:
    """Teacher, student and score graphs in ``<stem>_separate/`` with a ``dicnet.separate.json`` manifest."""
    folder = out.with_name(out.stem + "_separate")
    folder.mkdir(parents=True, exist_ok=True)
    example = _example_input(model, opts)
    with torch.no_grad():
        teacher_out = TeacherGraph(export_model, opts.fp16)(example)
        s_feat = StudentGraph(export_model, opts.fp16)(example)
    img_dyn = {0: "batch", 1: "height", 2: "width"} if opts.dynamic else {}
    feat_dyn = {0: "batch"} if opts.dynamic else {}
    domain = [DOMAIN_STATISTICS] if model.domain_head is not None else []  # teacher graph -> score graph
    score_graph = (DomainScoreGraph if domain else ScoreGraph)(model, opts.network_resolution, opts.labels)
    specs = {
        "teacher": (TeacherGraph(export_model, opts.fp16), (example,), [INPUT_NAME],
                    ["teacher_feature", "teacher_logits", *domain], {INPUT_NAME: img_dyn}),
        "student": (StudentGraph(export_model, opts.fp16), (example,), [INPUT_NAME], ["student_feature"],
                    {INPUT_NAME: img_dyn}),
        # the score graph is fp32: it is tiny and the score must not lose precision
        "score": (score_graph, (teacher_out[0], s_feat, teacher_out[1], *teacher_out[2:], example),
                  ["teacher_feature", "student_feature", "teacher_logits", *domain, INPUT_NAME], output_names(model),
                  {"teacher_feature": feat_dyn, "student_feature": feat_dyn, "teacher_logits": feat_dyn,
                   **{name: feat_dyn for name in domain}, INPUT_NAME: img_dyn}),
    }
    graphs: dict[str, str] = {}
    for role, (module, args, inputs, outputs, dyn) in specs.items():
        path = folder / f"{role}.onnx"
        exporter = _onnx_export(module, args, path, inputs, outputs, dyn, opts.opset)
        role_meta = ModelMetadata(**{**meta.__dict__, "export": {**meta.export, "form": f"separate:{role}",
                                                                 "exporter": exporter}})
        write_metadata(path, role_meta)
        graphs[role] = path.name
    manifest = folder / "dicnet.separate.json"
    sep_meta = ModelMetadata(**{**meta.__dict__, "export": {**meta.export, "form": "separate"}})
    manifest.write_text(json.dumps({"format": SEPARATE_FORMAT, "graphs": graphs,
                                    "metadata": json.loads(sep_meta.to_json())}, indent=2, sort_keys=True))
    log.info("wrote separate graphs to %s", folder)
    return manifest


# ------------------------------------------------------------------------------------------------ parity
def random_images(n: int, model: DiCNet, opts: ExportOptions, seed: int = 0) -> list[np.ndarray]:
    """``n`` random uint8 images at the exported input size (or alternating sizes for dynamic exports)."""
    rng = np.random.default_rng(seed)
    pre = model.preprocess_config
    sizes = [opts.input_size or (pre.width, pre.height)]
    if opts.dynamic:
        sizes = [(pre.width, pre.height), (pre.width * 2 + 10, pre.height * 2 + 6), (pre.width // 2 + 3, pre.height)]
    return [rng.integers(0, 256, (sizes[i % len(sizes)][1], sizes[i % len(sizes)][0], 3), dtype=np.uint8)
            for i in range(n)]


def load_images(paths: list[Path], opts: ExportOptions) -> list[np.ndarray]:
    """RGB images from files or folders (e.g. the sim benchmark), resized to a fixed input size if needed."""
    import cv2

    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files += sorted(q for q in p.rglob("*") if q.suffix.lower() in (".png", ".jpg", ".jpeg")) if p.is_dir() else [p]
    images = []
    for f in files[:8]:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ExportError(f"{f}: not a readable image")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if not opts.dynamic and opts.input_size and (rgb.shape[1], rgb.shape[0]) != tuple(opts.input_size):
            rgb = cv2.resize(rgb, tuple(opts.input_size), interpolation=cv2.INTER_AREA)
        images.append(np.ascontiguousarray(rgb))
    return images


def check_parity(model: DiCNet, onnx_path: Path, images: list[np.ndarray], opts: ExportOptions) -> dict[str, Any]:
    """Compare ONNX Runtime (CPU) with PyTorch on ``images``; raise ExportError beyond the tolerance.

    Relative error = max |ort - torch| / max |torch| per image (the score has no natural unit).
    """
    from dicnet_ros.inference.ort_backend import OrtModel

    ort_model = OrtModel(onnx_path, device="cpu")
    rtol = INT8_PARITY_RTOL if opts.int8 is not None else (FP16_PARITY_RTOL if opts.fp16 else FP32_PARITY_RTOL)
    worst, agreement, domain_error = 0.0, 1.0, None
    for image in images:
        with torch.no_grad():
            ref = model(torch.from_numpy(image)[None], network_resolution=opts.network_resolution, labels=opts.labels)
        result = ort_model.infer(image)
        ref_score = ref.anomaly_score[0].numpy()
        ref_labels = ref.semantic_labels
        rel = float(np.abs(result.anomaly_score - ref_score).max() / max(float(np.abs(ref_score).max()), 1e-12))
        worst = max(worst, rel)
        agreement = min(agreement, float((result.semantic_labels == ref_labels[0].numpy()).mean()))
        if ref.domain_score is not None:  # in standard deviations: compared absolutely, relative to max(1, |ref|)
            reference = float(ref.domain_score[0])
            error = abs((result.domain_score if result.domain_score is not None else math.inf) - reference)
            domain_error = max(domain_error or 0.0, error / max(1.0, abs(reference)))
    report = {"images": len(images), "max_rel_error": worst, "rtol": rtol, "min_label_agreement": agreement,
              **({"max_domain_error": domain_error} if domain_error is not None else {})}
    log.info("parity %s: %s", onnx_path.name, report)
    if worst > rtol:
        raise ExportError(f"{onnx_path}: ONNX Runtime differs from PyTorch by {worst:.3g} relative (> {rtol:g})")
    # INT8 moves the features the domain score summarises, most on images unlike the calibration images (random
    # parity images are): its alarm is measured on real data instead (models/README.md), the error only recorded
    if domain_error is not None and domain_error > rtol and opts.int8 is None:
        raise ExportError(f"{onnx_path}: ONNX Runtime's domain score differs from PyTorch's by {domain_error:.3g} "
                          f"(> {rtol:g})")
    return report


# --------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="student-stage checkpoint (.pt)")
    parser.add_argument("--out", required=True, type=Path, help="output .onnx path")
    parser.add_argument("--network-resolution", action="store_true",
                        help="output maps at the network size instead of the input size")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch and input height/width")
    parser.add_argument("--input-size", type=parse_size, default=None,
                        help="fixed input size WxH (default: the network size); ignored with --dynamic")
    parser.add_argument("--fp16", action="store_true",
                        help="fp16 weights/compute inside the graph (uint8 in, float32 out); the TensorRT 11 precision")
    parser.add_argument("--labels", choices=LABEL_MODES, default="network",
                        help="where class ids and the MSP map are taken (the anomaly score never changes): network "
                             "size then resized (default), bilinear = logits upsampled to the output size first "
                             "(exact anomaly-seg protocol, slow at 1280x720), nearest = feature resolution")
    parser.add_argument("--int8", action="store_true",
                        help="INT8 QDQ graph (uint8 in, float32 out) for ONNX Runtime on a CPU and TensorRT; needs "
                             "--calibration-data; which layers stay float is measured (<out>.int8_report.md)")
    parser.add_argument("--calibration-data", type=Path,
                        help="in-distribution images for --int8: a folder of images or a dataset root (never test "
                             "images with anomalies)")
    parser.add_argument("--calibration-split", default="train", help="split of a dataset root (default train)")
    parser.add_argument("--calibration-images", type=int, default=64, help="images to calibrate on (default 64)")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="minmax",
                        help="activation ranges: minmax (default), entropy or percentile")
    parser.add_argument("--int8-target", choices=INT8_TARGETS, default="cpu",
                        help="cpu (default): uint8 activations, fastest in ONNX Runtime on a CPU; tensorrt: symmetric "
                             "int8 activations, what TensorRT's explicit quantization accepts")
    parser.add_argument("--int8-weight-bits", type=int, choices=WEIGHT_BITS, default=None,
                        help="weight range of the cpu target: 7 (default; cannot saturate the 16-bit pair sums of "
                             "AVX2 / AVX-512 without VNNI) or 8 (only for VNNI / ARM CPUs)")
    parser.add_argument("--int8-parity-data", type=Path, default=None,
                        help="labelled held-out images (a dataset root with a test split, e.g. `dicnet sim --split "
                             "test`) on which the INT8 graph's integer kernels must match its float execution and "
                             "the FP32 graph; the export is refused outside the bar (models/README.md#int8)")
    parser.add_argument("--int8-parity-images", type=int, default=120, help="images of --int8-parity-data (120)")
    parser.add_argument("--int8-emulate", nargs="*", choices=sorted(EMULATORS), default=[],
                        help="also measure the parity on these CPU paths under a user-mode emulator (x86-avx2: "
                             "qemu-x86_64 -cpu Haswell, from the qemu-user package)")
    parser.add_argument("--int8-emulated-images", type=int, default=48,
                        help="images of --int8-parity-data for each emulated path (48; emulation is slow)")
    parser.add_argument("--int8-max-score-error", type=float, default=0.05,
                        help="relative RMS error of anomaly_score vs FP32 allowed before sensitive layers are kept "
                             "in float (default 0.05)")
    parser.add_argument("--separate", action="store_true", help="also write teacher / student / score graphs")
    parser.add_argument("--opset", type=int, default=18, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--check-parity", type=int, default=0, metavar="N",
                        help="compare ONNX Runtime with PyTorch on N random images (plus --parity-images)")
    parser.add_argument("--parity-images", type=Path, nargs="*", default=[],
                        help="image files or folders (e.g. the sim benchmark) for the parity check")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("dicnet_training", "dicnet_ros"):  # the exporter's own INFO chatter stays quiet
        logging.getLogger(name).setLevel(logging.INFO)
    int8 = None
    if args.int8:
        if args.calibration_data is None:
            print("dicnet export: error: --int8 needs --calibration-data (in-distribution images)", file=sys.stderr)
            return 2
        int8 = Int8Options(args.calibration_data, args.calibration_images, args.calibration_method,
                           args.int8_target, args.calibration_split, max_score_error=args.int8_max_score_error,
                           weight_bits=args.int8_weight_bits, parity_data=args.int8_parity_data,
                           parity_images=args.int8_parity_images, parity_emulate=tuple(args.int8_emulate),
                           emulated_images=args.int8_emulated_images)
    opts = ExportOptions(network_resolution=args.network_resolution, dynamic=args.dynamic,
                         input_size=args.input_size, fp16=args.fp16, labels=args.labels, separate=args.separate,
                         opset=args.opset, check_parity=args.check_parity, parity_images=list(args.parity_images),
                         int8=int8)

    def work(outputs: Outputs) -> int:  # a failed export (or parity check) leaves no model file behind
        return _print_result(export_onnx(args.checkpoint, outputs.watch(args.out), opts))

    return run_command(args.command, work, also_user_errors=(ExportError, RuntimeError))  # tracing errors too


def _print_result(result: ExportResult) -> int:
    print(f"wrote {result.onnx_path}")
    if result.separate_manifest:
        print(f"wrote {result.separate_manifest}")
    if result.int8_report:
        q = result.metadata.export["quantization"]
        print(f"INT8: {q['quantized_layers']} convolutions quantized ({q['weight_bits']}-bit weights), "
              f"{len(q['float_layers'])} kept in float, score error {q['score_error']:.4f} vs FP32 (report "
              f"{result.int8_report})")
        if q.get("saturation"):
            print(f"INT8 saturation check: {q['saturation']['can_saturate']} of {q['saturation']['products']} "
                  "integer products can saturate 16-bit pair sums (AVX2 / AVX-512 without VNNI)")
        for kind, measured in (q.get("parity") or {}).get("paths", {}).items():
            m = measured["metrics"]
            print(f"INT8 parity on {kind} ({measured['how']}, {measured['images']} images): AUROC / AP / FPR95 INT8 "
                  f"{m['int8']['auroc']:.2f} / {m['int8']['ap']:.2f} / {m['int8']['fpr95']:.2f}, FP32 "
                  f"{m['fp32']['auroc']:.2f} / {m['fp32']['ap']:.2f} / {m['fp32']['fpr95']:.2f}; score error "
                  f"{measured['score_error_points']['float_qdq']:.2f} points vs float QDQ")
    if result.parity:
        print(f"parity: {json.dumps(result.parity)}")
    return 0
