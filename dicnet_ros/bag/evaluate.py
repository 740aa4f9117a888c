"""``evaluate_bag``: one streaming pass over a bag that runs a model on every camera frame (or reads a recorded
32FC1 score topic and the recorded baseline maps beside it), writes the output bag, pairs score maps with
ground-truth masks by header stamp (``StampMatcher``), accumulates the metrics overall and per anomaly family
(``MetricsAccumulator``, :mod:`dicnet_ros.bag.accumulate`) and writes metrics.json, report.md and the plots into
an output directory that appears atomically at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader, Writer

from dicnet_ros.bag.accumulate import BASELINE_TOPIC_NAMES, DICNET, MetricsAccumulator, StampMatcher
from dicnet_ros.bag.families import FRAME_FAMILIES_KEY, encode_frame_families, frame_groups
from dicnet_ros.bag.messages import (
    BAG_VERSION,
    CUSTOM_PREFIX,
    DEFAULT_NAMESPACE,
    GT_ENCODING_DOC,
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
from dicnet_ros.metrics.domain import DomainTally

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ bag-eval

@dataclass
class StreamTopics:
    """What the streaming pass reads: the camera (or recorded score) topic, the ground truth, and in
    ``--score-topic`` mode the recorded baseline maps the bag has."""

    main: str
    main_type: str
    main_ids: set[int]
    total: int
    gt: str = ""
    gt_ids: set[int] = field(default_factory=set)
    expected_gt: int = 0
    baselines: dict[str, tuple[str, set[int], int]] = field(default_factory=dict)  # method -> (topic, ids, count)


def recorded_baselines(reader: Reader, score_topic: str) -> dict[str, tuple[str, set[int], int]]:
    """The baseline topics (``BASELINE_TOPIC_NAMES``) beside ``score_topic`` that the bag has as Image."""
    namespace = score_topic.rpartition("/")[0]
    found: dict[str, tuple[str, set[int], int]] = {}
    for method, name in BASELINE_TOPIC_NAMES.items():
        topic = f"{namespace}/{name}"
        info = reader.topics.get(topic)
        if info is None or topic == score_topic:
            continue
        if info.msgtype != IMAGE_TYPE:
            log.warning("%s carries %s, not %s: %s is not evaluated", bounded(topic), bounded(str(info.msgtype)),
                        IMAGE_TYPE, method)
            continue
        found[method] = (topic, {c.id for c in info.connections}, sum(c.msgcount for c in info.connections))
    return found


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
    families_from: str | Path | None = None,
) -> EvalResult:
    """Run ``model`` over every frame of ``image_topic`` (streamed), write the output bag and the report.

    ``bag`` is the rosbag2 folder, its metadata.yaml or a storage file in it. ``model`` is an ``AnomalyModel``
    (or a path for ``load_model``); the baseline maps in its ``InferenceResult.extras`` (MSP, MaxLogit) are
    evaluated beside DiCNet. Alternatively ``score_topic`` names a 32FC1 score topic already in the bag (e.g.
    recorded from the node), evaluated against ``gt_topic`` by header stamp without running any model, with the
    ``msp_score`` / ``maxlogit_score`` topics beside it if the bag has them. The whole ``out_dir`` appears
    atomically at the end.

    Per anomaly family: the frame families ``make_bag`` stored in the bag's metadata (or in the metadata of
    ``families_from``, e.g. the drive a recorded node run replayed) group the frames (``families`` module).

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
    family_info = bag_dataset_info(families_from) if families_from is not None else info
    groups = frame_groups(family_info)
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
        topics = StreamTopics(
            image_topic if score_topic is None else score_topic, main_type, {c.id for c in main_conns},
            sum(c.msgcount for c in main_conns), gt_topic or "", {c.id for c in gt_conns},
            sum(c.msgcount for c in gt_conns), recorded_baselines(reader, score_topic) if score_topic else {},
        )
    if isinstance(model, str | Path):
        from dicnet_ros.inference import load_model

        model = load_model(model)
    if model is not None and threshold is not None:
        model.threshold = threshold
    storage = storage or _storage_of(bag)
    score_range = model.metadata.score_range if model is not None else (0.0, 1.0)
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    out_custom = {"source_bag": json.dumps(str(bag.resolve()))}
    if groups:  # so a --score-topic evaluation of the output bag reports per family too
        out_custom[FRAME_FAMILIES_KEY] = encode_frame_families(family_info[FRAME_FAMILIES_KEY])
    with staged_output(out_dir, overwrite) as staged:
        staged.mkdir(parents=True)
        out_bag = staged / (out_bag_name or f"{location.name or 'bag'}_dicnet")
        result = _evaluate_stream(
            bag, staged, out_bag if write_bag and model is not None else None, storage, ns, model, topics,
            MetricsAccumulator(score_range, groups), strip_frames, progress, out_custom,
        )
        meta = {
            "bag": str(bag.resolve()),
            "image_topic": image_topic,
            "score_topic": score_topic,
            "baseline_topics": {method: topic for method, (topic, _, _) in topics.baselines.items()},
            "gt_topic": gt_topic,
            "families_from": str(Path(families_from).resolve()) if families_from is not None else None,
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
    bag: Path, staged: Path, out_bag: Path | None, storage: str, ns: str, model: Any, topics: StreamTopics,
    acc: MetricsAccumulator, strip_frames: int, progress: bool, out_custom: dict[str, str],
) -> dict[str, Any]:
    """The single streaming pass: copy input, infer, write outputs, pair with GT, accumulate metrics.

    Every score stream (the model's maps, or the recorded score topic and each recorded baseline topic) is
    paired with the ground truth by its own ``StampMatcher``. Any ``BagError`` about one message is re-raised
    naming its topic, index and stamp (``about_frame``).
    """
    from tqdm import tqdm

    from dicnet_ros.visualization import colorize_score, overlay

    ts = typestore()
    matchers = {DICNET: StampMatcher(), **{method: StampMatcher() for method in topics.baselines}}
    baseline_of = {cid: method for method, (_, ids, _) in topics.baselines.items() for cid in ids}
    baseline_seen = dict.fromkeys(topics.baselines, 0)
    strip = _Strip(topics.total, strip_frames)
    domain = DomainTally(model.domain_threshold if model is not None else None)  # the out-of-domain alarm
    infer_ms: list[float] = []
    frame_ms: list[float] = []
    frames = gt_seen = 0
    lo, hi = model.metadata.display_range if model is not None else acc.score_range  # colours for people
    with contextlib.ExitStack() as stack:
        writer = None
        out_conns: dict[str, Connection] = {}
        if out_bag is not None:
            writer = stack.enter_context(Writer(out_bag, version=BAG_VERSION, storage_plugin=STORAGES[storage]))
            for key, value in out_custom.items():
                writer.set_custom_data(CUSTOM_PREFIX + key, value)
        reader = stack.enter_context(open_bag(bag))
        conn_map: dict[int, Connection] = {}
        if writer is not None:
            conn_map = {c.id: _add_conn(writer, c) for c in reader.connections}
            for name in ("anomaly_score", "anomaly_mask", "overlay"):
                out_conns[name] = writer.add_connection(f"{ns}/{name}", IMAGE_TYPE, typestore=ts)
        bar = stack.enter_context(tqdm(total=topics.total, desc=f"bag-eval {bag.name}", unit="frame",
                                       disable=not progress))
        for conn, timestamp, raw in iter_raw(reader):
            if writer is not None:
                writer.write(conn_map[conn.id], timestamp, raw)
            if conn.id in topics.gt_ids:
                with about_frame(topics.gt, gt_seen):
                    gt_msg = deserialize(raw, IMAGE_TYPE)
                stamp = stamp_to_ns(gt_msg.header.stamp)
                with about_frame(topics.gt, gt_seen, stamp):
                    gt = decode_gt_mask(gt_msg)
                    strip.add_gt(stamp, gt)
                    for matcher in matchers.values():
                        pair = matcher.add("gt", stamp, gt)
                        if pair is not None:
                            acc.update(pair[0][0], pair[1], pair[0][1], stamp, pair[0][2])
                gt_seen += 1
            if conn.id in baseline_of:
                method = baseline_of[conn.id]
                topic, index = topics.baselines[method][0], baseline_seen[method]
                with about_frame(topic, index):
                    msg = deserialize(raw, IMAGE_TYPE)
                stamp = stamp_to_ns(msg.header.stamp)
                with about_frame(topic, index, stamp):
                    baseline = _decode_score(msg)
                    pair = (matchers[method].add("score", stamp, ({method: baseline}, None, None)) if topics.gt_ids
                            else None)
                    if pair is not None:
                        acc.update(pair[0][0], pair[1], pair[0][1], stamp)
                baseline_seen[method] += 1
            if conn.id not in topics.main_ids:
                continue
            start = time.perf_counter()
            with about_frame(topics.main, frames):
                msg = deserialize(raw, topics.main_type)
            stamp, frame_id = stamp_to_ns(msg.header.stamp), msg.header.frame_id
            if model is not None:
                with about_frame(topics.main, frames, stamp):
                    rgb = image_msg_rgb(msg, topics.main_type)
                res = model.infer(rgb)
                verdict = domain.add(res.domain_score)
                infer_ms.append(float(res.timings_ms.get("inference", res.timings_ms.get("total", math.nan))))
                score = np.asarray(res.anomaly_score, np.float32)
                mask = np.asarray(res.anomaly_mask, bool)
                scores = {DICNET: score, **{k: np.asarray(v, np.float32) for k, v in res.extras.items()}}
                over = overlay(rgb, mask)  # mask tint: the score itself is on anomaly_score
                if writer is not None:
                    for name, arr, enc in (("anomaly_score", score, "32FC1"),
                                           ("anomaly_mask", mask.astype(np.uint8) * 255, "mono8"),
                                           ("overlay", over, "rgb8")):
                        writer.write(out_conns[name], timestamp,
                                     ts.serialize_cdr(array_to_bag_image(arr, enc, stamp, frame_id), IMAGE_TYPE))
                if frames in strip.wanted:
                    strip.add(frames, stamp, {"image": rgb, "score": colorize_score(score, lo, hi), "overlay": over},
                              (res.domain_score, verdict))
                frame_ms.append((time.perf_counter() - start) * 1e3)
            else:
                with about_frame(topics.main, frames, stamp):
                    score = _decode_score(msg)
                mask = verdict = None
                scores = {DICNET: score}
                if frames in strip.wanted:
                    strip.add(frames, stamp, {"score": colorize_score(score, lo, hi)})
            frames += 1
            bar.update(1)
            if topics.gt_ids:
                pair = matchers[DICNET].add("score", stamp, (scores, mask, verdict))
                if pair is not None:
                    with about_frame(topics.main, frames - 1, stamp):
                        acc.update(pair[0][0], pair[1], pair[0][1], stamp, pair[0][2])
    short = [f"{seen} of {topics.baselines[m][2]} messages on {bounded(topics.baselines[m][0])}"
             for m, seen in baseline_seen.items() if seen != topics.baselines[m][2]]
    if frames != topics.total or gt_seen != topics.expected_gt or short:
        raise CorruptBagError(
            f"bag {bag} ended early: read {frames} of {topics.total} frames on {bounded(topics.main)}"
            + (f" and {gt_seen} of {topics.expected_gt} ground-truth masks" if topics.gt_ids else "")
            + "".join(f" and {s}" for s in short)
            + " (truncated recording?)"
        )
    if out_bag is not None:
        add_mcap_chunk_crcs(out_bag)
    metrics = acc.compute() if topics.gt_ids else None
    unmatched = matchers[DICNET].unmatched() if topics.gt_ids else {"score": 0, "gt": 0}
    evaluated = metrics[DICNET]["num_images"] if metrics and DICNET in acc.evaluators else 0
    if topics.gt_ids and unmatched["score"]:
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
        "domain": domain.summary(),
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
