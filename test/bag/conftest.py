"""Fixtures of the bag tests: a tiny StreetHazards tree built here (no simulator), the ``tiny_onnx`` model loaded
once per module (``tiny_onnx`` comes from test/conftest.py) and the metrics direct evaluation gives on the tree."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags")  # skips every bag test, as before the split, when the bag extra is missing

from bag_helpers import _scene


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sh")
    rng = np.random.default_rng(3)
    for town, flags in (("t5", (True, True, False)), ("t6", (True,))):
        for sub in ("images", "annotations"):
            (root / "test" / sub / "test" / town).mkdir(parents=True)
        for i, anomaly in enumerate(flags):
            img, label = _scene(rng, anomaly)
            cv2.imwrite(str(root / f"test/images/test/{town}/{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / f"test/annotations/test/{town}/{i}.png"), label)
    return root


@pytest.fixture(scope="module")
def model(tiny_onnx: Path):
    from dicnet_ros.inference import load_model

    m = load_model(tiny_onnx)
    yield m
    m.close()


@pytest.fixture(scope="module")
def direct_metrics(dataset: Path, model) -> dict:
    """What `dicnet evaluate` computes: load_model(...).infer + AnomalyEvaluator on the dataset images."""
    from dicnet_ros.data import open_dataset
    from dicnet_ros.metrics import AnomalyEvaluator

    ds = open_dataset(dataset, "test")
    ev = AnomalyEvaluator(ds.spec.anomaly_ids, ignore_ids=(ds.spec.ignore_id,),
                          score_range=model.metadata.score_range, keep_exact_pooled=True, per_image=True)
    for i in range(len(ds)):
        sample = ds[i]
        ev.update(model.infer(sample.image).anomaly_score, sample.label)
    return ev.compute()
