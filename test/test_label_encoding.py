"""Mask conventions -> the evaluation label (0 normal, 1 anomaly, 255 void)."""

from __future__ import annotations

import numpy as np
import pytest

from dicnet_ros.data.label_encoding import LabelEncoding, encoding_from_values, format_values, parse_values


def test_values_parse_ranges_and_lists() -> None:
    assert parse_values("2") == (2,)
    assert parse_values("0-3,9") == (0, 1, 2, 3, 9)
    assert parse_values([255, "1"]) == (1, 255)
    assert format_values(parse_values("2-200,255")) == "2-200,255"
    for bad in ("x", "5-2", "70000", "-1"):
        with pytest.raises(ValueError):
            parse_values(bad)


def test_apply_other_values_normal_or_void() -> None:
    mask = np.array([[0, 1, 2, 255, 7]], np.uint8)
    road_anomaly = encoding_from_values("2-255", name="road_anomaly")
    np.testing.assert_array_equal(road_anomaly.apply(mask), [[0, 0, 1, 1, 1]])
    smiyc = LabelEncoding("smiyc", anomaly=(1,), void=(255,), normal=(0,))
    np.testing.assert_array_equal(smiyc.apply(mask), [[0, 1, 255, 255, 255]])
    wide = encoding_from_values("300", "0")
    np.testing.assert_array_equal(wide.apply(np.array([[0, 300, 5]], np.uint16)), [[255, 1, 0]])
    assert "anomaly 2-255" in road_anomaly.describe()
    with pytest.raises(ValueError, match="both"):
        encoding_from_values("1,2", "2")
    with pytest.raises(ValueError, match="no anomaly"):
        encoding_from_values("", "255")
