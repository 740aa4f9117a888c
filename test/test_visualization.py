"""Colour maps, palettes and overlays: RGB order, fixed score scale, shapes and dtypes."""

from __future__ import annotations

import numpy as np
import pytest

from dicnet_ros.visualization import (
    COLORMAPS,
    class_palette,
    colorize_labels,
    colorize_score,
    colormap_lut,
    overlay,
    score_to_uint8,
)


@pytest.mark.parametrize("name", COLORMAPS)
def test_colormaps_are_rgb_luts(name: str) -> None:
    lut = colormap_lut(name)
    assert lut.shape == (256, 1, 3) and lut.dtype == np.uint8


def test_turbo_is_rgb_not_bgr() -> None:
    score = np.array([[0.0, 1.0]], np.float32)
    rgb = colorize_score(score, 0.0, 1.0, "turbo")
    low, high = rgb[0, 0], rgb[0, 1]
    assert low[2] > low[0]  # turbo starts dark blue/purple
    assert high[0] > high[2]  # and ends dark red


def test_score_scale_is_fixed_and_clipped() -> None:
    score = np.array([[-1.0, 0.0, 0.5, 1.0, 7.0, np.nan]], np.float32)
    assert score_to_uint8(score, 0.0, 1.0).tolist() == [[0, 0, 128, 255, 255, 0]]
    with pytest.raises(ValueError):
        score_to_uint8(score, 1.0, 1.0)


def test_colorize_score_shape() -> None:
    out = colorize_score(np.random.default_rng(0).random((17, 33), dtype=np.float32), 0.0, 1.0, "gray")
    assert out.shape == (17, 33, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all()
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize_score(np.zeros((2, 2), np.float32), 0, 1, "nope")


def test_palette_and_labels() -> None:
    palette = class_palette(13)
    assert palette.shape == (13, 3) and palette.dtype == np.uint8
    assert len({tuple(c) for c in palette}) == 13
    np.testing.assert_array_equal(class_palette(13), palette)  # deterministic
    labels = np.array([[0, 12], [255, 3]], np.uint8)
    out = colorize_labels(labels, palette)
    assert out[0, 0].tolist() == palette[0].tolist() and out[0, 1].tolist() == palette[12].tolist()
    assert out[1, 0].tolist() == [0, 0, 0]  # ignore id -> black
    assert class_palette(0).shape == (0, 3)


def test_overlay_score_and_mask() -> None:
    image = np.full((17, 33, 3), 100, np.uint8)
    score = np.zeros((17, 33), np.float32)
    assert (overlay(image, score, alpha=0.0, score_range=(0, 1)) == image).all()
    mask = np.zeros((17, 33), bool)
    mask[3:6, 4:9] = True
    out = overlay(image, mask, alpha=0.5, mask_color=(255, 0, 0))
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out[4, 5].tolist() == [178, 50, 50]
    assert out[0, 0].tolist() == [100, 100, 100]
    mask255 = mask.astype(np.uint8) * 255
    np.testing.assert_array_equal(overlay(image, mask255, alpha=0.5), out)


def test_overlay_resizes_values_to_the_image() -> None:
    image = np.zeros((20, 40, 3), np.uint8)
    small = np.ones((5, 10), np.float32)
    assert overlay(image, small, alpha=1.0, score_range=(0, 1)).shape == (20, 40, 3)
    assert overlay(image, np.ones((5, 10), bool), alpha=1.0).shape == (20, 40, 3)
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, small, alpha=1.5)


def _score_to_uint8_reference(score: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The original formulation (subtract, scale, clip, NaN -> 0, round half up)."""
    tmp = np.clip((score.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo)), 0.0, 255.0)
    return (np.nan_to_num(tmp, nan=0.0) + np.float32(0.5)).astype(np.uint8)


@pytest.mark.parametrize(("lo", "hi"), [(0.0, 1.0), (-3.1, 7.7), (0.02, 0.0325), (-1e-3, 1e4)])
def test_score_to_uint8_matches_reference(lo: float, hi: float) -> None:
    rng = np.random.default_rng(3)
    span = hi - lo
    score = (rng.random((61, 97), dtype=np.float32) * 1.6 - 0.3) * np.float32(span) + np.float32(lo)
    special = [np.nan, np.inf, -np.inf, -0.0, lo, hi] + [lo + span * k / 255.0 for k in (0.5, 1.5, 127.5, 254.5)]
    score[0, :len(special)] = special
    score[1, :] = np.float32(lo) + np.float32(span / 255.0) * (np.arange(97, dtype=np.float32) * 2.5 + 0.5)
    np.testing.assert_array_equal(score_to_uint8(score, lo, hi), _score_to_uint8_reference(score, lo, hi))
    assert score_to_uint8(score[:, 3:50], lo, hi).shape == (61, 47)  # non-contiguous input
    assert score_to_uint8(score.astype(np.float64), lo, hi).dtype == np.uint8


def test_overlay_reuses_a_precomputed_heat_map() -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    score = rng.random((20, 30), dtype=np.float32)
    heat = colorize_score(score, 0.0, 1.0, "viridis")
    expected = overlay(image, score, 0.4, (0.0, 1.0), "viridis")
    np.testing.assert_array_equal(overlay(image, score, 0.4, (0.0, 1.0), "viridis", heat=heat), expected)
    with pytest.raises(ValueError, match="heat"):
        overlay(image, score, 0.4, (0.0, 1.0), heat=heat[:10])
    mask = score > 0.5  # heat does not apply to a mask
    np.testing.assert_array_equal(overlay(image, mask, 0.4, heat=heat), overlay(image, mask, 0.4))


def test_overlay_leaves_pixels_below_the_colour_range_untouched() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    score = np.zeros((20, 30), np.float32)
    score[5:10, 5:10] = 2.0
    out = overlay(image, score, alpha=0.6, score_range=(1.0, 3.0))
    below = score < 1.0
    np.testing.assert_array_equal(out[below], image[below])
    assert (out[~below] != image[~below]).any()
    everywhere = overlay(image, score, alpha=0.6, score_range=(1.0, 3.0), clear_below=False)
    assert (everywhere[below] != image[below]).any()
    heat = colorize_score(score, 1.0, 3.0)
    np.testing.assert_array_equal(overlay(image, score, alpha=0.6, score_range=(1.0, 3.0), heat=heat), out)


def test_outline_marks_the_border_of_each_region_and_nothing_else() -> None:
    from dicnet_ros.visualization import draw_outline

    image = np.zeros((20, 30, 3), np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:10, 8:16] = True
    out = draw_outline(image, mask, color=(0, 255, 0))
    drawn = (out == (0, 255, 0)).all(axis=2)
    border = mask & ~np.pad(mask, 1)[2:, 1:-1] | mask & ~np.pad(mask, 1)[:-2, 1:-1] \
        | mask & ~np.pad(mask, 1)[1:-1, 2:] | mask & ~np.pad(mask, 1)[1:-1, :-2]
    np.testing.assert_array_equal(drawn, border)
    assert not draw_outline(image, np.zeros((20, 30), bool)).any() and not image.any()  # input untouched


def test_legend_shows_the_colour_scale_and_the_threshold() -> None:
    from dicnet_ros.visualization import LEGEND_HEIGHT, contact_sheet, score_legend, with_legend

    legend = score_legend(384, (2.0, 10.0), threshold=6.0)
    assert legend.shape == (LEGEND_HEIGHT, 384, 3)
    bar = legend[10, 6:6 + 172]  # the bar spans 45 % of the width, from the 6-pixel margin
    np.testing.assert_array_equal(bar[0], colorize_score(np.float32([[2.0]]), 2.0, 10.0)[0, 0])
    np.testing.assert_array_equal(bar[-1], colorize_score(np.float32([[10.0]]), 2.0, 10.0)[0, 0])
    tick = 6 + round((6.0 - 2.0) / 8.0 * 171)
    assert (legend[3, tick] == 255).all()  # the threshold's tick above the bar
    frame = np.zeros((10, 384, 3), np.uint8)
    assert with_legend(frame, legend).shape == (10 + LEGEND_HEIGHT, 384, 3)
    with pytest.raises(ValueError, match="wide"):
        with_legend(frame[:, :100], legend)
    sheet = contact_sheet([np.full((4, 5, 3), v, np.uint8) for v in (10, 20, 30, 40)], 3)
    assert sheet.shape == (8, 15, 3) and sheet[0, 10, 0] == 30 and sheet[4, 0, 0] == 40 and sheet[4, 5, 0] == 0
