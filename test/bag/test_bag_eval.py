"""bag-eval (bag/evaluate.py, bag/report.py): the make-bag topics found, direct evaluation reproduced, the output
bag's contents, --score-topic mode, the MSP / MaxLogit baseline columns, and agreement with `dicnet evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from bag_helpers import (
    PROTOCOL_KEYS,
    H,
    W,
    _direct,
    _eval,
    _make,
    _no_leftovers,
    _read_topic,
    _same_numbers,
    _stamp,
    _storage_file,
    _write_bag,
)
from rosbags.rosbag2 import Reader

from dicnet_ros import bag as bagmod
from dicnet_ros.cli import main as dicnet


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_eval_on_the_storage_file_finds_make_bag_topics(dataset: Path, tmp_path: Path, tiny_onnx: Path,
                                                            storage: str) -> None:
    bag = _make(dataset, tmp_path / "drive", "--storage", storage)
    assert _eval(_storage_file(bag), tmp_path / "eval", tiny_onnx) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["image_topic"] == "/camera/image_raw" and report["gt_topic"] == "/camera/anomaly_gt"
    assert report["num_frames"] == 4 and report["metrics"]["dicnet"]["pooled"]["auroc"] is not None
    assert report["bag"] == str(bag.resolve()) and (tmp_path / "eval" / "drive_dicnet").is_dir()


def _assert_same(metrics: dict, direct: dict, exact: bool) -> None:
    for proto in ("per_image", "pooled"):
        for key in PROTOCOL_KEYS:
            got, want = metrics[proto][key], direct[proto][key]
            if exact:
                assert got == want, (proto, key, got, want)
            else:
                assert got is not None and abs(got - want) < 0.15, (proto, key, got, want)
    assert metrics["per_image"]["num_images"] == direct["per_image"]["num_images"]
    assert metrics["per_image"]["skipped_no_anomaly"] == direct["per_image"]["skipped_no_anomaly"] == 1


@pytest.mark.parametrize(
    ("storage", "compressed"),
    [("sqlite3", None), ("mcap", None), ("sqlite3", "png"), ("mcap", "png"), ("mcap", "jpeg")],
)
def test_bag_eval_reproduces_direct_metrics(dataset: Path, tmp_path: Path, tiny_onnx: Path, direct_metrics: dict,
                                            storage: str, compressed: str | None) -> None:
    extra = ["--storage", storage] + (["--compressed", compressed] if compressed else [])
    bag = _make(dataset, tmp_path / "drive", *extra)
    out = tmp_path / "eval"
    assert _eval(bag, out, tiny_onnx) == 0
    report = json.loads((out / "metrics.json").read_text())
    _assert_same(report["metrics"]["dicnet"], direct_metrics, exact=compressed != "jpeg")
    assert report["num_frames"] == 4 and report["unmatched"] == {"score": 0, "gt": 0}
    for name in ("report.md", "roc.png", "pr.png", "qualitative.png"):
        assert (out / name).stat().st_size > 0
    assert report["latency"]["inference"]["count"] == 4 and report["latency"]["inference"]["p95_ms"] > 0
    text = (out / "report.md").read_text()
    assert "| DiCNet | per-image |" in text and "| DiCNet | pooled |" in text
    out_bag = out / "drive_dicnet"
    suffix = ".mcap" if storage == "mcap" else ".db3"
    assert any(p.suffix == suffix for p in out_bag.iterdir())
    _no_leftovers(tmp_path)


def test_output_bag_contents(dataset: Path, tmp_path: Path, tiny_onnx: Path, model) -> None:
    bag = _make(dataset, tmp_path / "drive", "--camera-info-topic", "/camera/camera_info")
    out = tmp_path / "eval"
    assert _eval(bag, out, tiny_onnx, "--out-bag", "result", "--threshold", "0.5") == 0
    result = out / "result"
    with Reader(bag) as reader:
        inputs = {name: info.msgcount for name, info in reader.topics.items()}
    with Reader(result) as reader:
        outputs = {name: (info.msgtype, info.msgcount) for name, info in reader.topics.items()}
    for name, count in inputs.items():  # the input is copied unchanged
        assert outputs[name][1] == count
        assert [t for t, _ in _read_topic(result, name)] == [t for t, _ in _read_topic(bag, name)]
    images = _read_topic(bag, "/camera/image_raw")
    stamps = [(t, bagmod.stamp_to_ns(m.header.stamp), m.header.frame_id) for t, m in images]
    for topic, encoding in (("/dicnet/anomaly_score", "32FC1"), ("/dicnet/anomaly_mask", "mono8"),
                            ("/dicnet/overlay", "rgb8")):
        assert outputs[topic] == (bagmod.IMAGE_TYPE, 4)
        msgs = _read_topic(result, topic)
        assert [(t, bagmod.stamp_to_ns(m.header.stamp), m.header.frame_id) for t, m in msgs] == stamps
        assert {m.encoding for _, m in msgs} == {encoding}
        assert {(m.width, m.height) for _, m in msgs} == {(W, H)}
    from dicnet_ros.image_conversion import image_msg_to_array, image_msg_to_rgb

    model.threshold = 0.5
    for (_, img), (_, score), (_, mask) in zip(images, _read_topic(result, "/dicnet/anomaly_score"),
                                               _read_topic(result, "/dicnet/anomaly_mask"), strict=True):
        expected = model.infer(image_msg_to_rgb(img))
        np.testing.assert_array_equal(image_msg_to_array(score), expected.anomaly_score)
        np.testing.assert_array_equal(image_msg_to_array(mask), expected.anomaly_mask.astype(np.uint8) * 255)
    assert json.loads((out / "metrics.json").read_text())["threshold"] == 0.5


def test_score_topic_mode_matches_model_run(dataset: Path, tmp_path: Path, tiny_onnx: Path) -> None:
    """Evaluating recorded scores (what the node publishes) gives the model run's numbers, without a model."""
    bag = _make(dataset, tmp_path / "drive")
    assert _eval(bag, tmp_path / "a", tiny_onnx) == 0
    rc = dicnet(["bag-eval", "--bag", str(tmp_path / "a" / "drive_dicnet"), "--score-topic", "/dicnet/anomaly_score",
                 "--gt-topic", "/camera/anomaly_gt", "--out", str(tmp_path / "b"), "--no-progress"])
    assert rc == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["metrics"]["dicnet"]
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())["metrics"]["dicnet"]
    for proto in ("per_image", "pooled"):
        assert [a[proto][k] for k in PROTOCOL_KEYS] == [b[proto][k] for k in PROTOCOL_KEYS]


# --------------------------------------------------------------------------------------------------------- baselines


class _WithExtras:
    """A model wrapper whose ``extras`` are only ``keep`` (an older export: no baselines, or MSP alone)."""

    def __init__(self, inner, keep: tuple[str, ...]) -> None:
        self.inner, self.metadata, self.keep = inner, inner.metadata, keep

    threshold = property(lambda self: self.inner.threshold)
    domain_threshold = property(lambda self: self.inner.domain_threshold)

    def infer(self, image: np.ndarray):
        res = self.inner.infer(image)
        res.extras = {k: v for k, v in res.extras.items() if k in self.keep}
        return res

    def describe(self) -> dict[str, str]:
        return self.inner.describe()


def test_baseline_columns_msp_and_maxlogit_present_or_na(dataset: Path, tmp_path: Path, model) -> None:
    """MaxLogit is reported beside MSP (metrics.json, report.md, curves) with the numbers direct evaluation of
    ``extras`` gives; a model without them shows n/a, and DiCNet's numbers never change."""
    bag = _make(dataset, tmp_path / "drive")
    both = bagmod.evaluate_bag(bag, tmp_path / "both", model=model, write_bag=False, progress=False)
    for method in ("msp", "maxlogit"):
        _same_numbers(both.metrics[method], _direct(dataset, model, method))
    text = (tmp_path / "both" / "report.md").read_text()
    assert "| MSP | pooled |" in text and "| MaxLogit | per-image |" in text and "n/a (" not in text
    msp_only = bagmod.evaluate_bag(bag, tmp_path / "msp", model=_WithExtras(model, ("msp",)), write_bag=False,
                                   progress=False)
    assert msp_only.metrics["msp"] == both.metrics["msp"] and msp_only.metrics["maxlogit"] is None
    assert "MaxLogit: n/a (the model exposes no `maxlogit` score map" in (tmp_path / "msp" / "report.md").read_text()
    plain = bagmod.evaluate_bag(bag, tmp_path / "plain", model=_WithExtras(model, ()), write_bag=False, progress=False)
    assert plain.metrics["msp"] is None and plain.metrics["maxlogit"] is None
    text = (tmp_path / "plain" / "report.md").read_text()
    assert "MSP: n/a" in text and "MaxLogit: n/a" in text and "| MaxLogit |" not in text
    for other in (msp_only, plain):
        assert other.metrics["dicnet"] == both.metrics["dicnet"]
    assert both.metrics["by_family"] == {}  # a StreetHazards tree has no simulator manifest


def test_score_topic_mode_evaluates_the_recorded_baselines_it_has(dataset: Path, tmp_path: Path, model) -> None:
    """A recorded node run (score + msp_score, as the node publishes with publish_msp): MSP from the recording,
    MaxLogit n/a because the bag has no maxlogit_score topic."""
    from dicnet_ros.data import open_dataset

    ds = open_dataset(dataset, "test")
    frames: list[tuple[str, str, object]] = []
    for i in range(len(ds)):
        sample = ds[i]
        result = model.infer(sample.image)
        for topic, arr, enc in (("/anomaly_node/anomaly_score", result.anomaly_score, "32FC1"),
                                ("/anomaly_node/msp_score", result.extras["msp"], "32FC1"),
                                ("/camera/anomaly_gt", bagmod.gt_mask_from_labels(sample.label, ds.spec.anomaly_ids,
                                                                                  ds.spec.ignore_id), "mono8")):
            frames.append((topic, bagmod.IMAGE_TYPE, bagmod.array_to_bag_image(arr, enc, _stamp(i), "cam")))
    bag = _write_bag(tmp_path / "node_out", frames)
    result = bagmod.evaluate_bag(bag, tmp_path / "eval", score_topic="/anomaly_node/anomaly_score",
                                 gt_topic="/camera/anomaly_gt", progress=False)
    _same_numbers(result.metrics["dicnet"], _direct(dataset, model, "dicnet"))
    _same_numbers(result.metrics["msp"], _direct(dataset, model, "msp"))
    assert result.metrics["maxlogit"] is None
    meta = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert meta["baseline_topics"] == {"msp": "/anomaly_node/msp_score"}
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "| MSP | pooled |" in text and "MaxLogit: n/a (the bag has no `maxlogit_score` topic" in text


# ------------------------------------------------------------------------------------------- against dicnet evaluate


def test_bag_eval_matches_dicnet_evaluate(dataset: Path, tmp_path: Path) -> None:
    """bag-eval (fused ONNX over a bag) against `dicnet evaluate` (the PyTorch checkpoint over the image files),
    also on the out-of-domain alarm: with the model's domain threshold between its frames' scores both report the
    same frames out of domain and the same metrics over the others, which direct evaluation of those frames gives,
    and the strip marks the flagged frames."""
    from dicnet_training.config import load_config
    from dicnet_training.evaluation import evaluate
    from dicnet_training.export import ExportOptions, export_onnx

    from dicnet_ros.data import open_dataset
    from dicnet_ros.data.streethazards import STREETHAZARDS_SPEC
    from dicnet_ros.inference import load_model
    from dicnet_ros.inference.random_models import random_checkpoint
    from dicnet_ros.model.checkpoint import load_checkpoint, save_checkpoint

    ckpt = random_checkpoint(tmp_path / "sh.pt", "tiny", (96, 64), num_classes=STREETHAZARDS_SPEC.num_classes)
    ds = open_dataset(dataset, "test")
    domain_scores = [load_model(ckpt, "torch", "cpu").infer(ds[i].image).domain_score for i in range(len(ds))]
    threshold = float(np.median(domain_scores))  # two frames above, two below
    in_domain_frames = [i for i, score in enumerate(domain_scores) if score <= threshold]
    assert len(in_domain_frames) == 2
    data = load_checkpoint(ckpt)
    data["metadata"]["class_names"] = list(STREETHAZARDS_SPEC.class_names)
    data["metadata"]["domain_threshold"] = threshold
    save_checkpoint(ckpt, {k: v for k, v in data.items() if k != "format"})
    onnx_path = export_onnx(ckpt, tmp_path / "sh.onnx", ExportOptions(dynamic=True)).onnx_path

    bag = _make(dataset, tmp_path / "drive")
    assert _eval(bag, tmp_path / "eval", onnx_path) == 0
    bag_report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    from_bag = bag_report["metrics"]["dicnet"]
    cfg = load_config("ci", [f"data.root={dataset}", "data.kind=streethazards", "eval.qualitative=0"])
    report = evaluate(ckpt, cfg, tmp_path / "evaluate", "test", False, "cpu", show_progress=False)
    method = "dicnet_" + report["info"]["scoring_mode"]
    from_evaluate = report["methods"][method]
    assert report["info"]["num_images"] == 4
    for protocol in ("per_image", "pooled"):
        for metric in ("auroc", "aupr", "fpr95"):
            assert from_bag[protocol][metric] == pytest.approx(from_evaluate[protocol][metric], abs=2e-3), (
                protocol, metric)
    assert bag_report["domain"]["out_of_domain"] == report["domain"]["out_of_domain"] == 2
    assert bag_report["domain"]["share_out_of_domain"] == report["domain"]["share_out_of_domain"] == 0.5
    direct = _direct(dataset, load_model(onnx_path, "onnxruntime", "cpu"), "dicnet", in_domain_frames)
    _same_numbers(bag_report["metrics"]["in_domain"]["dicnet"], direct)
    assert set(bag_report["metrics"]["in_domain"]) == {"dicnet", "msp", "maxlogit"}
    for protocol in ("per_image", "pooled"):
        for metric in ("auroc", "aupr", "fpr95"):
            assert report["methods_in_domain"][method][protocol][metric] == pytest.approx(
                direct[protocol][metric], abs=2e-3), (protocol, metric)
    assert report["methods_in_domain"][method]["num_images"] == 2
    assert "2 of 4 frames out of domain" in (tmp_path / "eval" / "report.md").read_text()
    assert "2 of 4 frames out of domain" in (tmp_path / "evaluate" / "report.md").read_text()


def test_strip_marks_out_of_domain_frames(tmp_path: Path) -> None:
    """The qualitative strip frames an out-of-domain row in red and says so; an in-domain row stays plain."""
    import cv2

    from dicnet_ros.bag.report import _Strip, write_strip

    tiles = {"image": np.full((24, 32, 3), 120, np.uint8), "score": np.full((24, 32, 3), 60, np.uint8)}
    pictures = {}
    for name, verdict in (("in", True), ("out", False)):
        strip = _Strip(1, 1)
        strip.add(0, 1, tiles, (7.5 if verdict is False else 1.0, verdict))
        write_strip(strip, tmp_path / f"{name}.png")
        pictures[name] = cv2.imread(str(tmp_path / f"{name}.png"))
    red = [(image[:, :, 2] > 200) & (image[:, :, 1] < 60) & (image[:, :, 0] < 60) for image in pictures.values()]
    assert not red[0].any() and red[1].sum() > 200


def test_exif_rotated_jpeg_frames_keep_their_size(tmp_path: Path, tiny_onnx: Path) -> None:
    """A camera frame tagged EXIF Orientation=6 used to come out rotated (48x64 masks for a 64x48 frame)."""
    data = (Path(__file__).resolve().parents[1] / "data" / "attacks" / "exif_rot6_64x48.jpg").read_bytes()
    ts = bagmod.typestore()
    frames = []
    for i in range(2):
        header = ts.types["std_msgs/msg/Header"](stamp=ts.types["builtin_interfaces/msg/Time"](
            sec=_stamp(i) // 10**9, nanosec=_stamp(i) % 10**9), frame_id="cam")
        frames.append(("/cam/compressed", bagmod.COMPRESSED_TYPE, ts.types[bagmod.COMPRESSED_TYPE](
            header=header, format="jpeg", data=np.frombuffer(data, np.uint8))))
    bag = _write_bag(tmp_path / "exif", frames)
    assert _eval(bag, tmp_path / "eval", tiny_onnx, "--gt-topic", "") == 0
    for topic in ("/dicnet/anomaly_score", "/dicnet/anomaly_mask", "/dicnet/overlay"):
        assert {(m.width, m.height) for _, m in _read_topic(tmp_path / "eval" / "exif_dicnet", topic)} == {(64, 48)}
