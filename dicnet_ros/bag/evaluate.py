"""``evaluate_bag``: one streaming pass over a bag that runs a model on every camera frame (or reads a recorded
32FC1 score topic), writes the output bag, pairs score maps with ground-truth masks by header stamp
(``StampMatcher``), accumulates the metrics (``MetricsAccumulator``) and writes metrics.json, report.md and the
plots into an output directory that appears atomically at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Writer

from dicnet_ros.bag.messages import (
    BAG_VERSION,
    CUSTOM_PREFIX,
    DEFAULT_NAMESPACE,
    GT_ANOMALY,
    GT_ENCODING_DOC,
    GT_IGNORE,
    IMAGE_TYPE,
    IMAGE_TYPES,
    STORAGES,
    BagError,
    CorruptBagError,
    UnsupportedMessageError,
    _one_line,
    about_frame,
    array_to_bag_image,
    bounded,
    decode_gt_mask,
    deserialize,
    image_msg_rgb,
    stamp_to_ns,
    typestore,
)
from dicnet_ros.bag.read import (
    _storage_of,
    _topic_listing,
    bag_dataset_info,
    iter_raw,
    locate_bag,
    open_bag,
    require_topic,
)
from dicnet_ros.bag.report import _Strip, latency_summary, render_report, write_curves, write_strip
from dicnet_ros.bag.write import _add_conn, add_mcap_chunk_crcs, check_output, staged_output

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ bag-eval


class StampMatcher:
    """Pairs score maps with ground-truth masks by header stamp, whichever arrives first (bounded memory)."""

    def __init__(self, max_pending: int = 256) -> None:
        self.max_pending = max_pending
        self.pending: dict[str, OrderedDict[int, Any]] = {"score": OrderedDict(), "gt": OrderedDict()}
        self.dropped = {"score": 0, "gt": 0}

    def add(self, kind: str, stamp: int, payload: Any) -> tuple[Any, Any] | None:
        """Store ``payload`` ('score' or 'gt'); return (score, gt) once both halves of ``stamp`` are in."""
        other = "gt" if kind == "score" else "score"
        if stamp in self.pending[other]:
            match = self.pending[other].pop(stamp)
            return (payload, match) if kind == "score" else (match, payload)
        queue = self.pending[kind]
        queue[stamp] = payload
        if len(queue) > self.max_pending:
            queue.popitem(last=False)
            self.dropped[kind] += 1
        return None

    def unmatched(self) -> dict[str, int]:
        """Frames that never found a partner (dropped + still pending)."""
        return {k: self.dropped[k] + len(self.pending[k]) for k in self.pending}


class MetricsAccumulator:
    """One AnomalyEvaluator per score map (DiCNet, MSP if the model has it) + mask counts at the threshold."""

    def __init__(self, score_range: tuple[float, float]) -> None:
        self.score_range = score_range
        self.evaluators: dict[str, Any] = {}
        self.mask_counts = np.zeros(4, np.int64)  # tp, fp, fn, tn of the thresholded DiCNet mask
        self.has_mask = False

    def update(self, scores: Mapping[str, np.ndarray], gt: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add one frame; ``gt`` is the mono8 mask (255 anomaly / 0 normal / 128 ignore)."""
        from dicnet_ros.metrics import AnomalyEvaluator

        for name, score in scores.items():
            if score.shape != gt.shape:
                raise BagError(f"{name} score map is {score.shape[1]}x{score.shape[0]} but the ground truth is "
                               f"{gt.shape[1]}x{gt.shape[0]}")
            if name not in self.evaluators:
                rng = self.score_range if name == "dicnet" else (0.0, 1.0)
                self.evaluators[name] = AnomalyEvaluator(
                    anomaly_ids=(GT_ANOMALY,), ignore_ids=(GT_IGNORE,), score_range=rng,
                    keep_exact_pooled=True, per_image=True,
                )
            self.evaluators[name].update(score, gt)
        if mask is not None:
            self.has_mask = True
            valid = gt != GT_IGNORE
            pos, pred = (gt == GT_ANOMALY)[valid], mask[valid]
            self.mask_counts += [np.count_nonzero(pos & pred), np.count_nonzero(~pos & pred),
                                 np.count_nonzero(pos & ~pred), np.count_nonzero(~pos & ~pred)]

    def compute(self) -> dict[str, Any]:
        """{'dicnet': evaluator.compute(), 'msp': ... or None, 'mask_at_threshold': {...}}."""
        out: dict[str, Any] = {name: ev.compute() for name, ev in self.evaluators.items()}
        out.setdefault("msp", None)
        if self.has_mask:
            tp, fp, fn, tn = (int(x) for x in self.mask_counts)
            out["mask_at_threshold"] = {
                "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                "precision": tp / (tp + fp) if tp + fp else None,
                "recall": tp / (tp + fn) if tp + fn else None,
                "fpr": fp / (fp + tn) if fp + tn else None,
                "iou": tp / (tp + fp + fn) if tp + fp + fn else None,
            }
        return out


@dataclass
class EvalResult:
    """Summary of one bag evaluation (the same content as metrics.json)."""

    out_dir: Path
    out_bag: Path | None
    num_frames: int
    num_evaluated: int
    metrics: dict[str, Any]
    latency: dict[str, Any]


def evaluate_bag(
    bag: str | Path,
    out_dir: str | Path,
    image_topic: str | None = None,
    gt_topic: str | None = None,
    model: Any = None,
    score_topic: str | None = None,
    out_bag_name: str | None = None,
    storage: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    threshold: float | None = None,
    overwrite: bool = False,
    strip_frames: int = 4,
    write_bag: bool = True,
    progress: bool = True,
) -> EvalResult:
    """Run ``model`` over every frame of ``image_topic`` (streamed), write the output bag and the report.

    ``bag`` is the rosbag2 folder, its metadata.yaml or a storage file in it. ``model`` is an ``AnomalyModel``
    (or a path for ``load_model``). Alternatively ``score_topic`` names a 32FC1 score topic already in the bag
    (e.g. recorded from the node), evaluated against ``gt_topic`` by header stamp without running any model.
    The whole ``out_dir`` appears atomically at the end.

    A bad frame (undecodable message, image data shorter than step x height, unsupported encoding, ground truth
    of another size) stops the run with a ``BagError`` that names the topic, the frame's index on it and its
    header stamp; nothing is written. Frames are not skipped, because skipping would quietly change the metrics.
    A damaged mcap chunk (CRC mismatch) or a truncated storage file stops it with ``CorruptBagError``.
    """
    location = locate_bag(bag)
    bag = location.path
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite)
    if (model is None) == (score_topic is None):
        raise ValueError("give either a model or a score topic to evaluate")
    if storage is not None and storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
    info = bag_dataset_info(bag)
    image_topic = image_topic or info.get("image_topic") or None
    if gt_topic is None and info.get("gt_topic"):
        gt_topic = str(info["gt_topic"])
        log.info("using ground-truth topic %s from the bag's metadata", bounded(gt_topic))
    with open_bag(bag) as reader:  # validate topics before loading a model or creating anything
        if score_topic is None:
            if not image_topic:
                raise BagError(f"no --image-topic given and the bag does not name one; {_topic_listing(reader)}")
            main_conns, main_type = require_topic(reader, image_topic, IMAGE_TYPES)
        else:
            main_conns, main_type = require_topic(reader, score_topic, (IMAGE_TYPE,))
        gt_conns = require_topic(reader, gt_topic, (IMAGE_TYPE,))[0] if gt_topic else []
        total = sum(c.msgcount for c in main_conns)
        expected_gt = sum(c.msgcount for c in gt_conns)
    if isinstance(model, str | Path):
        from dicnet_ros.inference import load_model

        model = load_model(model)
    if model is not None and threshold is not None:
        model.threshold = threshold
    storage = storage or _storage_of(bag)
    score_range = model.metadata.score_range if model is not None else (0.0, 1.0)
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    with staged_output(out_dir, overwrite) as staged:
        staged.mkdir(parents=True)
        out_bag = staged / (out_bag_name or f"{location.name or 'bag'}_dicnet")
        result = _evaluate_stream(
            bag, staged, out_bag if write_bag and model is not None else None, storage, ns, model, main_type,
            {c.id for c in main_conns}, {c.id for c in gt_conns}, total, expected_gt, score_range, strip_frames,
            progress, image_topic if score_topic is None else score_topic, gt_topic or "",
        )
        meta = {
            "bag": str(bag.resolve()),
            "image_topic": image_topic,
            "score_topic": score_topic,
            "gt_topic": gt_topic,
            "model": model.describe() if model is not None else None,
            "threshold": model.threshold if model is not None else None,
            "score_range": list(score_range),
            "dataset": info.get("dataset"),
            "gt_encoding": GT_ENCODING_DOC,
            **result,
        }
        (staged / "metrics.json").write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
        (staged / "report.md").write_text(render_report(meta))
        final_bag = out_dir / out_bag.name if out_bag.exists() else None
    return EvalResult(out_dir, final_bag, result["num_frames"], result["num_evaluated"], result["metrics"],
                      result["latency"])


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _evaluate_stream(
    bag: Path, staged: Path, out_bag: Path | None, storage: str, ns: str, model: Any, main_type: str,
    main_ids: set[int], gt_ids: set[int], total: int, expected_gt: int, score_range: tuple[float, float],
    strip_frames: int, progress: bool, main_topic: str, gt_topic: str,
) -> dict[str, Any]:
    """The single streaming pass: copy input, infer, write outputs, pair with GT, accumulate metrics.

    Any ``BagError`` about one message is re-raised naming its topic, index and stamp (``about_frame``).
    """
    from tqdm import tqdm

    from dicnet_ros.visualization import colorize_score, overlay

    ts = typestore()
    matcher = StampMatcher()
    acc = MetricsAccumulator(score_range)
    strip = _Strip(total, strip_frames)
    infer_ms: list[float] = []
    frame_ms: list[float] = []
    frames = gt_seen = 0
    lo, hi = model.metadata.display_range if model is not None else score_range  # colours for people
    with contextlib.ExitStack() as stack:
        writer = None
        out_conns: dict[str, Connection] = {}
        if out_bag is not None:
            writer = stack.enter_context(Writer(out_bag, version=BAG_VERSION, storage_plugin=STORAGES[storage]))
            writer.set_custom_data(CUSTOM_PREFIX + "source_bag", json.dumps(str(bag.resolve())))
        reader = stack.enter_context(open_bag(bag))
        conn_map: dict[int, Connection] = {}
        if writer is not None:
            conn_map = {c.id: _add_conn(writer, c) for c in reader.connections}
            for name in ("anomaly_score", "anomaly_mask", "overlay"):
                out_conns[name] = writer.add_connection(f"{ns}/{name}", IMAGE_TYPE, typestore=ts)
        bar = stack.enter_context(tqdm(total=total, desc=f"bag-eval {bag.name}", unit="frame", disable=not progress))
        for conn, timestamp, raw in iter_raw(reader):
            if writer is not None:
                writer.write(conn_map[conn.id], timestamp, raw)
            if conn.id in gt_ids:
                with about_frame(gt_topic, gt_seen):
                    gt_msg = deserialize(raw, IMAGE_TYPE)
                stamp = stamp_to_ns(gt_msg.header.stamp)
                with about_frame(gt_topic, gt_seen, stamp):
                    gt = decode_gt_mask(gt_msg)
                    strip.add_gt(stamp, gt)
                    pair = matcher.add("gt", stamp, gt)
                    if pair is not None:
                        acc.update(pair[0][0], pair[1], pair[0][1])
                gt_seen += 1
            if conn.id not in main_ids:
                continue
            start = time.perf_counter()
            with about_frame(main_topic, frames):
                msg = deserialize(raw, main_type)
            stamp, frame_id = stamp_to_ns(msg.header.stamp), msg.header.frame_id
            if model is not None:
                with about_frame(main_topic, frames, stamp):
                    rgb = image_msg_rgb(msg, main_type)
                res = model.infer(rgb)
                infer_ms.append(float(res.timings_ms.get("inference", res.timings_ms.get("total", math.nan))))
                score = np.asarray(res.anomaly_score, np.float32)
                mask = np.asarray(res.anomaly_mask, bool)
                scores = {"dicnet": score, **{k: np.asarray(v, np.float32) for k, v in res.extras.items()}}
                over = overlay(rgb, mask)  # mask tint: the score itself is on anomaly_score
                if writer is not None:
                    for name, arr, enc in (("anomaly_score", score, "32FC1"),
                                           ("anomaly_mask", mask.astype(np.uint8) * 255, "mono8"),
                                           ("overlay", over, "rgb8")):
                        writer.write(out_conns[name], timestamp,
                                     ts.serialize_cdr(array_to_bag_image(arr, enc, stamp, frame_id), IMAGE_TYPE))
                if frames in strip.wanted:
                    strip.add(frames, stamp, {"image": rgb, "score": colorize_score(score, lo, hi), "overlay": over})
                frame_ms.append((time.perf_counter() - start) * 1e3)
            else:
                with about_frame(main_topic, frames, stamp):
                    score = _decode_score(msg)
                mask = None
                scores = {"dicnet": score}
                if frames in strip.wanted:
                    strip.add(frames, stamp, {"score": colorize_score(score, lo, hi)})
            frames += 1
            bar.update(1)
            if gt_ids:
                pair = matcher.add("score", stamp, (scores, mask))
                if pair is not None:
                    with about_frame(main_topic, frames - 1, stamp):
                        acc.update(pair[0][0], pair[1], pair[0][1])
    if frames != total or gt_seen != expected_gt:
        raise CorruptBagError(
            f"bag {bag} ended early: read {frames} of {total} frames on {bounded(main_topic)}"
            + (f" and {gt_seen} of {expected_gt} ground-truth masks" if gt_ids else "")
            + " (truncated recording?)"
        )
    if out_bag is not None:
        add_mcap_chunk_crcs(out_bag)
    metrics = acc.compute() if gt_ids else None
    unmatched = matcher.unmatched() if gt_ids else {"score": 0, "gt": 0}
    evaluated = acc.evaluators["dicnet"].compute()["num_images"] if metrics and "dicnet" in acc.evaluators else 0
    if gt_ids and unmatched["score"]:
        log.warning("%d frames had no ground-truth mask with the same header stamp", unmatched["score"])
    plots: list[str] = []
    if metrics is not None and acc.evaluators:
        plots = write_curves(acc.evaluators, staged)
    if strip.rows:
        write_strip(strip, staged / "qualitative.png")
        plots.append("qualitative.png")
    return {
        "num_frames": frames,
        "num_evaluated": evaluated,
        "unmatched": unmatched,
        "metrics": metrics,
        "latency": {"inference": latency_summary(infer_ms), "per_frame_total": latency_summary(frame_ms)},
        "output_bag": out_bag.name if out_bag is not None else None,
        "output_topics": {f"{ns}/{n}": e for n, e in (("anomaly_score", "32FC1"), ("anomaly_mask", "mono8"),
                                                       ("overlay", "rgb8"))} if out_bag is not None else {},
        "files": plots,
    }


def _decode_score(msg: Any) -> np.ndarray:
    """32FC1 Image (e.g. the node's recorded score topic) -> (H, W) float32 in native byte order."""
    from dicnet_ros.image_conversion import ImageConversionError, image_msg_to_array

    if msg.encoding != "32FC1":
        raise UnsupportedMessageError(f"score image has encoding {bounded(msg.encoding)!r}; expected 32FC1")
    try:
        return np.ascontiguousarray(image_msg_to_array(msg), np.float32)
    except ImageConversionError as exc:
        raise CorruptBagError(f"bad score image: {_one_line(exc)}") from exc
