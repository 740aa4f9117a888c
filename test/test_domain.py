"""The image-level out-of-domain score: the head's arithmetic, the frames it is measured on, one value on every
backend (PyTorch, ONNX Runtime fused and separate, INT8 within a tolerance), older model files without it, and the
report helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from dicnet_ros.data.domain_shift import (  # noqa: E402
    DEGENERATE_FRAMES,
    PHOTOMETRIC_SHIFTS,
    degenerate_frame,
    photometric_shift,
)
from dicnet_ros.inference import load_model  # noqa: E402
from dicnet_ros.metadata import METADATA_KEY  # noqa: E402
from dicnet_ros.metrics import AnomalyEvaluator  # noqa: E402
from dicnet_ros.metrics.domain import DomainSplitEvaluator, DomainTally, domain_fields, in_domain  # noqa: E402
from dicnet_ros.model.domain import DOMAIN_GROUPS, DomainHead, pixel_statistics  # noqa: E402
from dicnet_ros.preprocessing import PreprocessConfig, preprocess  # noqa: E402


def _image(seed: int, shape: tuple[int, int] = (64, 96)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def test_head_scores_standard_deviations_of_the_calibration_images() -> None:
    """Fitted on one cloud of statistics, standardised on another draw of it: those score a few standard
    deviations at most; a point far along the features, or too dark / too bright, scores far more."""
    gen = torch.Generator().manual_seed(0)
    num_features = 40
    mixing = torch.randn(num_features, num_features, generator=gen)

    def draw(n: int) -> torch.Tensor:
        pixels = torch.tensor([-1.0, -1.8, -3.0]) + 0.2 * torch.randn(n, 3, generator=gen)
        return torch.cat([pixels, torch.randn(n, num_features, generator=gen) @ mixing], dim=1)

    head = DomainHead(num_features, rank=8)
    summary = head.fit(draw(300), draw(200))
    assert len(summary["group_center"]) == len(DOMAIN_GROUPS) and 0 < summary["explained_variance"] < 1
    in_domain_scores = head(draw(500))
    assert float(in_domain_scores.max()) < 5.0 and float(in_domain_scores.median()) < 2.5
    far = draw(3)
    far[:, 3:] *= 4.0  # features far out
    assert (head(far) > 8.0).all()
    for value in (-3.0, 1.0):  # brightness far below and far above: both out (two-sided)
        shifted = draw(3)
        shifted[:, 0] = value
        assert (head(shifted) > 8.0).all()
    assert head.group_scores(far)[:, 0].min() > 8.0  # the feature group is the one that says so
    with pytest.raises(ValueError, match="more than 9 fit images"):
        DomainHead(num_features, rank=8).fit(draw(5), draw(5))


def test_pixel_statistics_see_uniform_noisy_and_blurred_frames() -> None:
    config = PreprocessConfig(height=64, width=96)
    base = np.zeros((64, 96, 3), np.uint8)
    base[:, :48] = (200, 180, 160)  # a sharp edge and two flat halves
    base[20:40, 60:80] = (20, 40, 60)
    rng = np.random.default_rng(0)
    frames = {"base": base, **{kind: degenerate_frame(kind, base, rng) for kind in DEGENERATE_FRAMES}}
    stats = pixel_statistics(preprocess(torch.from_numpy(np.stack(list(frames.values()))), config), config)
    brightness, contrast, sharpness = (dict(zip(frames, stats[:, i].tolist(), strict=True)) for i in range(3))
    assert brightness["black"] < brightness["underexposed"] < brightness["base"] < brightness["overexposed"]
    assert brightness["white"] > brightness["base"]
    for flat in ("black", "white", "grey"):
        assert contrast[flat] < np.log(2e-3) and sharpness[flat] < np.log(2e-4)
    assert sharpness["noise"] > sharpness["base"] + 1.0 and sharpness["blur"] < sharpness["base"] - 0.5


def test_degenerate_frames_and_shifts_are_deterministic_and_bounded() -> None:
    image = _image(3, (36, 64))
    for kind in DEGENERATE_FRAMES:
        a = degenerate_frame(kind, image, np.random.default_rng(1))
        b = degenerate_frame(kind, image, np.random.default_rng(1))
        assert a.shape == image.shape and a.dtype == np.uint8 and np.array_equal(a, b), kind
    for kind in PHOTOMETRIC_SHIFTS:
        assert np.array_equal(photometric_shift(image, kind, 0.0, np.random.default_rng(1)), image), kind
        strong = photometric_shift(image, kind, 1.0, np.random.default_rng(1))
        assert strong.dtype == np.uint8 and np.abs(strong.astype(int) - image).mean() > 10, kind
    assert photometric_shift(image, "darken", 1.0, np.random.default_rng(0)).mean() < image.mean() / 16
    with pytest.raises(ValueError, match="unknown degenerate"):
        degenerate_frame("smudge", image, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        photometric_shift(image, "fog", 1.5, np.random.default_rng(0))


def test_every_backend_reports_the_same_domain_score(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    """PyTorch and the fused ONNX in ONNX Runtime: one value per image, also in a batch (the separate graphs:
    test_export.py::test_separate_graphs_match_fused)."""
    models = {"torch": load_model(tiny_checkpoint, "torch", "cpu"),
              "fused": load_model(tiny_onnx, "onnxruntime", "cpu")}
    rng = np.random.default_rng(9)
    images = [_image(1), _image(2, (120, 200)), degenerate_frame("black", _image(3), rng), _image(4)]
    scores = {name: [r.domain_score for r in model.infer_batch(images)] for name, model in models.items()}
    for name, model in models.items():
        assert model.domain_threshold == 5.0, name
        assert all(isinstance(s, float) for s in scores[name]), name
        np.testing.assert_allclose(scores[name], scores["torch"], rtol=1e-4, atol=1e-4, err_msg=name)
        assert models[name].infer(images[1]).domain_score == pytest.approx(scores[name][1], rel=1e-5, abs=1e-5)
    assert scores["torch"][2] > models["torch"].domain_threshold  # a black frame raises the alarm


def test_int8_export_keeps_the_domain_head_in_float(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The INT8 graph's domain score stays near the FP32 one, and no node of the domain head is quantized."""
    import cv2
    from dicnet_training.export import ExportOptions, export_onnx
    from dicnet_training.quantize import Int8Options, domain_only_nodes

    from dicnet_ros.inference.random_models import smooth_random_images

    folder = tmp_path / "calibration"
    folder.mkdir()
    for i, image in enumerate(smooth_random_images(12, 64, 96, torch.Generator().manual_seed(5)).numpy()):
        cv2.imwrite(str(folder / f"{i}.png"), image[:, :, ::-1])
    int8 = export_onnx(tiny_checkpoint, tmp_path / "q.onnx", ExportOptions(
        dynamic=True, int8=Int8Options(folder, calibration_images=12, sensitivity_images=0))).onnx_path
    graph = onnx.load(str(int8)).graph
    head = domain_only_nodes(graph)
    assert len(head) > 10 and "domain_score" in [o.name for o in graph.output]
    quantized = {node.name for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert quantized and not head & quantized
    fp32, q = load_model(tiny_checkpoint, "torch", "cpu"), load_model(int8, "onnxruntime", "cpu")
    # a random-weight model's int8 features are far rougher than a trained one's (the shipped model: model card)
    for image in smooth_random_images(4, 64, 96, torch.Generator().manual_seed(6)).numpy():
        reference = fp32.infer(image).domain_score
        assert abs(q.infer(image).domain_score - reference) <= 0.6 + 0.1 * abs(reference)
    black = np.zeros((64, 96, 3), np.uint8)
    assert q.infer(black).domain_score > q.domain_threshold and fp32.infer(black).domain_score > q.domain_threshold


def test_older_models_without_the_domain_score_still_run(tmp_path: Path, tiny_onnx: Path) -> None:
    """An export from before the domain head (no output, no metadata field) and a checkpoint without the head:
    same maps, ``domain_score`` None, no alarm."""
    from dicnet_ros.inference.random_models import random_checkpoint

    old = onnx.load(str(tiny_onnx))
    kept = [o for o in old.graph.output if o.name != "domain_score"]
    assert len(kept) == len(old.graph.output) - 1
    del old.graph.output[:]
    old.graph.output.extend(kept)
    meta = json.loads(next(p.value for p in old.metadata_props if p.key == METADATA_KEY))
    del meta["domain_threshold"]
    meta.pop("weights_sha256", None)  # older files carry no checksum either
    next(p for p in old.metadata_props if p.key == METADATA_KEY).value = json.dumps(meta)
    path = tmp_path / "before_domain.onnx"
    onnx.save(old, str(path))
    image = _image(6)
    before, now = load_model(path, "onnxruntime", "cpu"), load_model(tiny_onnx, "onnxruntime", "cpu")
    a, b = before.infer(image), now.infer(image)
    assert a.domain_score is None and before.domain_threshold is None and b.domain_score is not None
    np.testing.assert_array_equal(a.anomaly_score, b.anomaly_score)
    np.testing.assert_array_equal(a.semantic_labels, b.semantic_labels)
    assert [r.domain_score for r in before.infer_batch([image, image])] == [None, None]
    plain = load_model(random_checkpoint(tmp_path / "plain.pt", domain_head=False), "torch", "cpu")
    assert plain.infer(image).domain_score is None and plain.domain_threshold is None


def test_report_helpers() -> None:
    assert in_domain(4.9, 5.0) is True and in_domain(5.1, 5.0) is False
    assert in_domain(None, 5.0) is None and in_domain(3.0, None) is None and in_domain(float("nan"), 5.0) is False
    assert domain_fields(6.0, 5.0) == {"domain_score": 6.0, "in_domain": False}
    assert domain_fields(None, None) == {"domain_score": None, "in_domain": None}
    tally = DomainTally(5.0)
    assert [tally.add(s) for s in (1.0, 7.0, 2.0, 9.0)] == [True, False, True, False]
    summary = tally.summary()
    assert summary["out_of_domain"] == 2 and summary["share_out_of_domain"] == 0.5 and summary["score_max"] == 9.0
    unavailable = DomainTally(None)
    unavailable.add(None)
    assert unavailable.summary() == {"available": False, "threshold": None, "frames": 1, "out_of_domain": None,
                                     "share_out_of_domain": None}


def test_in_domain_metrics_leave_the_flagged_frames_out() -> None:
    """The in-domain evaluator equals one fed the in-domain frames only, whichever frame the alarm flags first;
    while no frame is flagged it is the all-frames evaluator itself (no copy of the pixels)."""
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(5):
        label = (rng.random((20, 30)) < 0.2).astype(np.uint8)
        frames.append((rng.normal(size=(20, 30)).astype(np.float32) + 2.0 * label, label))
    verdicts = [True, True, False, True, False]

    def make() -> AnomalyEvaluator:
        return AnomalyEvaluator((1,), keep_exact_pooled=True)

    split, reference, everything = DomainSplitEvaluator(make), make(), make()
    for (score, label), verdict in zip(frames, verdicts, strict=True):
        split.update(score, label, None, verdict)
        everything.update(score, label)
        if verdict:
            reference.update(score, label)
        if verdict and not split.split:
            assert split.in_domain is split.all
    assert split.split and split.in_domain.compute()["pooled"] == reference.compute()["pooled"]
    assert split.all.compute()["pooled"] == everything.compute()["pooled"]
    assert split.in_domain.compute()["num_images"] == 3
    no_alarm = DomainSplitEvaluator(make)
    no_alarm.update(*frames[0], None, None)
    assert no_alarm.in_domain is None


def test_bench_domain_reads_folders_of_photographs_and_the_demo_stream(tiny_onnx: Path, tmp_path: Path) -> None:
    """benchmarks/bench_domain.py as the README runs it: a folder of photographs (PNG and JPEG) and the demo
    stream, each frame counted in the JSON report."""
    import subprocess
    import sys

    import cv2

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, ext in enumerate((".png", ".jpg", ".png")):
        cv2.imwrite(str(photos / f"street_{i}{ext}"), _image(i, (72, 128))[:, :, ::-1])
    report = tmp_path / "domain.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_domain.py"
    result = subprocess.run([sys.executable, str(script), "--model", str(tiny_onnx), "--real", str(photos),
                             "--demo", "--json", str(report)], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads(report.read_text())
    real = saved["real"][str(photos)]
    assert len(real["frames"]) == 3 and all(f["domain_score"] is not None for f in real["frames"])
    assert sorted(f["image"] for f in real["frames"]) == ["street_0.png", "street_1.jpg", "street_2.png"]
    assert len(saved["in_domain"]["demo stream"]["frames"]) == 30
