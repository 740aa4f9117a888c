"""A user's own bag (bag/ground_truth.py): masks in the common conventions (0/1, 0/255, 0/1/255, make-bag's
255/0/128), declared or detected and always reported; masks stamped a few ms off their image; and every way a
bag can yield no metric stopping with its reason before the model runs."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from bag_helpers import H, W, _err, _scene, _stamp, _write_bag

from dicnet_ros import bag as bagmod
from dicnet_ros.cli import main as dicnet
from dicnet_ros.data.label_encoding import MASK_CONVENTIONS, detect_mask_convention

README = Path(__file__).resolve().parents[2] / "README.md"
CAMERA, MASKS = "/front/image_raw", "/front/anomaly_mask"
OFFSET_NS = 4_000_000  # the masks' stamps lag their images by 4 ms (a labelling node that re-stamps)


def _frames(n: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rgb image, 0/1 mask with 255 void) per frame; frame 3 has no anomaly."""
    rng = np.random.default_rng(7)
    frames = []
    for i in range(n):
        image, label = _scene(rng, anomaly=i != 3)
        mask = (label == 14).astype(np.uint8)
        mask[label == 0] = 255
        frames.append((image, mask))
    return frames


def _user_bag(path: Path, frames: list[tuple[np.ndarray, np.ndarray]], convert=lambda m: m,
              offset_ns: int = OFFSET_NS, storage: str = "mcap", stamps: list[int] | None = None) -> Path:
    """A bag as the user's own recorder writes it: bgr8 camera and mono8 masks on topics of their choosing, no
    dicnet metadata, masks stamped ``offset_ns`` after their image."""
    stamps = stamps or [_stamp(i) for i in range(len(frames))]
    messages = []
    for stamp, (image, mask) in zip(stamps, frames, strict=True):
        messages.append((CAMERA, bagmod.IMAGE_TYPE, bagmod.array_to_bag_image(image[:, :, ::-1], "bgr8", stamp, "cam")))
        messages.append((MASKS, bagmod.IMAGE_TYPE, bagmod.array_to_bag_image(convert(mask), "mono8", stamp + offset_ns,
                                                                             "cam")))
    return _write_bag(path, messages, storage=storage)


def _direct(model, frames: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    from dicnet_ros.metrics import AnomalyEvaluator

    ev = AnomalyEvaluator((1,), ignore_ids=(255,), keep_exact_pooled=True, per_image=True)
    for image, mask in frames:
        ev.update(model.infer(image).anomaly_score, mask)
    return ev.compute()


def _readme_bag_eval_command() -> list[str]:
    """The README's command for evaluating one's own bag (its "Your own bag" block), as argv."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Your own bag"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    line = next(ln for ln in block.splitlines() if ln.startswith("dicnet bag-eval"))
    return shlex.split(line.split("#")[0])[1:]


def test_newcomers_bag_with_01_masks_a_few_ms_off_gives_metrics_from_the_readme(
        tmp_path: Path, tiny_onnx: Path, model, capsys) -> None:
    """The README's command, run as written on a bag with 0/1 masks stamped 4 ms late on topics of the user's
    choosing (only the paths and the model are filled in): the metrics of direct evaluation, the convention and
    the pairing reported on stdout, in report.md and metrics.json."""
    frames = _frames()
    _user_bag(tmp_path / "my_drive", frames)
    argv = _readme_bag_eval_command()
    assert argv[argv.index("--image-topic") + 1] == CAMERA and argv[argv.index("--gt-topic") + 1] == MASKS
    argv = [a.replace("my_drive", str(tmp_path / "my_drive")).replace("my_eval", str(tmp_path / "my_eval"))
            for a in argv]
    capsys.readouterr()
    assert dicnet([*argv, "--model", str(tiny_onnx), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 frames, 4 evaluated" in out
    assert "convention 0-1: anomaly 1, void 255, normal 0, other values void (detected from the mask values" in out
    assert "paired 4 of 4 frames with a mask within ±10.000 ms of their header stamp (worst offset 4.000 ms)" in out
    report = json.loads((tmp_path / "my_eval" / "metrics.json").read_text())
    direct = _direct(model, frames)
    for protocol in ("per_image", "pooled"):
        for key in ("auroc", "aupr", "fpr95"):
            assert report["metrics"]["dicnet"][protocol][key] == direct[protocol][key], (protocol, key)
    gt = report["ground_truth"]
    assert gt["convention"] == "0-1" and gt["chosen_by"] == "detected from the mask values"
    assert gt["pairing"]["paired"] == 4 and gt["pairing"]["worst_offset_ms"] == 4.0
    assert set(gt["value_pixels"]) == {"0", "1", "255"}
    text = (tmp_path / "my_eval" / "report.md").read_text()
    assert "## Ground truth" in text and "convention 0-1" in text and "worst offset 4.000 ms" in text


@pytest.mark.parametrize(("name", "convert"), [
    ("0-255", lambda m: np.where(m == 1, 255, 0).astype(np.uint8)),
    ("dicnet", lambda m: np.select([m == 1, m == 255], [255, 128], 0).astype(np.uint8)),
])
def test_other_conventions_are_detected_and_give_the_same_metrics(tmp_path: Path, model, name: str,
                                                                  convert) -> None:
    frames = _frames()
    bag = _user_bag(tmp_path / "drive", frames, convert)
    result = bagmod.evaluate_bag(bag, tmp_path / "eval", image_topic=CAMERA, gt_topic=MASKS, model=model,
                                 write_bag=False, progress=False)
    assert result.ground_truth.convention.name == name
    from dicnet_ros.metrics import AnomalyEvaluator

    if name == "0-255":  # a 0/255 mask has no void: what was void in the 0/1/255 masks is normal here
        ev = AnomalyEvaluator((255,), ignore_ids=(), keep_exact_pooled=True, per_image=True)
        for image, mask in frames:
            ev.update(model.infer(image).anomaly_score, convert(mask))
        direct = ev.compute()
    else:
        direct = _direct(model, frames)
    assert result.metrics["dicnet"]["pooled"]["aupr"] == direct["pooled"]["aupr"]
    assert result.metrics["dicnet"]["per_image"]["auroc"] == direct["per_image"]["auroc"]


def test_declared_convention_and_values_agree_with_detection(tmp_path: Path, tiny_onnx: Path) -> None:
    bag = _user_bag(tmp_path / "drive", _frames())
    results = {}
    for label, extra in (("detected", []), ("named", ["--gt-encoding", "0-1"]),
                         ("values", ["--anomaly-values", "1", "--void-values", "255"])):
        out = tmp_path / label
        assert dicnet(["bag-eval", "--bag", str(bag), "--image-topic", CAMERA, "--gt-topic", MASKS, "--model",
                       str(tiny_onnx), "--out", str(out), "--no-out-bag", "--no-progress", *extra]) == 0
        results[label] = json.loads((out / "metrics.json").read_text())
    assert results["named"]["ground_truth"]["chosen_by"] == "declared (--gt-encoding 0-1)"
    assert results["values"]["ground_truth"]["chosen_by"] == "declared (--anomaly-values / --void-values)"
    assert results["detected"]["metrics"]["dicnet"] == results["named"]["metrics"]["dicnet"] \
        == results["values"]["metrics"]["dicnet"]


def test_detection_rules_and_what_cannot_be_guessed() -> None:
    assert detect_mask_convention({0, 1})[0] is MASK_CONVENTIONS["0-1"]
    assert detect_mask_convention({0, 1, 255})[0] is MASK_CONVENTIONS["0-1"]
    assert detect_mask_convention({0, 128, 255})[0] is MASK_CONVENTIONS["dicnet"]
    assert detect_mask_convention({0, 255})[0] is MASK_CONVENTIONS["0-255"]
    with pytest.raises(ValueError, match=r"values 0, 1, 2, 7.*--gt-encoding.*--anomaly-values"):
        detect_mask_convention({0, 1, 2, 7})


def _no_metric(tmp_path: Path, capsys, bag: Path, *extra: str) -> str:
    """bag-eval with a model path that does not exist: the reason must come before the model is loaded."""
    capsys.readouterr()
    rc = dicnet(["bag-eval", "--bag", str(bag), "--model", str(tmp_path / "never_loaded.onnx"), "--out",
                 str(tmp_path / "eval"), "--no-progress", *extra])
    assert rc == 2
    msg = _err(capsys)
    assert "never_loaded" not in msg and not (tmp_path / "eval").exists()
    return msg


def test_nothing_to_evaluate_is_an_error_that_says_why(tmp_path: Path, capsys) -> None:
    frames = _frames()
    topics = ["--image-topic", CAMERA, "--gt-topic", MASKS]
    bag = _user_bag(tmp_path / "plain", frames)
    assert "no ground-truth topic (the bag does not name one); give --gt-topic" in _no_metric(
        tmp_path, capsys, bag, "--image-topic", CAMERA)
    late = _user_bag(tmp_path / "late", frames, offset_ns=50_000_000)
    assert "no ground-truth mask is stamped within ±10.000 ms of a frame (closest: 50.000 ms); raise " \
           "--stamp-tolerance-ms" in _no_metric(tmp_path, capsys, late, *topics)
    void = _user_bag(tmp_path / "void", frames, lambda m: np.full_like(m, 255))
    assert "every pixel is void in the 4 paired masks under convention 0-1" in _no_metric(
        tmp_path, capsys, void, *topics, "--gt-encoding", "0-1")
    clean = _user_bag(tmp_path / "clean", frames, lambda m: np.zeros_like(m))
    assert "there is no anomaly pixel in the 4 paired masks" in _no_metric(tmp_path, capsys, clean, *topics)
    odd = _user_bag(tmp_path / "odd", frames, lambda m: (m % 7 + 3).astype(np.uint8))
    assert "cannot tell the ground-truth convention from the mask values 3, 4, 6" in _no_metric(
        tmp_path, capsys, odd, *topics)


def test_wider_tolerance_pairs_late_masks(tmp_path: Path, model) -> None:
    bag = _user_bag(tmp_path / "late", _frames(), offset_ns=50_000_000)
    result = bagmod.evaluate_bag(bag, tmp_path / "eval", image_topic=CAMERA, gt_topic=MASKS, model=model,
                                 stamp_tolerance_ms=60, write_bag=False, progress=False)
    assert result.num_evaluated == 4 and result.ground_truth.pairing.worst_offset_ns == 50_000_000


def test_duplicate_stamps_that_leave_frames_out_are_reported(tmp_path: Path, tiny_onnx: Path, capsys,
                                                             caplog) -> None:
    """Frames 1 and 2 share a header stamp (a driver that re-sends): one of them cannot be evaluated, and the
    user is told, in the log while it runs and in every report."""
    frames = _frames()
    stamps = [_stamp(0), _stamp(1), _stamp(1), _stamp(3)]
    bag = _user_bag(tmp_path / "dup", frames, stamps=stamps)
    capsys.readouterr()
    assert dicnet(["bag-eval", "--bag", str(bag), "--image-topic", CAMERA, "--gt-topic", MASKS, "--model",
                   str(tiny_onnx), "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    warning = "1 frames repeat the header stamp of an earlier one: only the first with each stamp is used"
    assert warning in captured.out and warning in caplog.text  # logged as a warning while it runs
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["num_evaluated"] == 3 and report["ground_truth"]["pairing"]["duplicate_frame_stamps"] == 1
    assert warning in (tmp_path / "eval" / "report.md").read_text()


def test_ground_truth_of_make_bag_is_named_from_its_metadata(dataset: Path, tmp_path: Path, model) -> None:
    from bag_helpers import _make

    bag = _make(dataset, tmp_path / "drive")
    result = bagmod.evaluate_bag(bag, tmp_path / "eval", model=model, write_bag=False, progress=False)
    assert result.ground_truth.convention.name == "dicnet"
    assert result.ground_truth.source == "recorded by dicnet make-bag in the bag's metadata"


def test_16_bit_masks_and_8uc1_are_read(tmp_path: Path, model) -> None:
    import dataclasses

    frames = _frames()
    messages = []
    for i, (image, mask) in enumerate(frames):
        messages.append((CAMERA, bagmod.IMAGE_TYPE, bagmod.array_to_bag_image(image, "rgb8", _stamp(i), "c")))
        gt = bagmod.array_to_bag_image(mask, "mono8", _stamp(i), "c")
        messages.append((MASKS, bagmod.IMAGE_TYPE, dataclasses.replace(gt, encoding="8UC1")))
    bag = _write_bag(tmp_path / "drive", messages)
    result = bagmod.evaluate_bag(bag, tmp_path / "eval", image_topic=CAMERA, gt_topic=MASKS, model=model,
                                 write_bag=False, progress=False)
    assert result.num_evaluated == 4 and result.ground_truth.convention.name == "0-1"
    wide = np.zeros((H, W), np.uint16)
    wide[2:5, 3:9] = 1
    msg = dataclasses.replace(bagmod.array_to_bag_image(wide.view(np.uint8).reshape(H, W * 2), "mono8", 0, "c"),
                              encoding="16UC1", width=W, step=W * 2)
    assert bagmod.read_gt_mask(msg).dtype == np.uint16
    np.testing.assert_array_equal(bagmod.decode_gt_mask(msg, MASK_CONVENTIONS["0-1"]), wide.astype(np.uint8))
