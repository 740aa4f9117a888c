"""The model that ships in models/: loads on the CPU backend, carries its calibration, and finds anomalies
in the shipped demo stream (held-out object families) far better than chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")  # the demo stream is a bag

from dicnet_ros.bag import bag_dataset_info, iter_images
from dicnet_ros.data.label_encoding import ANOMALY, VOID
from dicnet_ros.data.sim.classes import SIM_CLASSES
from dicnet_ros.demo import DEMO_BAG
from dicnet_ros.inference import load_model
from dicnet_ros.metrics import AnomalyEvaluator
from dicnet_ros.node import default_model_path
from dicnet_ros.resources import package_file

DEFAULT_MODEL = "models/dicnet_sim_default.onnx"


def test_default_model_is_shipped_small_and_calibrated() -> None:
    path = default_model_path()
    assert path.is_file() and path.stat().st_size < 30 * 2**20
    model = load_model(path, backend="onnxruntime", device="cpu")
    meta = model.metadata
    assert list(meta.class_names) == list(SIM_CLASSES)
    assert meta.scoring_mode in ("paper", "code") and meta.threshold is not None and meta.threshold > 0
    assert len(meta.calibration["mu_c"]) == meta.model_config["feature_channels"]
    assert meta.export["form"] == "fused" and meta.export["dynamic"] is True


def test_default_model_beats_msp_on_the_demo_stream() -> None:
    """Regression guard on the shipped stream (30 frames, held-out families): DiCNet stays ahead of MSP."""
    bag = package_file(DEMO_BAG)
    info = bag_dataset_info(bag)
    gt = _ground_truth(bag, info["gt_topic"])
    model = load_model(default_model_path(), backend="onnxruntime", device="cpu")
    evaluators = {name: AnomalyEvaluator((ANOMALY,), (VOID,), score_range=rng, keep_exact_pooled=True)
                  for name, rng in (("dicnet", model.metadata.score_range), ("msp", (0.0, 1.0)))}
    for frame in iter_images(bag, info["image_topic"]):
        result = model.infer(frame.rgb)
        evaluators["dicnet"].update(result.anomaly_score, gt[frame.stamp_ns])
        evaluators["msp"].update(result.extras["msp"], gt[frame.stamp_ns])
    dicnet, msp = (evaluators[k].compute() for k in ("dicnet", "msp"))
    for protocol in ("per_image", "pooled"):
        assert dicnet[protocol]["aupr"] > msp[protocol]["aupr"], protocol
        assert dicnet[protocol]["fpr95"] < msp[protocol]["fpr95"], protocol
    assert dicnet["pooled"]["auroc"] >= 0.85


@pytest.mark.parametrize("path", [DEFAULT_MODEL, "models/dicnet_sim_default_int8.onnx"])
def test_default_model_alarms_on_degenerate_frames_and_not_on_its_demo_stream(path: str) -> None:
    """The out-of-domain alarm of the shipped models (FP32 and INT8): silent on all 30 frames of the demo stream,
    raised on every degenerate frame made from them (black, white, grey, noise, heavy blur, +-3 EV)."""
    from dicnet_ros.data.domain_shift import DEGENERATE_FRAMES, degenerate_frame

    model = load_model(package_file(path), backend="onnxruntime", device="cpu")
    assert model.domain_threshold == 5.0
    bag = package_file(DEMO_BAG)
    frames = [frame.rgb for frame in iter_images(bag, bag_dataset_info(bag)["image_topic"])]
    scores = [r.domain_score for r in model.infer_batch(frames)]
    assert len(scores) == 30 and max(scores) < model.domain_threshold, max(scores)
    rng = np.random.default_rng(0)
    degenerate = {(kind, i): degenerate_frame(kind, frames[i], rng) for kind in DEGENERATE_FRAMES
                  for i in range(0, 30, 6)}
    missed = {key: r.domain_score for key, r in zip(degenerate, model.infer_batch(list(degenerate.values())),
                                                    strict=True) if r.domain_score <= model.domain_threshold}
    assert not missed, missed


@pytest.mark.slow
def test_default_model_reproduces_its_model_card_on_the_regenerated_test_split(tmp_path: Path) -> None:
    """Re-render the 500-image simulated test split of the model card (deterministic seeds) and evaluate the
    shipped checkpoint with `dicnet evaluate`'s code; models/README.md reports these very numbers. The score
    checked is the one the node publishes (`dicnet_paper`: Eq. 7 fused with the outlier head's MaxLogit)."""
    pytest.importorskip("pybullet")
    from dicnet_training.config import load_config
    from dicnet_training.evaluation import evaluate

    from dicnet_ros.data.sim.generator import generate_split

    generate_split(tmp_path / "sim", "test", 500, seed=0, size=(384, 216), anomaly_set="all", workers=2,
                   progress=False)
    cfg = load_config("sim", [f"data.root={tmp_path / 'sim'}", "eval.qualitative=0"])
    report = evaluate(default_model_path().with_suffix(".pt"), cfg, tmp_path / "eval", "test", False, "cpu",
                      show_progress=False)
    methods = report["methods"]
    dicnet, msp, maxlogit = methods["dicnet_paper"], methods["msp"], methods["maxlogit"]
    assert report["info"]["num_images"] == 500
    assert report["info"]["score_fusion"] == "outlier_maxlogit"  # the published score is the one that must win
    # the bar (issue 11), in both protocols: AUPR >= 2.5x MSP, FPR95 <= 0.5x MSP, ahead of MaxLogit on all three.
    # Model card: per image 50.6 vs 9.2 AUPR, 9.3 vs 29.1 FPR95; pooled 55.4 vs 8.2 AUPR, 15.5 vs 42.7 FPR95.
    assert {k: report["info"][k] for k in ("score_fusion_weight", "score_class_window", "score_class_weight")} == {
        "score_fusion_weight": 1.75, "score_class_window": 5, "score_class_weight": 0.25}
    for protocol in ("per_image", "pooled"):
        d, m, ml = dicnet[protocol], msp[protocol], maxlogit[protocol]
        assert d["aupr"] >= 2.5 * m["aupr"], (protocol, d, m)
        assert d["fpr95"] <= 0.5 * m["fpr95"], (protocol, d, m)
        assert d["auroc"] > ml["auroc"] and d["aupr"] > ml["aupr"] and d["fpr95"] < ml["fpr95"], (protocol, d, ml)
    assert dicnet["per_image"]["auroc"] >= 0.90 and dicnet["pooled"]["auroc"] >= 0.885  # the earlier bar still holds
    # the out-of-domain alarm: an anomaly is not a domain change (model card: 2 of the 500 frames, both with large
    # anomalies close to the camera; the bar is 1 %)
    assert report["domain"]["available"] and report["domain"]["share_out_of_domain"] <= 0.01, report["domain"]


INT8_MODEL = "models/dicnet_sim_default_int8.onnx"


def test_int8_model_is_shipped_and_says_so() -> None:
    path = package_file(INT8_MODEL)
    assert path.is_file() and path.stat().st_size < default_model_path().stat().st_size
    model = load_model(path, backend="onnxruntime", device="cpu")
    q = model.metadata.export["quantization"]
    assert model.describe()["precision"] == "int8" and q["format"] == "QDQ" and q["target"] == "cpu"
    assert q["calibration_images"] >= 32 and len(q["dataset_sha256"]) == 64 and "train split" in q["dataset"]
    assert model.metadata.threshold == load_model(default_model_path(), "onnxruntime", "cpu").metadata.threshold


def test_shipped_models_open_by_bare_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`model:=dicnet_sim_default_int8.onnx` finds the shipped file from any working directory."""
    from dicnet_ros.node.errors import NodeStartupError
    from dicnet_ros.node.model_loading import open_model

    monkeypatch.chdir(tmp_path)
    assert open_model("dicnet_sim_default_int8.onnx", "onnxruntime", "cpu").describe()["precision"] == "int8"
    with pytest.raises(NodeStartupError, match="not found"):
        open_model("no_such_model.onnx", "onnxruntime", "cpu")


def test_int8_model_cannot_saturate_on_avx2() -> None:
    """On AVX2 and AVX-512 without VNNI ONNX Runtime adds u8 x s8 product pairs in saturating 16-bit integers; with
    8-bit weights every convolution of the INT8 model could pass +-32767 there (and did: pooled FPR95 +5 points on
    an AMD EPYC Zen 3). The shipped model's 7-bit weights make it impossible, whatever CPU runs this test."""
    from dicnet_training.int8_check import saturation_check

    report = saturation_check(package_file(INT8_MODEL))
    assert report.products >= 42 and not report.not_analysed
    assert report.can_saturate == [], report.summary()
    assert report.largest_pair_sum <= 128


def test_int8_model_keeps_the_fp32_quality_on_this_cpu(tmp_path: Path) -> None:
    """The integer kernels of THIS CPU (whichever path it takes) against the same graph run as float arithmetic
    and against the FP32 model, on 48 re-rendered images of a seed no choice was made on, with the bar of the
    export (models/README.md#int8: score error and pooled FPR95 within 1 point, AUROC 0.3, AP 3 % relative)."""
    pytest.importorskip("pybullet")
    from dicnet_training.int8_check import parity_check

    from dicnet_ros.data.sim.generator import generate_split

    generate_split(tmp_path / "sim", "test", 48, seed=4242, size=(384, 216), anomaly_set="all", workers=2,
                   progress=False)
    result = parity_check(package_file(INT8_MODEL), default_model_path(), tmp_path / "sim", 48)
    assert result.images == 48 and result.passed, result.summary()


def test_int8_model_records_parity_on_the_vnni_and_avx2_paths() -> None:
    """The export measured its parity natively on a VNNI CPU and on the AVX2 path (emulated), within the bar."""
    q = load_model(package_file(INT8_MODEL), "onnxruntime", "cpu").metadata.export["quantization"]
    paths = q["parity"]["paths"]
    assert {"x86-avx512-vnni", "x86-avx2"} <= set(paths)
    assert all(not measured["failures"] and measured["images"] >= 48 for measured in paths.values())
    assert paths["x86-avx2"]["how"] == "qemu-x86_64 -cpu Haswell" and q["weight_bits"] == 7


def _ground_truth(bag: Path, topic: str) -> dict[int, np.ndarray]:
    """The stream's masks as evaluation labels (1 anomaly, 255 void) by frame stamp, as the demo reads them."""
    from dicnet_ros.bag import read_ground_truth

    return read_ground_truth(bag, bag_dataset_info(bag)["image_topic"], topic)[1]
