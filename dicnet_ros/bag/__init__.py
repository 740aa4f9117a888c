"""rosbag2 tools: dataset -> bag (``make_bag``), bag -> model -> outputs + metrics (``evaluate_bag``), and a small
rclpy player (``play_bag``) / recorder (``BagRecorder``) for evaluating the ROS node itself.

Everything goes through `rosbags` (pure Python, sqlite3 and mcap storages, no ROS installation needed) and the
same inference interface and image conversion as the node (:func:`dicnet_ros.inference.load_model`,
:mod:`dicnet_ros.image_conversion`), so a bag evaluation measures what the vehicle would compute.

Ground-truth topic encoding (``sensor_msgs/Image``, ``mono8``, same header as the camera image)::

    255 = anomaly pixel      0 = normal pixel      128 = ignore (dataset ignore_id; any other value is ignored too)

It stays raw (lossless) even when the camera topic is compressed. ``make_bag`` stores the dataset spec (class
names, anomaly ids, ignore id) and the topic names as JSON in the bag's ``metadata.yaml`` ``custom_data``
(keys ``dicnet.*``), so ``bag-eval`` finds the ground-truth topic by itself; for simulator data also which
anomaly families each frame shows (``dicnet.frame_families``), so ``bag-eval`` reports per family.

Evaluating the node with a bag (recipe; details in ``docs/bag_evaluation.md``)::

    dicnet make-bag --dataset DATA --split test --out drive_bag --rate 10
    dicnet node --model model.onnx --use-sim-time --image-topic /camera/image_raw      # terminal 1
    ros2 bag record -o node_out /anomaly_node/anomaly_score /camera/anomaly_gt         # terminal 2
    # terminal 3: replay on /clock (`ros2 bag play drive_bag --clock 100`, or our player, no ROS CLI needed)
    python -c "from dicnet_ros.bag import play_bag; play_bag('drive_bag', {'/camera/image_raw': \
'/camera/image_raw', '/camera/anomaly_gt': '/camera/anomaly_gt'}, rate=1.0)"
    dicnet bag-eval --bag node_out --score-topic /anomaly_node/anomaly_score --gt-topic /camera/anomaly_gt --out ev

``BagRecorder`` records in-process instead of ``ros2 bag record`` (see test_node_replay_with_sim_time).

Outputs of a tool are written to a hidden temporary directory next to the target and renamed into place at the
end, so a failed or interrupted run never leaves a result that looks complete.

The package is split by job; this ``__init__`` only re-exports the public names, so ``from dicnet_ros.bag
import X`` keeps working: :mod:`~dicnet_ros.bag.messages` (type names, GT mask values, errors, message
construction and decoding), :mod:`~dicnet_ros.bag.read`, :mod:`~dicnet_ros.bag.write` (``make_bag``, atomic
outputs), :mod:`~dicnet_ros.bag.families` (per-frame anomaly families in the bag's metadata),
:mod:`~dicnet_ros.bag.evaluate` (``evaluate_bag``), :mod:`~dicnet_ros.bag.accumulate` (pairing by stamp, metrics
per method and family), :mod:`~dicnet_ros.bag.report` (report, plots),
:mod:`~dicnet_ros.bag.play` (rclpy player / recorder) and :mod:`~dicnet_ros.bag.cli` (``dicnet make-bag`` /
``dicnet bag-eval``).
"""

from rosbags.rosbag2.errors import WriterError

from dicnet_ros.bag.accumulate import MetricsAccumulator, StampMatcher
from dicnet_ros.bag.evaluate import EvalResult, evaluate_bag
from dicnet_ros.bag.families import FRAME_FAMILIES_KEY, MIXED, frame_groups
from dicnet_ros.bag.ground_truth import (
    DEFAULT_STAMP_TOLERANCE_MS,
    GroundTruth,
    StampPairing,
    pair_stamps,
    read_ground_truth,
)
from dicnet_ros.bag.integrity import Integrity, add_mcap_chunk_crcs, seal_bag, verify_bag
from dicnet_ros.bag.messages import (
    BAG_VERSION,
    CAMERA_INFO_TYPE,
    COMPRESSED_FORMATS,
    COMPRESSED_TYPE,
    CUSTOM_PREFIX,
    DEFAULT_NAMESPACE,
    GT_ANOMALY,
    GT_ENCODING_DOC,
    GT_IGNORE,
    GT_NORMAL,
    IMAGE_ENCODINGS,
    IMAGE_TYPE,
    IMAGE_TYPES,
    STORAGES,
    BagError,
    CorruptBagError,
    OutputExistsError,
    TopicNotFoundError,
    UnsupportedMessageError,
    array_to_bag_image,
    camera_info,
    decode_gt_mask,
    deserialize,
    format_stamp,
    gt_mask_from_labels,
    image_msg_rgb,
    read_gt_mask,
    rgb_to_bag_compressed,
    stamp_to_ns,
    typestore,
)
from dicnet_ros.bag.play import BagRecorder, play_bag, ros_message_class
from dicnet_ros.bag.read import (
    STORAGE_ERRORS,
    BagImage,
    BagLocation,
    bag_dataset_info,
    find_image_topic,
    iter_images,
    iter_raw,
    locate_bag,
    open_bag,
    read_custom_data,
    read_metadata,
    require_topic,
)
from dicnet_ros.bag.report import format_pct, latency_summary, render_report, write_curves, write_strip
from dicnet_ros.bag.write import (
    OUTPUT_MARKER,
    MakeBagResult,
    Staging,
    check_output,
    is_marked_output,
    is_own_bag,
    make_bag,
    mark_output,
    refuse_overlap,
    staged_output,
)
from dicnet_ros.text import TEXT_LIMIT, bounded

__all__ = [
    "BAG_VERSION",
    "CAMERA_INFO_TYPE",
    "COMPRESSED_FORMATS",
    "COMPRESSED_TYPE",
    "CUSTOM_PREFIX",
    "DEFAULT_NAMESPACE",
    "DEFAULT_STAMP_TOLERANCE_MS",
    "FRAME_FAMILIES_KEY",
    "GT_ANOMALY",
    "GT_ENCODING_DOC",
    "GT_IGNORE",
    "GT_NORMAL",
    "IMAGE_ENCODINGS",
    "IMAGE_TYPE",
    "IMAGE_TYPES",
    "MIXED",
    "OUTPUT_MARKER",
    "STORAGES",
    "STORAGE_ERRORS",
    "TEXT_LIMIT",
    "BagError",
    "BagImage",
    "BagLocation",
    "BagRecorder",
    "CorruptBagError",
    "EvalResult",
    "GroundTruth",
    "Integrity",
    "MakeBagResult",
    "MetricsAccumulator",
    "OutputExistsError",
    "Staging",
    "StampMatcher",
    "StampPairing",
    "TopicNotFoundError",
    "UnsupportedMessageError",
    "WriterError",
    "add_mcap_chunk_crcs",
    "array_to_bag_image",
    "bag_dataset_info",
    "bounded",
    "camera_info",
    "check_output",
    "decode_gt_mask",
    "deserialize",
    "evaluate_bag",
    "find_image_topic",
    "format_pct",
    "format_stamp",
    "frame_groups",
    "gt_mask_from_labels",
    "image_msg_rgb",
    "is_marked_output",
    "is_own_bag",
    "iter_images",
    "iter_raw",
    "latency_summary",
    "locate_bag",
    "make_bag",
    "mark_output",
    "open_bag",
    "pair_stamps",
    "play_bag",
    "read_custom_data",
    "read_ground_truth",
    "read_gt_mask",
    "read_metadata",
    "refuse_overlap",
    "render_report",
    "require_topic",
    "rgb_to_bag_compressed",
    "ros_message_class",
    "seal_bag",
    "staged_output",
    "stamp_to_ns",
    "typestore",
    "verify_bag",
    "write_curves",
    "write_strip",
]
