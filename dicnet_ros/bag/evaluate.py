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
from dicnet_ros.bag.ground_truth import DEFAULT_STAMP_TOLERANCE_MS, GroundTruth, choose_convention, survey
from dicnet_ros.bag.integrity import Integrity, seal_bag, verify_bag
from dicnet_ros.bag.messages import (
    BAG_VERSION,
    CUSTOM_PREFIX,
    DEFAULT_NAMESPACE,
    GT_ENCODING_DOC,
    IMAGE_TYPE,
    IMAGE_TYPES,
    MAKE_BAG_CONVENTION,
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
    BagLocation,
    _storage_of,
    _topic_listing,
    bag_dataset_info,
    find_image_topic,
    iter_raw,
    locate_bag,
    open_bag,
    require_topic,
)
from dicnet_ros.bag.report import _Strip, latency_summary, render_report, write_curves, write_strip
from dicnet_ros.bag.write import (
    OUTPUT_MARKER,
    _add_conn,
    check_output,
    check_output_name,
    mark_output,
    refuse_overlap,
    staged_output,
)
from dicnet_ros.data.label_encoding import LabelEncoding
from dicnet_ros.metrics.domain import DomainTally
from dicnet_ros.ros_names import validate_namespace

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
    num_evaluated: int  # frames paired with a ground-truth mask, all of them in the pooled metrics
    metrics: dict[str, Any]
    latency: dict[str, Any]
    ground_truth: GroundTruth | None = None
    integrity: Integrity | None = None


@dataclass
class _Checked:
    """What ``evaluate_bag`` settled about the input before any model runs or anything is written."""

    location: BagLocation
    topics: StreamTopics
    ground_truth: GroundTruth | None
    integrity: Integrity
    info: dict[str, Any]  # what make_bag recorded in the bag's metadata
    family_info: dict[str, Any]  # the same from --families-from, else ``info``
    groups: dict[int, str]  # header stamp -> anomaly-family group
    image_topic: str | None
    score_topic: str | None
    families_from: str | Path | None
    track: str | None  # SMIYC component track of the benchmark protocol (None: not reported)


class NothingToEvaluateError(BagError):
    """The bag has a ground-truth topic, but no metric can come out of it (the message says why)."""


#: Files bag-eval writes into --out besides the output bag (an --out-bag of one of these names would clash).
REPORT_FILES = ("metrics.json", "report.md", "roc.png", "pr.png", "qualitative.png", OUTPUT_MARKER)


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
    gt_encoding: str | LabelEncoding | None = None,
    stamp_tolerance_ms: float = DEFAULT_STAMP_TOLERANCE_MS,
    backend: str = "auto",
    device: str = "auto",
    track: str | None = None,
) -> EvalResult:
    """Run ``model`` over every frame of ``image_topic`` (streamed), write the output bag and the report.

    ``bag`` is the rosbag2 folder, its metadata.yaml or a storage file in it. ``model`` is an ``AnomalyModel``
    (or a path, loaded with ``backend`` / ``device`` once the bag has been checked); the baseline maps in its
    ``InferenceResult.extras`` (MSP, MaxLogit) are evaluated beside DiCNet. Alternatively ``score_topic`` names a
    32FC1 score topic already in the bag (e.g. recorded from the node), evaluated without running any model, with
    the ``msp_score`` / ``maxlogit_score`` topics beside it if the bag has them. The whole ``out_dir`` appears
    atomically at the end; it may replace an older ``out_dir`` only with ``overwrite`` and only if bag-eval wrote
    it, and it may never be, hold or lie inside the input bag.

    Ground truth (:mod:`~dicnet_ros.bag.ground_truth`): ``gt_topic`` (None: the one ``make_bag`` recorded; '' =
    none, outputs and latency only) in the convention ``gt_encoding`` (a ``MASK_CONVENTIONS`` name, a
    ``LabelEncoding``, or None / 'auto': make-bag's record, else detected from the values); each mask pairs with
    the frame whose header stamp is nearest within ``stamp_tolerance_ms``. When no metric can come out of it (no
    mask, no stamp within the tolerance, every pixel void, no anomaly pixel) a ``NothingToEvaluateError`` says
    why before any model runs.

    Per anomaly family: the frame families ``make_bag`` stored in the bag's metadata (or in the metadata of
    ``families_from``, e.g. the drive a recorded node run replayed) group the frames (``families`` module).

    ``track`` (default: the component track ``make_bag`` recorded for a benchmark) adds the benchmark protocol:
    SMIYC pixel definitions and component metrics for every method (``dicnet_ros.metrics.benchmark``).

    A bad frame (undecodable message, image data shorter than step x height, unsupported encoding, ground truth
    of another size) stops the run with a ``BagError`` that names the topic, the frame's index on it and its
    header stamp; nothing is written. Frames are not skipped, because skipping would quietly change the metrics.
    A storage file whose checksum fails (:func:`~dicnet_ros.bag.integrity.verify_bag`), a damaged mcap chunk or a
    truncated storage file stops it with ``CorruptBagError``.
    """
    location = locate_bag(bag)
    bag = location.path
    out_dir = Path(out_dir)
    if (model is None) == (score_topic is None):
        raise ValueError("give either a model or a score topic to evaluate")
    if storage is not None and storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
    if not (math.isfinite(stamp_tolerance_ms) and stamp_tolerance_ms >= 0):
        raise ValueError(f"--stamp-tolerance-ms must be a number >= 0, got {stamp_tolerance_ms}")
    ns = validate_namespace(namespace, "--namespace").rstrip("/")
    out_name = check_output_name(out_bag_name or f"{location.name or 'bag'}_dicnet", "--out-bag", REPORT_FILES)
    refuse_overlap(out_dir, {"the input bag": bag, "the --families-from bag":
                             Path(families_from) if families_from is not None else None})
    check_output(out_dir, overwrite)
    info = bag_dataset_info(bag)
    family_info = bag_dataset_info(families_from) if families_from is not None else info
    groups = frame_groups(family_info)
    track = track or info.get("component_track") or None
    integrity = verify_bag(bag)
    for line in integrity.unverified:
        log.warning("%s", line)
    if gt_topic is None:
        gt_topic = info.get("gt_topic")
        if gt_topic:
            log.info("using ground-truth topic %s from the bag's metadata", bounded(str(gt_topic)))
    with open_bag(bag) as reader:  # validate topics before loading a model or creating anything
        if gt_topic is None:
            raise NothingToEvaluateError(
                "nothing to evaluate: no ground-truth topic (the bag does not name one); give --gt-topic TOPIC (one "
                "mask per frame, stamped like its image: docs/bag_evaluation.md), or --gt-topic '' for outputs and "
                f"latency only; {_topic_listing(reader)}")
        gt_topic = str(gt_topic)
        if score_topic is None:
            image_topic = image_topic or info.get("image_topic") or find_image_topic(reader, [gt_topic])
            main_conns, main_type = require_topic(reader, image_topic, IMAGE_TYPES)
        else:
            main_conns, main_type = require_topic(reader, score_topic, (IMAGE_TYPE,))
        main = image_topic if score_topic is None else score_topic
        gt_conns = require_topic(reader, gt_topic, (IMAGE_TYPE,))[0] if gt_topic else []
        topics = StreamTopics(
            main, main_type, {c.id for c in main_conns}, sum(c.msgcount for c in main_conns), gt_topic,
            {c.id for c in gt_conns}, sum(c.msgcount for c in gt_conns),
            recorded_baselines(reader, score_topic) if score_topic else {},
        )
        ground_truth = None
        if gt_topic:
            declared, source = choose_convention(gt_encoding, info.get("gt_encoding"))
            try:
                ground_truth = survey(reader, main, main_type, main_conns, gt_topic, gt_conns, declared, source,
                                      round(stamp_tolerance_ms * 1e6))
            except ValueError as exc:  # the values fit no known convention
                raise BagError(f"ground-truth topic {bounded(gt_topic)}: {exc}") from None
            why = ground_truth.nothing_to_evaluate()
            if why is not None:
                raise NothingToEvaluateError(f"nothing to evaluate: {why}")
            for line in ground_truth.warnings():
                log.warning("%s", line)
    loaded_here = isinstance(model, str | Path)
    if loaded_here:
        from dicnet_ros.inference import load_model

        model = load_model(model, backend=backend, device=device)
    try:
        if model is not None and threshold is not None:
            model.threshold = threshold
        checked = _Checked(location, topics, ground_truth, integrity, info, family_info, groups,
                           image_topic if score_topic is None else None, score_topic, families_from, track)
        return _evaluate(checked, out_dir, out_name, model, storage, ns, overwrite, strip_frames, write_bag,
                         progress)
    finally:
        if loaded_here:
            model.close()


def _evaluate(checked: _Checked, out_dir: Path, out_name: str, model: Any, storage: str | None, ns: str,
              overwrite: bool, strip_frames: int, write_bag: bool, progress: bool) -> EvalResult:
    """The streaming pass into a staged ``out_dir`` once everything has been checked; then the report files."""
    bag, topics, ground_truth = checked.location.path, checked.topics, checked.ground_truth
    groups, family_info, info = checked.groups, checked.family_info, checked.info
    storage = storage or _storage_of(bag)
    score_range = model.metadata.score_range if model is not None else (0.0, 1.0)
    out_custom = {"source_bag": json.dumps(str(bag.resolve()))}
    if groups:  # so a --score-topic evaluation of the output bag reports per family too
        out_custom[FRAME_FAMILIES_KEY] = encode_frame_families(family_info[FRAME_FAMILIES_KEY])
    if ground_truth is not None:  # the output bag carries the input's masks: say how to read them
        out_custom["gt_topic"] = json.dumps(ground_truth.topic)
        if ground_truth.convention is MAKE_BAG_CONVENTION:
            out_custom["gt_encoding"] = json.dumps(GT_ENCODING_DOC)
    with staged_output(out_dir, overwrite) as staged:
        staged.mkdir(parents=True)
        out_bag = staged / out_name
        result = _evaluate_stream(
            bag, staged, out_bag if write_bag and model is not None else None, storage, ns, model, topics,
            MetricsAccumulator(score_range, groups, checked.track), strip_frames, progress, out_custom, ground_truth,
        )
        meta = {
            "bag": str(bag.resolve()),
            "image_topic": checked.image_topic,
            "score_topic": checked.score_topic,
            "baseline_topics": {method: topic for method, (topic, _, _) in topics.baselines.items()},
            "gt_topic": topics.gt or None,
            "families_from": str(Path(checked.families_from).resolve()) if checked.families_from is not None
            else None,
            "model": model.describe() if model is not None else None,
            "threshold": model.threshold if model is not None else None,
            "score_range": list(score_range),
            "dataset": info.get("dataset"),
            "gt_encoding": ground_truth.convention.describe() if ground_truth is not None else None,
            "ground_truth": ground_truth.summary() if ground_truth is not None else None,
            "integrity": checked.integrity.summary(),
            "component_track": checked.track,
            **result,
        }
        (staged / "metrics.json").write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
        (staged / "report.md").write_text(render_report(meta, ground_truth, checked.integrity))
        mark_output(staged, "dicnet bag-eval")
        final_bag = out_dir / out_bag.name if out_bag.exists() else None
    return EvalResult(out_dir, final_bag, result["num_frames"], result["num_evaluated"], result["metrics"],
                      result["latency"], ground_truth, checked.integrity)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _evaluate_stream(
    bag: Path, staged: Path, out_bag: Path | None, storage: str, ns: str, model: Any, topics: StreamTopics,
    acc: MetricsAccumulator, strip_frames: int, progress: bool, out_custom: dict[str, str],
    ground_truth: GroundTruth | None,
) -> dict[str, Any]:
    """The single streaming pass: copy input, infer, write outputs, pair with GT, accumulate metrics.

    Every score stream (the model's maps, or the recorded score topic and each recorded baseline topic) is
    paired with the ground truth by its own ``StampMatcher``, under the key of the frame the survey paired the
    mask with (``ground_truth.pairing``). Any ``BagError`` about one message is re-raised naming its topic, index
    and stamp (``about_frame``).
    """
    from tqdm import tqdm

    from dicnet_ros.visualization import colorize_score, overlay

    ts = typestore()
    matchers = {DICNET: StampMatcher(), **{method: StampMatcher() for method in topics.baselines}}
    convention = ground_truth.convention if ground_truth is not None else MAKE_BAG_CONVENTION
    gt_to_frame = ground_truth.pairing.gt_to_frame if ground_truth is not None else {}
    paired_frames = set(gt_to_frame.values())
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
                key = gt_to_frame.get(stamp)
                with about_frame(topics.gt, gt_seen, stamp):
                    gt = decode_gt_mask(gt_msg, convention)
                    if key is not None:
                        strip.add_gt(key, gt)
                        for matcher in matchers.values():
                            pair = matcher.add("gt", key, gt)
                            if pair is not None:
                                acc.update(pair[0][0], pair[1], pair[0][1], key, pair[0][2])
                gt_seen += 1
            if conn.id in baseline_of:
                method = baseline_of[conn.id]
                topic, index = topics.baselines[method][0], baseline_seen[method]
                with about_frame(topic, index):
                    msg = deserialize(raw, IMAGE_TYPE)
                stamp = stamp_to_ns(msg.header.stamp)
                with about_frame(topic, index, stamp):
                    baseline = _decode_score(msg)
                    pair = matchers[method].add("score", stamp, ({method: baseline}, None, None)) \
                        if stamp in paired_frames else None
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
            if stamp in paired_frames:
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
        seal_bag(out_bag, "dicnet bag-eval")
    metrics = acc.compute() if topics.gt_ids else None
    evaluated = metrics[DICNET]["num_images"] if metrics and DICNET in acc.evaluators else 0
    if topics.gt_ids and evaluated == 0:  # the survey paired frames, so only a broken stream gets here
        raise NothingToEvaluateError(f"nothing to evaluate: no frame of {bounded(topics.main)} met its ground truth")
    pairing = ground_truth.pairing if ground_truth is not None else None
    unmatched = {"score": pairing.distinct_frames - evaluated + pairing.duplicate_frames,
                 "gt": pairing.masks - evaluated} if pairing is not None else {"score": 0, "gt": 0}
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
