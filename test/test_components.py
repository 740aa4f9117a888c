"""The real benchmarks' protocol: SMIYC component metrics and pooled pixel metrics against values worked out by hand
on small synthetic maps (the derivations are in the comments), and against the official implementation's outputs
recorded in test/data/smiyc_official.json (how they were made: README, "Real roads")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dicnet_ros.metrics import (
    TRACK_RULES,
    AnomalyEvaluator,
    ComponentCounts,
    ComponentEvaluator,
    ComponentRules,
    benchmark_metrics,
    frame_components,
)

ANY_SIZE = ComponentRules(min_predicted=1, min_ground_truth=1)
TAUS = (0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75)


def two_objects_frame() -> tuple[np.ndarray, np.ndarray]:
    """12x12: ground-truth components A (rows 1-2, cols 1-3: 6 px), B (rows 1-2, cols 6-7: 4 px), C (row 7,
    cols 1-2: 2 px); void column 11. Predicted (score 1): P1 = rows 1-2, cols 2-6 plus (3, 4), 11 px, touching A
    (4 px) and B (2 px) with 5 normal pixels; P2 = rows 5-6, cols 8-9, 4 normal px; high scores on the void column
    (must be ignored)."""
    label = np.zeros((12, 12), np.uint8)
    label[1:3, 1:4] = 1
    label[1:3, 6:8] = 1
    label[7, 1:3] = 1
    label[:, 11] = 255
    score = np.zeros((12, 12), np.float32)
    score[1:3, 2:7] = 1
    score[3, 4] = 1
    score[5:7, 8:10] = 1
    score[:, 11] = 1
    return score, label


def test_siou_and_ppv_worked_by_hand() -> None:
    score, label = two_objects_frame()
    frame = frame_components(score, label, 0.5, ANY_SIZE)
    # sIoU(A) = |A & P1| / (|P1| + |A| - |A & P1| - |P1 & B|) = 4 / (11 + 6 - 4 - 2) = 4/11
    # sIoU(B) = 2 / (11 + 4 - 2 - 4) = 2/9 (P1's pixels in A are not B's union); sIoU(C) = 0 (nothing touches it)
    np.testing.assert_allclose(sorted(frame.siou_gt), sorted([4 / 11, 2 / 9, 0.0]), rtol=0, atol=1e-15)
    # PPV(P1) = (4 + 2) / 11, PPV(P2) = 0; sIoU(P1) = 6 / (6 + 4 + 11 - 6) = 6/15, sIoU(P2) = 0
    np.testing.assert_allclose(sorted(frame.ppv_pred), [0.0, 6 / 11], atol=1e-15)
    np.testing.assert_allclose(sorted(frame.siou_pred), [0.0, 6 / 15], atol=1e-15)
    counts = ComponentCounts()
    counts.add(frame)
    out = counts.compute()
    # TP: only 4/11 = 0.364 reaches tau = 0.25, 0.30, 0.35; FN = 3 - TP; FP: P2 always, P1 (0.545) from tau 0.55 on
    assert list(out["tp"].values()) == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert list(out["fn"].values()) == [2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3]
    assert list(out["fp"].values()) == [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    # F1 = 2 / (2 + 2 + 1) = 0.4 for the first three taus, 0 after; mean F1 = 1.2 / 11
    assert out["f1"]["25"] == pytest.approx(0.4) and out["f1"]["40"] == 0.0
    assert out["mean_f1"] == pytest.approx(1.2 / 11)
    assert out["siou"] == pytest.approx((4 / 11 + 2 / 9) / 3) and out["ppv"] == pytest.approx(3 / 11)
    assert out["num_gt_components"] == 3 and out["num_predicted_components"] == 2


def test_track_size_rules_worked_by_hand() -> None:
    """60x60: a 20x20 object (400 px) and a 9x10 one (90 px), each predicted exactly, and a 25x25 false alarm."""
    label = np.zeros((60, 60), np.uint8)
    label[2:22, 2:22] = 1
    label[40:49, 40:50] = 1
    score = (label == 1).astype(np.float32)
    score[30:55, 5:30] = 1
    # anomaly track (500 / 100): both exact predictions are below 500 px and deleted, the 90 px object becomes
    # void: one ground-truth component with sIoU 0, one predicted component (the false alarm) with PPV 0 -> F1 0
    anomaly = frame_components(score, label, 0.5, TRACK_RULES["anomaly"])
    assert anomaly.siou_gt.tolist() == [0.0] and anomaly.ppv_pred.tolist() == [0.0]
    # obstacle track (50 / 10): everything counts: sIoU 1, 1; PPV 1, 1, 0 -> TP 2, FN 0, FP 1, F1 = 4/5 at every tau
    obstacle = frame_components(score, label, 0.5, TRACK_RULES["obstacle"])
    assert sorted(obstacle.siou_gt.tolist()) == [1.0, 1.0] and sorted(obstacle.ppv_pred.tolist()) == [0.0, 1.0, 1.0]
    counts = ComponentCounts()
    counts.add(obstacle)
    assert counts.compute()["mean_f1"] == pytest.approx(0.8)
    # a predicted component of exactly min_predicted pixels is kept (the rule deletes smaller ones only)
    label2 = np.zeros((20, 20), np.uint8)
    score2 = np.zeros((20, 20), np.float32)
    score2[0:5, 0:10] = 1  # 50 px
    assert frame_components(score2, label2, 0.5, TRACK_RULES["obstacle"]).ppv_pred.tolist() == [0.0]
    score2[0, 0] = 0  # 49 px
    assert frame_components(score2, label2, 0.5, TRACK_RULES["obstacle"]).ppv_pred.size == 0
    # likewise a ground-truth component of exactly min_ground_truth pixels counts, one pixel less is void
    label2[10, 0:10] = 1  # 10 px, nothing predicted there
    assert frame_components(np.zeros_like(score2), label2, 0.5, TRACK_RULES["obstacle"]).siou_gt.tolist() == [0.0]
    label2[10, 9] = 0
    assert frame_components(np.zeros_like(score2), label2, 0.5, TRACK_RULES["obstacle"]).siou_gt.size == 0


def test_pixel_protocol_and_threshold_worked_by_hand() -> None:
    """Frame 1 (2x3): label [[1, 1, 0], [0, 0, 255]], scores [[.9, .4, .8], [.3, .1, .99]]; frame 2 has no anomaly:
    label [[0, 0, 0]], scores [[.5, .2, .05]]. Pooled ROI pixels: positives .9, .4; negatives .8 .3 .1 .5 .2 .05."""
    frames = [(np.array([[0.9, 0.4, 0.8], [0.3, 0.1, 0.99]], np.float32), np.array([[1, 1, 0], [0, 0, 255]], np.uint8)),
              (np.array([[0.5, 0.2, 0.05]], np.float32), np.array([[0, 0, 0]], np.uint8))]
    pixels = AnomalyEvaluator((1,), (255,), keep_exact_pooled=True)
    components = ComponentEvaluator("anomaly", rules=ANY_SIZE)
    for score, label in frames:
        pixels.update(score, label)
        components.update(score, label)
    out = benchmark_metrics(pixels, components)
    px = out["pixel"]
    # AP: recall 1/2 at .9 (precision 1), recall 1 at .4 (precision 2/4): .5 * 1 + .5 * .5 = .75
    assert px["aupr"] == pytest.approx(0.75)
    # AUROC: .9 beats all 6 negatives, .4 beats 4 of them: 10 / 12
    assert px["auroc"] == pytest.approx(10 / 12)
    # FPR95: recall first reaches 95 % at threshold .4, where 2 of 6 negatives (.8, .5) are above: 1/3
    assert px["fpr95"] == pytest.approx(1 / 3)
    # best F1 = 2 TP / (TP + FP + P): .9 -> 2/3, .8 -> 1/2, .5 -> 2/5, .4 -> 4/6 = 2/3: the tie goes to .9 (highest)
    assert px["best_f1"] == pytest.approx(2 / 3) and px["best_f1_threshold"] == pytest.approx(0.9)
    assert (px["num_positive"], px["num_negative"]) == (2, 6)  # the void pixel (.99) is not counted
    # components at score > .9: the .9 pixel itself is not predicted, .99 is void -> no predicted component, the
    # one ground-truth component (2 px) has sIoU 0: TP 0, FN 1, FP 0, F1 0; both frames counted
    comp = out["components"]
    assert comp["siou"] == 0.0 and comp["ppv"] is None and comp["mean_f1"] == 0.0
    assert comp["num_gt_components"] == 1 and comp["num_frames"] == 2


def test_frames_spill_to_disk_with_the_same_result(tmp_path: Path) -> None:
    score, label = two_objects_frame()
    in_memory = ComponentEvaluator("anomaly", rules=ANY_SIZE)
    spilled = ComponentEvaluator("anomaly", memory_budget=0, spill_dir=tmp_path, rules=ANY_SIZE)
    for evaluator in (in_memory, spilled):
        for k in range(3):
            evaluator.update(np.roll(score, k, axis=0), np.roll(label, k, axis=0))
        evaluator.update(score, np.full_like(label, 255))  # no ROI at all: counted, nothing kept
    assert len(list(tmp_path.glob("dicnet-components-*/*.npz"))) == 3
    assert in_memory.compute(0.5).compute() == spilled.compute(0.5).compute()
    assert spilled.compute(0.5).frames == 4
    spilled.close()
    assert not list(tmp_path.glob("dicnet-components-*"))


def test_no_component_anywhere_gives_undefined_f1() -> None:
    counts = ComponentCounts()
    counts.add(frame_components(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), 0.5, ANY_SIZE))
    out = counts.compute()
    assert out["mean_f1"] is None and out["siou"] is None and out["num_frames"] == 1


#: The official pixel curve bins each frame at up to 384 quantiles per class and merges frames by their bin edges,
#: so its AUROC / AP / FPR95 / best F1 approximate the exact ones computed here; on the recorded cases the largest
#: difference is 7.0e-4 (0.07 points).
OFFICIAL_BINNING_TOLERANCE = 1e-3


def test_agrees_with_the_official_implementation() -> None:
    """The official road-anomaly-benchmark code's outputs on seeded synthetic frames, recorded by a scratch run
    outside this repository (README "Real roads"): component counts and means exactly at the same threshold, pixel
    metrics within the official binning's error."""
    record = json.loads((Path(__file__).parent / "data" / "smiyc_official.json").read_text())
    assert len(record["cases"]) == 4
    for case in record["cases"]:
        frames = official_case_frames(case["seed"], case["frames"], tuple(case["size"]))
        assert frames_digest(frames) == case["inputs_sha256"], f"{case['name']}: the generator drifted"
        pixels = AnomalyEvaluator((1,), (255,), keep_exact_pooled=True)
        components = ComponentEvaluator(case["track"])
        for score, label in frames:
            pixels.update(score, label)
            components.update(score, label)
        ours = benchmark_metrics(pixels, components)
        official = case["official"]
        assert ours["pixel"]["best_f1_threshold"] == case["threshold"]  # the threshold both sides were run at
        for key in ("auroc", "aupr", "fpr95", "best_f1"):  # the thresholds differ: the official's is a quantile edge
            assert ours["pixel"][key] == pytest.approx(official["pixel"][key], abs=OFFICIAL_BINNING_TOLERANCE), (
                case["name"], key)
        comp = ours["components"]
        for key in ("tp", "fn", "fp"):
            assert list(comp[key].values()) == official["components"][key], (case["name"], key)
        for key in ("siou", "ppv", "siou_pred", "mean_f1"):
            expected = official["components"][key]
            assert comp[key] == (None if expected is None else pytest.approx(expected, abs=1e-12)), (case["name"], key)


def frames_digest(frames: list[tuple[np.ndarray, np.ndarray]]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for score, label in frames:
        digest.update(score.tobytes())
        digest.update(label.tobytes())
    return digest.hexdigest()


def official_case_frames(seed: int, count: int, size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded synthetic frames (numpy arithmetic only, so they are the same on every machine): disc-shaped
    anomalies of many sizes, void rows and columns, one anomaly-free frame, scores = box-blurred anomaly evidence +
    uniform noise + disc-shaped false alarms, rounded to float16 (what the benchmark stores)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(count):
        label = np.zeros(size, np.uint8)
        if i != 1:  # frame 1 has no anomaly
            for _ in range(int(rng.integers(1, 6))):
                r = int(rng.integers(1, max(2, min(h, w) // 6)))
                cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
                label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        label[: int(rng.integers(0, h // 6 + 1))] = 255
        label[:, w - int(rng.integers(1, w // 8 + 2)):] = 255
        padded = np.pad((label == 1).astype(np.float64), 2)
        integral = padded.cumsum(0).cumsum(1)
        integral = np.pad(integral, ((1, 0), (1, 0)))
        box = (integral[5:, 5:] - integral[:-5, 5:] - integral[5:, :-5] + integral[:-5, :-5]) / 25.0
        score = 0.8 * box + 0.35 * rng.random(size)
        for _ in range(int(rng.integers(0, 4))):  # false alarms
            r = int(rng.integers(1, max(2, min(h, w) // 8)))
            cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
            score[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.uniform(0.5, 1.0)
        frames.append((score.astype(np.float16).astype(np.float32), label))
    return frames


def test_first_recall_fpr_and_best_f1_against_brute_force() -> None:
    from dicnet_ros.metrics import operating_curve

    rng = np.random.default_rng(3)
    scores = np.round(rng.random(400), 2)  # many ties
    positive = rng.random(400) < 0.2 + 0.5 * scores
    curve = operating_curve(scores, positive)
    p, n = positive.sum(), (~positive).sum()
    best, best_t, first_fpr = -1.0, None, None
    for t in np.unique(scores)[::-1]:  # from the top, as the benchmark walks its curve
        predicted = scores >= t
        tp, fp = (predicted & positive).sum(), (predicted & ~positive).sum()
        f1 = 2 * tp / (tp + fp + p)
        if f1 > best:
            best, best_t = f1, t
        if first_fpr is None and tp / p >= 0.95:
            first_fpr = fp / n
    assert curve.best_f1() == (pytest.approx(best), pytest.approx(best_t))
    assert curve.fpr_at_first_recall(0.95) == pytest.approx(first_fpr)
