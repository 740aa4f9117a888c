"""Tests for dicnet_ros.metrics: golden agreement with scikit-learn and hendrycks/anomaly-seg, protocols, streaming."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")  # the reference implementation (dev extra)

from sklearn.metrics import average_precision_score, roc_auc_score

from dicnet_ros.metrics import (
    PER_IMAGE,
    POOLED,
    AnomalyEvaluator,
    ScoreHistogram,
    anomaly_metrics,
    binary_anomaly_metrics,
    error_conditioned_fpr,
    fpr_at_recall,
    operating_curve,
    threshold_at_recall,
)

ANOMALY = 13
IGNORE = 255


# ---- verbatim reference: hendrycks/anomaly-seg anom_utils.py (stable_cumsum, fpr_and_fdr_at_recall) ----
def stable_cumsum(arr, rtol=1e-05, atol=1e-08):
    """Use high precision for cumsum and check that final value matches sum"""
    out = np.cumsum(arr, dtype=np.float64)
    expected = np.sum(arr, dtype=np.float64)
    if not np.allclose(out[-1], expected, rtol=rtol, atol=atol):
        raise RuntimeError('cumsum was found to be unstable: '
                           'its last element does not correspond to sum')
    return out


def fpr_and_fdr_at_recall(y_true, y_score, recall_level=0.95, pos_label=None):
    classes = np.unique(y_true)
    if (pos_label is None and
            not (np.array_equal(classes, [0, 1]) or
                     np.array_equal(classes, [-1, 1]) or
                     np.array_equal(classes, [0]) or
                     np.array_equal(classes, [-1]) or
                     np.array_equal(classes, [1]))):
        raise ValueError("Data is not binary and pos_label is not specified")
    elif pos_label is None:
        pos_label = 1.

    # make y_true a boolean vector
    y_true = (y_true == pos_label)

    # sort scores and corresponding truth values
    desc_score_indices = np.argsort(y_score, kind="mergesort")[::-1]
    y_score = y_score[desc_score_indices]
    y_true = y_true[desc_score_indices]

    # y_score typically has many tied values. Here we extract
    # the indices associated with the distinct values. We also
    # concatenate a value for the end of the curve.
    distinct_value_indices = np.where(np.diff(y_score))[0]
    threshold_idxs = np.r_[distinct_value_indices, y_true.size - 1]

    # accumulate the true positives with decreasing threshold
    tps = stable_cumsum(y_true)[threshold_idxs]
    fps = 1 + threshold_idxs - tps      # add one because of zero-based indexing

    thresholds = y_score[threshold_idxs]

    recall = tps / tps[-1]

    last_ind = tps.searchsorted(tps[-1])
    sl = slice(last_ind, None, -1)      # [last_ind::-1]
    recall, fps, tps, thresholds = np.r_[recall[sl], 1], np.r_[fps[sl], 0], np.r_[tps[sl], 0], thresholds[sl]

    cutoff = np.argmin(np.abs(recall - recall_level))

    return fps[cutoff] / (np.sum(np.logical_not(y_true)))   # , fps[cutoff]/(fps[cutoff] + tps[cutoff])
# ---- end of verbatim reference ----


def _tied_image(rng: np.random.Generator, shape: tuple[int, int] = (40, 50), decimals: int = 2):
    """Labels 0..13 plus some 255, anomaly scores shifted up, rounded so that many scores tie."""
    labels = rng.integers(0, 13, size=shape)
    labels[rng.random(shape) < 0.15] = ANOMALY
    labels[rng.random(shape) < 0.05] = IGNORE
    scores = rng.normal(size=shape) + 1.2 * (labels == ANOMALY)
    return np.round(scores, decimals), labels


@pytest.mark.parametrize("seed", range(5))
def test_exact_metrics_match_sklearn_with_ties_and_ignore(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores, labels = _tied_image(rng, decimals=1 + seed % 2)
    valid = labels != IGNORE
    y = labels[valid] == ANOMALY
    s = scores[valid]
    assert np.unique(s).size < s.size / 3  # really many ties
    m = anomaly_metrics(scores, labels, anomaly_ids=[ANOMALY], ignore_ids=[IGNORE])
    assert m.auroc == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert m.aupr == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert m.fpr95 == pytest.approx(fpr_and_fdr_at_recall(y.astype(int), s, 0.95), abs=1e-12)
    assert (m.num_positive, m.num_negative) == (int(y.sum()), int((~y).sum()))
    # ignoring matters: the same call without ignore ids counts 255 as normal
    assert anomaly_metrics(scores, labels, [ANOMALY]).num_negative == m.num_negative + int((~valid).sum())


@pytest.mark.parametrize("seed", range(6))
def test_fpr_at_recall_matches_anomaly_seg_reference(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(20, 3000))
    y = rng.random(n) < rng.uniform(0.02, 0.5)
    y[0], y[1] = True, False
    # integer scores: heavy ties, recall steps coarse enough that the 'closest' rule and tie breaks matter
    s = rng.integers(0, int(rng.integers(3, 60)), size=n).astype(np.float64) + y * rng.integers(0, 3)
    levels = (0.95, 0.9, 0.85, 0.8, 0.75, 0.5)
    got = fpr_at_recall(s, y, recall_levels=levels)
    for r in levels:
        assert got[f"{round(r * 100)}"] == fpr_and_fdr_at_recall(y.astype(int), s, r)


def test_fpr95_is_closest_point_with_lowest_threshold_on_ties() -> None:
    # 17 positives: recall 16/17 = 0.941 is closer to 0.95 than 17/17. The 17th positive ties with 5 negatives, so
    # the first point with recall >= 0.95 has FP = 6, but anomaly-seg's closest point has FP = 1: the *lowest*
    # threshold among the equally close points (16 positives and the one negative at 50).
    s = np.array([*range(100, 84, -1), 50, *[10] * 6, *np.linspace(-1.0, -2.0, 70)], dtype=np.float64)
    y = np.zeros(s.size, dtype=bool)
    y[:16] = True
    y[17] = True
    assert fpr_at_recall(s, y, (0.95,))["95"] == fpr_and_fdr_at_recall(y.astype(int), s, 0.95) == 1 / 76
    assert threshold_at_recall(s, y, 0.95) == 50.0


def test_threshold_at_recall_reproduces_fpr() -> None:
    rng = np.random.default_rng(7)
    y = rng.random(5000) < 0.1
    s = np.round(rng.normal(size=y.size) + y, 2)
    t = threshold_at_recall(s, y, 0.95)
    assert np.mean(s[~y] >= t) == pytest.approx(fpr_at_recall(s, y)["95"])
    assert abs(np.mean(s[y] >= t) - 0.95) < 0.02


def test_no_positives_or_no_negatives_raise() -> None:
    labels = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="no anomaly"):
        anomaly_metrics(np.random.rand(4, 4), labels, [ANOMALY])
    with pytest.raises(ValueError, match="no normal"):
        anomaly_metrics(np.random.rand(4, 4), labels + ANOMALY, [ANOMALY])
    with pytest.raises(ValueError, match="NaN"):
        binary_anomaly_metrics([0.1, np.nan], [True, False])
    with pytest.raises(ValueError, match="both anomaly and ignore"):
        anomaly_metrics([0.1, 0.2], [1, 2], [1], ignore_ids=[1])


def test_per_image_skip_rule_and_mean() -> None:
    rng = np.random.default_rng(3)
    images = [_tied_image(rng) for _ in range(3)]
    no_anomaly = (rng.random((40, 50)), np.zeros((40, 50), dtype=np.int64))
    only_anomaly = (rng.random((40, 50)), np.full((40, 50), ANOMALY))
    ev = AnomalyEvaluator([ANOMALY], [IGNORE], score_range=(-6.0, 8.0), keep_exact_pooled=True)
    for s, lab in [images[0], no_anomaly, images[1], only_anomaly, images[2]]:
        ev.update(s, lab)
    out = ev.compute()["per_image"]
    assert out["protocol"] == PER_IMAGE
    assert (out["num_images"], out["skipped_images"]) == (3, 2)
    assert (out["skipped_no_anomaly"], out["skipped_no_normal"]) == (1, 1)
    ref = []
    for s, lab in images:  # anomaly-seg: per image with sklearn + the reference FPR, then np.mean
        keep = lab != IGNORE
        y, sv = (lab[keep] == ANOMALY).astype(int), s[keep]
        ref.append([roc_auc_score(y, sv), average_precision_score(y, sv), fpr_and_fdr_at_recall(y, sv)])
    assert [out["auroc"], out["aupr"], out["fpr95"]] == pytest.approx(np.mean(ref, axis=0), abs=1e-9)


def test_pooled_differs_from_per_image_on_constructed_example() -> None:
    # each image is perfectly separated on its own, but image B's normals outscore image A's anomalies
    lab = np.array([[0, 0, ANOMALY, ANOMALY]])
    ev = AnomalyEvaluator([ANOMALY], score_range=(0.0, 4.0), keep_exact_pooled=True)
    ev.update(np.array([[0.1, 0.2, 0.8, 0.9]]), lab)
    ev.update(np.array([[1.0, 1.1, 2.0, 3.0]]), lab)
    out = ev.compute()
    assert out["per_image"]["auroc"] == 1.0 and out["per_image"]["fpr95"] == 0.0
    pooled = out["pooled"]
    assert pooled["protocol"] == POOLED and pooled["method"] == "exact"
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.8, 0.9, 1.0, 1.1, 2.0, 3.0])
    assert pooled["auroc"] == pytest.approx(roc_auc_score(y, s)) == 0.75
    assert pooled["fpr95"] == pytest.approx(fpr_and_fdr_at_recall(y, s)) == 0.5


def _efpr_example() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4 anomalies, 3 E and 5 C normal pixels, 1 ignored pixel with a high score (hand-computed below)."""
    scores = [0.9, 0.8, 0.7, 0.6, 0.95, 0.6, 0.15, 0.75, 0.65, 0.5, 0.25, 0.05, 0.99]
    labels = [ANOMALY] * 4 + [1, 2, 3] + [1, 2, 3, 4, 5] + [IGNORE]
    preds = [0] * 4 + [7, 7, 7] + [1, 2, 3, 4, 5] + [0]
    return np.array([scores]), np.array([labels]), np.array([preds])


def test_efpr_cfpr_hand_computed() -> None:
    # descending: .95E .9P .8P .75C .7P .65C [.6P .6E] .5C .25C .15E .05C   (the ignored .99 is dropped)
    # recall .95 -> closest is 4/4, t = .6: E >= t {.95, .6} = 2/3, C {.75, .65} = 2/5, FPR = 4/8
    # recall .85/.75 -> 3/4, lowest threshold with 3 TPs is .65: E {.95} = 1/3, C {.75, .65} = 2/5, FPR = 3/8
    s, lab, pred = _efpr_example()
    res = error_conditioned_fpr(s, lab, pred, [ANOMALY], [IGNORE])
    assert res["efpr"] == pytest.approx({"95": 2 / 3, "85": 1 / 3, "75": 1 / 3})
    assert res["cfpr"] == pytest.approx({"95": 0.4, "85": 0.4, "75": 0.4})
    assert res["fpr"] == pytest.approx({"95": 0.5, "85": 3 / 8, "75": 3 / 8})
    assert res["threshold"] == pytest.approx({"95": 0.6, "85": 0.65, "75": 0.65})
    assert (res["num_error"], res["num_correct"]) == (3, 5)
    for exact in (True, False):
        ev = AnomalyEvaluator([ANOMALY], [IGNORE], score_range=(0.0, 1.0), num_bins=1000, keep_exact_pooled=exact)
        ev.update(s, lab, pred)
        out = ev.compute()
        assert out["pooled"]["method"] == ("exact" if exact else "histogram")
        assert out["efpr"] == pytest.approx(res["efpr"]) and out["cfpr"] == pytest.approx(res["cfpr"])
        assert out["per_image"]["efpr"] == pytest.approx(res["efpr"])
        assert out["num_ignored_pixels"] == 1


@pytest.mark.parametrize(("seed", "spacing"), [(0, "linear"), (1, "linear"), (2, "log")])
def test_streaming_error_within_documented_bound(seed: int, spacing: str) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(200_000) < 0.05
    if spacing == "log":  # positive, heavy-tailed like the raw DiCNet distance
        s, rng_ = np.exp(rng.normal(size=y.size) * 1.5 + 1.3 * y), (1e-4, 1e4)
    else:
        s, rng_ = rng.normal(size=y.size) + 1.5 * y, (-6.0, 8.0)
    exact_curve = operating_curve(s, y)
    exact = exact_curve.scores()
    hist = ScoreHistogram(rng_, num_bins=10_000, spacing=spacing)
    hist.update(s, y)
    approx = hist.curve().scores()
    bound = hist.error_bounds()
    assert abs(approx.auroc - exact.auroc) <= bound["auroc"] + 1e-12
    assert abs(approx.auroc - exact.auroc) < 1e-3 and bound["auroc"] < 1e-3
    assert abs(approx.aupr - exact.aupr) <= bound["aupr"] + 1e-12
    for r in (0.95, 0.85, 0.75):
        key = f"{round(r * 100)}"
        assert abs(hist.curve().fpr_at_recall(r) - exact_curve.fpr_at_recall(r)) <= bound["fpr"][key] + 1e-12
        assert bound["fpr"][key] < 5e-3  # one bin's (or one positive-free run of bins') negative mass
    assert hist.clamped_below + hist.clamped_above < 10


def test_histogram_equals_exact_when_every_value_has_its_own_bin() -> None:
    rng = np.random.default_rng(5)
    y = rng.random(20_000) < 0.1
    s = np.round(rng.uniform(0, 1, size=y.size) + 0.2 * y, 2)  # 0.00 .. 1.20 in 0.01 steps
    hist = ScoreHistogram((-0.005, 1.205), num_bins=121)  # bin centres on the grid
    hist.update(s, y)
    got, want = hist.curve().scores(), binary_anomaly_metrics(s, y)
    assert got.auroc == pytest.approx(want.auroc, abs=1e-12)
    assert got.aupr == pytest.approx(want.aupr, abs=1e-12)
    assert got.fpr95 == want.fpr95


def test_clamping_is_counted_and_warned() -> None:
    hist = ScoreHistogram((0.0, 1.0), num_bins=10)
    hist.update(np.array([-3.0, -0.1, -0.0, 0.0, 0.5, 1.0, 1.5, 9.0]), np.array([0, 0, 0, 1, 0, 1, 1, 0]))
    assert (hist.clamped_below, hist.clamped_above) == (2, 2)
    assert hist.counts[0].sum() == 4 and hist.counts[-1].sum() == 3
    log_hist = ScoreHistogram((1e-3, 1e3), num_bins=6, spacing="log")
    log_hist.update(np.array([0.0, 1e-4, 1.0, 1e4]), np.array([1, 0, 0, 1]))
    assert (log_hist.clamped_below, log_hist.clamped_above) == (2, 1)
    assert log_hist.counts[0].sum() == 2 and log_hist.counts[3].sum() == 1
    ev = AnomalyEvaluator([ANOMALY], score_range=(0.0, 1.0))
    ev.update(np.array([[2.0, 0.5, 0.2]]), np.array([[ANOMALY, 0, 0]]))
    with pytest.warns(RuntimeWarning, match="clamped"):
        out = ev.compute()
    assert out["pooled"]["histogram"]["clamped_above"] == 1


def _images(seed: int, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s, lab = _tied_image(rng, shape=(20, 30))
        pred = np.where(rng.random(lab.shape) < 0.2, (lab + 1) % 13, lab)
        out.append((s, lab, pred))
    out[1] = (out[1][0], np.zeros_like(out[1][1]), out[1][2])  # one image without anomalies
    return out


@pytest.mark.parametrize("exact", [True, False])
def test_merge_equals_single_evaluator(exact: bool) -> None:
    images = _images(11, 6)
    kwargs = {"anomaly_ids": [ANOMALY], "ignore_ids": [IGNORE], "score_range": (-6.0, 8.0),
              "keep_exact_pooled": exact}
    full, a, b = (AnomalyEvaluator(**kwargs) for _ in range(3))
    for i, (s, lab, pred) in enumerate(images):
        full.update(s, lab, pred)
        (a if i % 2 else b).update(s, lab, pred)
    merged = a.merge(b).compute()
    single = full.compute()
    assert merged["pooled"]["method"] == single["pooled"]["method"] == ("exact" if exact else "histogram")
    assert merged["per_image"]["skipped_images"] == 1
    for proto in (PER_IMAGE, POOLED):
        for key in ("auroc", "aupr", "fpr95"):
            assert merged[proto][key] == pytest.approx(single[proto][key], abs=1e-12)
        assert merged[proto]["efpr"] == pytest.approx(single[proto]["efpr"], abs=1e-12)
    assert merged["num_pixels"] == single["num_pixels"] == sum(int((x[1] != IGNORE).sum()) for x in images)
    json.dumps(merged, allow_nan=False)  # JSON-serialisable, no NaN


def test_compute_report_shape_and_exact_limit_fallback() -> None:
    images = _images(12, 3)
    ev = AnomalyEvaluator([ANOMALY], [IGNORE], score_range=(-6.0, 8.0), keep_exact_pooled=True,
                          exact_pixel_limit=1000)
    with pytest.warns(RuntimeWarning, match="exact_pixel_limit"):
        for s, lab, pred in images:
            ev.update(s, lab, pred)
    out = ev.compute()
    assert out["protocols"] == [PER_IMAGE, POOLED]
    assert out["pooled"]["method"] == "histogram" and "error_bound" in out["pooled"]
    assert set(out["efpr"]) == set(out["cfpr"]) == {"95", "85", "75"}
    assert out["num_images"] == 3 and out["per_image"]["num_images"] == 2
    no_pred = AnomalyEvaluator([ANOMALY], per_image=False)
    no_pred.update(np.array([[0.2, 0.9]]), np.array([[0, ANOMALY]]))
    rep = no_pred.compute()
    assert rep["per_image"]["enabled"] is False and rep["per_image"]["auroc"] is None
    assert rep["pooled"]["auroc"] == 1.0 and rep["efpr"]["95"] is None


def test_shape_mismatch_and_empty_positive_in_evaluator() -> None:
    ev = AnomalyEvaluator([ANOMALY])
    with pytest.raises(ValueError, match="shape"):
        ev.update(np.zeros((4, 5)), np.zeros((5, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        ev.update(np.zeros((4, 5)), np.zeros((4, 5), dtype=np.int64), np.zeros((4, 4)))
    ev.update(np.random.rand(4, 5), np.zeros((4, 5), dtype=np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ev.compute()
    assert out["pooled"]["auroc"] is None and "no anomaly" in out["pooled"]["error"]
    assert out["per_image"]["auroc"] is None and out["per_image"]["skipped_no_anomaly"] == 1


def test_all_reduce_single_rank_process_group(tmp_path) -> None:
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    images = _images(13, 4)
    ev = AnomalyEvaluator([ANOMALY], [IGNORE], score_range=(-6.0, 8.0), keep_exact_pooled=True)
    for s, lab, pred in images:
        ev.update(s, lab, pred)
    before = ev.compute()
    assert ev.all_reduce() is ev  # no process group yet: no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        after = ev.all_reduce().compute()
        with pytest.raises(RuntimeError, match="already"):
            ev.all_reduce()
    finally:
        dist.destroy_process_group()
    assert after["pooled"]["method"] == "exact"
    for proto in (PER_IMAGE, POOLED):
        for key in ("auroc", "aupr", "fpr95"):
            assert math.isclose(after[proto][key], before[proto][key], abs_tol=1e-12)
    assert after["num_pixels"] == before["num_pixels"]
    assert after["per_image"]["num_images"] == before["per_image"]["num_images"]


def _ddp_worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    """One rank: evaluate every other image, all-reduce, rank 0 writes the report."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        for exact in (True, False):
            ev = AnomalyEvaluator([ANOMALY], [IGNORE], score_range=(-6.0, 8.0), keep_exact_pooled=exact)
            for s, lab, pred in _images(21, 5)[rank::world_size]:
                ev.update(s, lab, pred)
            report = ev.all_reduce().compute()
            if rank == 0:
                with open(f"{out_file}.{int(exact)}", "w") as f:
                    json.dump(report, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_two_ranks_equals_single_evaluator(tmp_path) -> None:
    mp = pytest.importorskip("torch.multiprocessing")
    out_file = str(tmp_path / "report.json")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "pg"), out_file), nprocs=2, join=True)
    for exact in (True, False):
        single = AnomalyEvaluator([ANOMALY], [IGNORE], score_range=(-6.0, 8.0), keep_exact_pooled=exact)
        for s, lab, pred in _images(21, 5):
            single.update(s, lab, pred)
        want = single.compute()
        with open(f"{out_file}.{int(exact)}") as f:
            got = json.load(f)
        assert got["pooled"]["method"] == ("exact" if exact else "histogram")
        assert got["num_pixels"] == want["num_pixels"] and got["num_images"] == 5
        for proto in (PER_IMAGE, POOLED):
            for key in ("auroc", "aupr", "fpr95"):
                assert got[proto][key] == pytest.approx(want[proto][key], abs=1e-12)
        assert got["efpr"] == pytest.approx(want["efpr"], abs=1e-12)
        assert got["per_image"]["skipped_images"] == want["per_image"]["skipped_images"] == 1
