"""The student's objective: Eq. 6 alone, and with outlier exposure on proxy cells."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dicnet_training.losses import OutlierExposure, distillation_loss, feature_cell_masks  # noqa: E402

from dicnet_ros.preprocessing import PreprocessConfig  # noqa: E402


def test_without_outlier_exposure_it_is_the_papers_mse() -> None:
    s, t = torch.randn(2, 8, 4, 6), torch.randn(2, 8, 4, 6)
    expected = torch.nn.functional.mse_loss(s, t)
    assert torch.allclose(distillation_loss(s, t), expected)
    assert torch.allclose(distillation_loss(s, t, OutlierExposure(weight=0.0)), expected)


def test_outlier_cells_are_pushed_apart_normal_cells_together() -> None:
    t = torch.zeros(1, 4, 2, 2)
    s = torch.zeros(1, 4, 2, 2)
    outlier = torch.zeros(1, 16, 16, dtype=torch.bool)
    outlier[:, :8, :8] = True  # exactly the top-left feature cell
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    oe = OutlierExposure(weight=2.0, margin=1.0)
    # the student copies the teacher everywhere: no normal error, full hinge on the outlier cell
    assert distillation_loss(s, t, oe, outlier, valid).item() == pytest.approx(2.0)
    s[:, :, 0, 0] = 3.0  # disagrees on the outlier cell beyond the margin: no penalty
    assert distillation_loss(s, t, oe, outlier, valid).item() == pytest.approx(0.0)
    s[:, :, 1, 1] = 1.0  # disagrees on a normal cell: Eq. 6 there
    assert distillation_loss(s, t, oe, outlier, valid).item() == pytest.approx(1.0 / 3.0)


def test_cell_masks_follow_the_networks_resize_and_padding() -> None:
    """220 rows are padded to 224 (stride 8) inside the network: an outlier on rows 208-215 is feature row 26
    only, the half-padded row 27 is neither outlier nor normal; a camera-sized mask is resized like the image."""
    pp = PreprocessConfig(height=220, width=384)
    outlier = torch.zeros(1, 220, 384, dtype=torch.bool)
    outlier[:, 208:216, :8] = True
    valid = torch.ones_like(outlier)
    out_cells, normal_cells = feature_cell_masks(outlier, valid, pp.feature_size, pp)
    assert pp.feature_size == (28, 48)
    assert out_cells[0, 0, :, 0].nonzero().flatten().tolist() == [26]
    assert feature_cell_masks(outlier, valid, pp.feature_size)[1][0, 0, 27, 1:].all()  # stretched: row 27 "normal"
    assert not normal_cells[0, 0, 27].any() and normal_cells[0, 0, 26, 1:].all() and normal_cells[0, 0, :26].all()
    big = torch.nn.functional.interpolate(outlier[:, None].float(), size=(440, 768), mode="nearest")[:, 0].bool()
    same = feature_cell_masks(big, torch.ones_like(big), pp.feature_size, pp)
    assert torch.equal(same[0], out_cells) and torch.equal(same[1], normal_cells)


def test_config_is_checked() -> None:
    assert not OutlierExposure.from_config(None).enabled
    assert OutlierExposure.from_config({"weight": 1, "paste_probability": 0.3}).paste_probability == 0.3
    assert OutlierExposure.from_config({"weight": 1, "paste_radius": [20, 150]}).paste_radius == (20.0, 150.0)
    for radius in ([150, 20], [0, 10], "big", [1, 2, 3]):
        with pytest.raises(ValueError, match="paste_radius"):
            OutlierExposure.from_config({"weight": 1, "paste_radius": radius})
    assert OutlierExposure.from_config({"weight": 1}).paste_rows == (0.35, 1.0)
    assert OutlierExposure.from_config({"weight": 1, "paste_rows": [0, 1]}).paste_rows == (0.0, 1.0)
    for rows in ([0.8, 0.2], [-0.1, 1], [0, 1.5], "top"):
        with pytest.raises(ValueError, match="paste_rows"):
            OutlierExposure.from_config({"weight": 1, "paste_rows": rows})
    with pytest.raises(ValueError, match="unknown keys"):
        OutlierExposure.from_config({"wieght": 1})
    with pytest.raises(ValueError, match="margin > 0"):
        OutlierExposure.from_config({"weight": 1, "margin": 0})


def test_outlier_head_config_is_checked() -> None:
    from dicnet_training.outlier_head import OutlierHeadConfig

    assert OutlierHeadConfig.from_config(None).paste_rows == (0.0, 1.0)
    hc = OutlierHeadConfig.from_config({"epochs": 3, "paste_radius": [10, 20], "max_images": 50})
    assert (hc.epochs, hc.paste_radius, hc.max_images) == (3, (10.0, 20.0), 50)
    for bad in ({"epochs": 0}, {"paste_rows": [0.5, 0.2]}, {"paste_radius": "big"}, {"lr": -1}, {"epoch": 3}):
        with pytest.raises(ValueError, match="outlier_head"):
            OutlierHeadConfig.from_config(bad)
