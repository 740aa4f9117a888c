"""`dicnet make-bag` and `dicnet bag-eval`: argument parsing only; the work is in :mod:`dicnet_ros.bag`.

Errors a user can fix (missing topic, wrong type, damaged bag, existing output, bad model path) print one line
``dicnet <command>: error: ...`` and return exit code 2, with no output left behind.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap

from rosbags.rosbag2.errors import WriterError

from dicnet_ros.bag.accumulate import METHOD_LABELS
from dicnet_ros.bag.evaluate import evaluate_bag
from dicnet_ros.bag.ground_truth import AUTO, DEFAULT_STAMP_TOLERANCE_MS
from dicnet_ros.bag.messages import (
    COMPRESSED_FORMATS,
    DEFAULT_NAMESPACE,
    GT_ENCODING_DOC,
    IMAGE_ENCODINGS,
    STORAGES,
    BagError,
)
from dicnet_ros.bag.report import format_pct
from dicnet_ros.bag.write import make_bag
from dicnet_ros.cli_options import add_inference_arguments, add_threshold_argument
from dicnet_ros.data.detect import KINDS, add_label_arguments, dataset_options
from dicnet_ros.data.label_encoding import (
    MASK_CONVENTION_HELP,
    MASK_CONVENTIONS,
    TRACKS,
    LabelEncoding,
    encoding_from_values,
)
from dicnet_ros.interrupts import Terminated, terminate_as_exception
from dicnet_ros.resources import resolve_model

COMMANDS = ("make-bag", "bag-eval")


def add_arguments_for(name: str, parser: argparse.ArgumentParser) -> None:
    """Fill ``parser`` for one of the two subcommands this module serves."""
    if name == "make-bag":
        _make_bag_arguments(parser)
    elif name == "bag-eval":
        _bag_eval_arguments(parser)
    else:
        raise ValueError(f"bag_cli serves {COMMANDS}, not {name!r}")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output this command wrote before (never another folder, never the input)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _make_bag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True,
                        help="dataset root: any layout the readers detect (simulator / StreetHazards, BDD-Anomaly, "
                             "SMIYC, LostAndFound, Fishyscapes L&F, Road Anomaly, images/ + masks/)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--kind", default="auto", choices=KINDS, help="dataset kind (default: detect)")
    add_label_arguments(parser)
    parser.add_argument("--out", required=True, help="bag directory to create")
    parser.add_argument("--rate", type=float, default=10.0, help="frame rate in Hz: frame i is stamped t0 + i/rate")
    parser.add_argument("--compressed", nargs="?", const="jpeg", choices=COMPRESSED_FORMATS,
                        help="write sensor_msgs/CompressedImage on <image-topic>/compressed (jpeg, or png = lossless)")
    parser.add_argument("--storage", default="sqlite3", choices=tuple(STORAGES),
                        help="mcap chunks carry CRC-32s that bag-eval checks; sqlite3 has only sqlite's own "
                             "structure checks (changed bytes inside a message go unnoticed)")
    parser.add_argument("--image-topic", default="/camera/image_raw")
    parser.add_argument("--gt-topic", default="/camera/anomaly_gt",
                        help=f"ground-truth mask topic, {GT_ENCODING_DOC} ('' = none)")
    parser.add_argument("--camera-info-topic", default=None,
                        help="also write a sensor_msgs/CameraInfo (nominal intrinsics), e.g. /camera/camera_info")
    parser.add_argument("--frame-id", default="camera")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--encoding", default="rgb8", choices=IMAGE_ENCODINGS, help="raw image encoding")
    parser.add_argument("--start-time", type=float, default=None,
                        help="t0 in seconds since the epoch (default: now)")


GROUND_TRUTH_HELP = """ground truth:
  one sensor_msgs/Image mask per frame (mono8 or 8UC1; mono16 / 16UC1 too), the image's size, its header stamp
  within --stamp-tolerance-ms of its camera frame's. Mask values: 0/1 (1 = anomaly, 255 = void), 0/255, or
  what make-bag writes (255 anomaly, 0 normal, 128 void): named with --gt-encoding or detected from the values,
  and always reported. A run that cannot produce a metric (no ground-truth topic, no mask within the tolerance,
  every pixel void, no anomaly pixel) stops before the model runs, with exit code 2 and the reason."""

BAD_FRAMES_HELP = (
    "A bad frame (a message that does not decode, image data shorter than step x height, an unsupported "
    "encoding, a ground truth of another size) stops the run with one error line naming the topic, the frame's "
    "0-based index on it and its header stamp, e.g. 'bad frame on /camera/image_raw #17 (stamp 12.345678901 s): "
    "...'; nothing is written. Bad frames are not skipped, because skipping would quietly change the metrics. "
    "A damaged mcap chunk (CRC mismatch) or a truncated bag stops it the same way."
)


def _bag_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = GROUND_TRUTH_HELP + "\n\n" + textwrap.fill(BAD_FRAMES_HELP, 110)
    parser.add_argument("--bag", required=True,
                        help="input rosbag2: the bag folder, its metadata.yaml, or a .db3 / .mcap file in it")
    parser.add_argument("--image-topic", default=None,
                        help="camera topic, Image or CompressedImage (default: the one make-bag recorded, else the "
                             "bag's only image topic besides the ground truth)")
    parser.add_argument("--gt-topic", default=None,
                        help="ground-truth mask topic (default: the one make-bag recorded; '' = none: outputs and "
                             "latency only)")
    parser.add_argument("--gt-encoding", default=AUTO, choices=(AUTO, *MASK_CONVENTIONS),
                        help="what the mask values mean: " + "; ".join(f"{name}: {text}" for name, text in
                                                                      MASK_CONVENTION_HELP.items())
                             + "; auto (default): what make-bag recorded, else detected from the values")
    parser.add_argument("--anomaly-values", default=None, metavar="VALUES",
                        help="instead of --gt-encoding: mask values that mean anomaly, e.g. 1 or 2-200 or 1,7")
    parser.add_argument("--void-values", default=None, metavar="VALUES",
                        help="with --anomaly-values: values excluded from the metrics (every other value is normal)")
    parser.add_argument("--stamp-tolerance-ms", type=float, default=DEFAULT_STAMP_TOLERANCE_MS, metavar="MS",
                        help="a mask pairs with the frame whose header stamp is nearest within this many ms "
                             f"(default {DEFAULT_STAMP_TOLERANCE_MS:g}; 0 = equal stamps only)")
    add_inference_arguments(parser, " (not with --score-topic)")
    parser.add_argument("--score-topic", default=None,
                        help="instead of a model: evaluate a recorded 32FC1 score topic (e.g. the node's output)")
    parser.add_argument("--out", required=True, help="output directory (report, plots, output bag)")
    parser.add_argument("--out-bag", default=None, help="name of the output bag inside --out (a plain name)")
    parser.add_argument("--no-out-bag", action="store_true", help="metrics only, no output bag")
    parser.add_argument("--storage", default=None, choices=tuple(STORAGES),
                        help="output bag storage (default: the input's)")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                        help="namespace of the output topics, a valid ROS 2 namespace (default /dicnet)")
    add_threshold_argument(parser)
    parser.add_argument("--strip-frames", type=int, default=4, help="frames in the qualitative strip")
    parser.add_argument("--track", default=None, choices=TRACKS,
                        help="add the benchmark protocol (SMIYC pixel definitions, component metrics) with this "
                             "track's size rules (default: the one make-bag recorded for a benchmark)")
    parser.add_argument("--families-from", default=None,
                        help="bag whose metadata says which anomaly families each frame shows (default: --bag's "
                             "own, as make-bag records it for simulator data), e.g. the drive a recorded node run "
                             "replayed")


def run_for(name: str, args: argparse.Namespace) -> int:
    """Run one subcommand; user errors become a one-line message and exit code 2, Ctrl-C / SIGTERM / SIGHUP leave
    nothing behind."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from dicnet_ros.inference import BackendUnavailableError, MetadataError, ModelLoadError

    user_errors = (BagError, WriterError, ModelLoadError, BackendUnavailableError, MetadataError,
                   FileNotFoundError, ValueError)
    with terminate_as_exception():
        try:
            return _make_bag(args) if name == "make-bag" else _bag_eval(args)
        except user_errors as exc:
            print(f"dicnet {name}: error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"dicnet {name}: interrupted; nothing was written", file=sys.stderr)
            return 130
        except Terminated as stop:
            print(f"dicnet {name}: stopped by {stop}; nothing was written", file=sys.stderr)
            return stop.exit_code


def _make_bag(args: argparse.Namespace) -> int:
    start_ns = None if args.start_time is None else round(args.start_time * 1e9)
    result = make_bag(
        args.dataset, args.out, split=args.split, rate=args.rate, compressed=args.compressed,
        storage=args.storage, image_topic=args.image_topic, gt_topic=args.gt_topic or None,
        camera_info_topic=args.camera_info_topic, frame_id=args.frame_id, limit=args.limit,
        encoding=args.encoding, start_ns=start_ns, overwrite=args.overwrite, kind=args.kind,
        progress=not args.no_progress, dataset_options=dataset_options(args),
    )
    topics = ", ".join(f"{t} ({m})" for t, m in result.topics.items())
    print(f"wrote {result.path}: {result.num_frames} frames at {args.rate:g} Hz; topics {topics}")
    if result.frame_families:
        print(f"  anomaly families of {len(result.frame_families)} frames recorded in the metadata (per-family "
              "bag-eval)")
    return 0


def _gt_convention(args: argparse.Namespace) -> str | LabelEncoding:
    """--gt-encoding, or the LabelEncoding of --anomaly-values / --void-values (not both)."""
    if args.anomaly_values is None:
        if args.void_values is not None:
            raise ValueError("--void-values needs --anomaly-values (which values mean anomaly)")
        return args.gt_encoding
    if args.gt_encoding != AUTO:
        raise ValueError("give --gt-encoding or --anomaly-values / --void-values, not both")
    return encoding_from_values(args.anomaly_values, args.void_values)


def _bag_eval(args: argparse.Namespace) -> int:
    if args.model is not None and args.score_topic is not None:
        raise ValueError("give --model (run a model over the images) or --score-topic (evaluate recorded scores), "
                         "not both")
    model = None if args.score_topic is not None else resolve_model(args.model)
    result = evaluate_bag(
        args.bag, args.out, image_topic=args.image_topic,
        gt_topic=None if args.gt_topic is None else (args.gt_topic or ""), model=model,
        score_topic=args.score_topic, out_bag_name=args.out_bag, storage=args.storage,
        namespace=args.namespace, threshold=args.threshold, overwrite=args.overwrite,
        strip_frames=args.strip_frames, write_bag=not args.no_out_bag, progress=not args.no_progress,
        families_from=args.families_from, gt_encoding=_gt_convention(args),
        stamp_tolerance_ms=args.stamp_tolerance_ms, backend=args.backend, device=args.device,
        track=args.track,
    )
    print(f"wrote {result.out_dir}: {result.num_frames} frames, {result.num_evaluated} evaluated")
    if result.ground_truth is not None:
        for line in result.ground_truth.lines():
            print(f"  {line}")
    else:
        print("  no ground truth (--gt-topic ''): outputs and latency only")
    for line in result.integrity.lines() if result.integrity is not None else []:
        print(f"  input bag {line}")
    dicnet = (result.metrics or {}).get("dicnet")
    if dicnet:
        for proto in ("per_image", "pooled"):
            m = dicnet[proto]
            print(f"  DiCNet {proto:9s} AUROC {format_pct(m.get('auroc'))}  AUPR {format_pct(m.get('aupr'))}  "
                  f"FPR95 {format_pct(m.get('fpr95'))}")
    benchmark = (result.metrics or {}).get("benchmark")
    if benchmark:
        from dicnet_ros.metrics import benchmark_table

        print(benchmark_table(benchmark, METHOD_LABELS))
    by_family = (result.metrics or {}).get("by_family")
    if by_family:
        print("  per family (frames): " + ", ".join(f"{g} {r['num_frames']}" for g, r in by_family.items())
              + "; see report.md")
    lat = result.latency["inference"]
    if lat["count"]:
        print(f"  inference p50 {lat['p50_ms']:.2f} ms, p95 {lat['p95_ms']:.2f} ms, {lat['fps']:.1f} FPS")
    return 0
