"""Training augmentations: exact crop shapes, label values preserved, determinism, image/label flip agreement."""

from __future__ import annotations

import numpy as np
import pytest

from dicnet_ros.data.transforms import TrainAugment, resize_pair

IGNORE = 255


def random_pair(
    h: int, w: int, seed: int = 0, values: tuple[int, ...] = (0, 3, 7, 13)
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.choice(np.array(values, np.uint8), size=(h, w))
    return image, label


@pytest.mark.parametrize(("shape", "crop"), [((16, 32), (24, 40)), ((720, 1280), (32, 64)), ((48, 40), (48, 64))])
def test_output_shapes_and_label_values(shape: tuple[int, int], crop: tuple[int, int]) -> None:
    image, label = random_pair(*shape)
    aug = TrainAugment(crop)
    for seed in range(4):
        out_image, out_label = aug(image, label, np.random.default_rng(seed))
        assert out_image.shape == (*crop, 3) and out_image.dtype == np.uint8
        assert out_label.shape == crop and out_label.dtype == np.uint8
        assert out_image.flags.c_contiguous and out_label.flags.c_contiguous
        assert set(np.unique(out_label)) <= {0, 3, 7, 13, IGNORE}


def test_padding_uses_zero_and_ignore_id() -> None:
    image = np.full((16, 32, 3), 200, np.uint8)
    label = np.full((16, 32), 4, np.uint8)
    aug = TrainAugment((16, 64), scale_range=(1.0, 1.0), photometric=False, ignore_id=250)
    out_image, out_label = aug(image, label, np.random.default_rng(1))
    assert (out_label == 4).sum() == 16 * 32 and (out_label == 250).sum() == 16 * 32
    assert (out_image[out_label == 250] == 0).all() and (out_image[out_label == 4] == 200).all()


def test_scale_is_relative_to_crop_height() -> None:
    # scale 1 maps a 720-high image to the 36-high crop: a 1280 wide image becomes 64 wide, no padding
    image, label = random_pair(720, 1280, values=(1, 2))
    out_image, out_label = TrainAugment((36, 64), scale_range=(1.0, 1.0), hflip=False, photometric=False)(
        image, label, np.random.default_rng(0)
    )
    assert (out_label != IGNORE).all()
    expected_image, expected_label = resize_pair(image, label, (36, 64))
    np.testing.assert_array_equal(out_image, expected_image)
    np.testing.assert_array_equal(out_label, expected_label)


def test_deterministic_with_seeded_rng() -> None:
    image, label = random_pair(40, 60)
    aug = TrainAugment((32, 32))
    a = aug(image, label, np.random.default_rng(123))
    b = aug(image, label, np.random.default_rng(123))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    outputs = {aug(image, label, np.random.default_rng(s))[0].tobytes() for s in range(5)}
    assert len(outputs) > 1  # different seeds, different crops


def test_flip_keeps_image_and_label_aligned() -> None:
    # label = column index and image red channel = 2 * column: any crop/flip must keep them in step
    h, w = 8, 100
    label = np.tile(np.arange(w, dtype=np.uint8), (h, 1))
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = label * 2
    aug = TrainAugment((8, 32), scale_range=(1.0, 1.0), photometric=False)
    flipped = 0
    for seed in range(12):
        out_image, out_label = aug(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_image[..., 0], out_label * 2)
        row = out_label[0].astype(int)
        assert (np.abs(np.diff(row)) == 1).all()
        flipped += int(row[1] < row[0])
    assert 0 < flipped < 12  # both orientations happened

    no_flip = TrainAugment((8, 32), scale_range=(1.0, 1.0), photometric=False, hflip=False)
    for seed in range(6):
        assert (np.diff(no_flip(image, label, np.random.default_rng(seed))[1][0].astype(int)) == 1).all()


def test_photometric_jitter() -> None:
    image, label = random_pair(32, 32)
    identity = TrainAugment(
        (32, 32), scale_range=(1.0, 1.0), hflip=False, brightness=0, contrast=0, saturation=0, hue=0
    )
    out_image, out_label = identity(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)
    jitter = TrainAugment((32, 32), scale_range=(1.0, 1.0), hflip=False)
    out_image, out_label = jitter(image, label, np.random.default_rng(0))
    assert out_image.dtype == np.uint8 and not np.array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)  # colour jitter never touches labels
    assert np.abs(out_image.astype(int) - image.astype(int)).mean() < 60  # "a little"
    gray = np.full((4, 4, 3), 128, np.uint8)  # gray stays gray under saturation/hue changes
    out = jitter.jitter(gray, np.random.default_rng(3)).astype(int)
    assert np.abs(out - out[..., :1]).max() <= 1


def test_resize_pair() -> None:
    image = np.zeros((16, 32, 3), np.uint8)
    image[..., 0] = 255
    label = np.zeros((16, 32), np.uint8)
    label[:, 16:] = 9
    out_image, out_label = resize_pair(image, label, (8, 24))
    assert out_image.shape == (8, 24, 3) and out_label is not None and out_label.shape == (8, 24)
    assert (out_image[..., 0] == 255).all() and (out_image[..., 1:] == 0).all()
    assert set(np.unique(out_label)) == {0, 9}
    assert (out_label[:, :12] == 0).all() and (out_label[:, 12:] == 9).all()
    assert resize_pair(image, None, (32, 64))[1] is None


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="crop_size"):
        TrainAugment((0, 10))
    with pytest.raises(ValueError, match="scale_range"):
        TrainAugment((8, 8), scale_range=(1.5, 0.5))
    image, label = random_pair(8, 8)
    with pytest.raises(ValueError, match="label of shape"):
        TrainAugment((8, 8))(image, label[:4], np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        resize_pair(image.astype(np.float32), label, (4, 4))


def test_pasted_outlier_shapes_are_masked_and_seeded() -> None:
    from dicnet_ros.data.transforms import paste_outlier_shapes

    batch = np.full((4, 72, 128, 3), 100, np.uint8)
    first = batch.copy()
    mask = paste_outlier_shapes(first, np.random.default_rng(5), probability=1.0)
    assert mask.shape == (4, 72, 128) and mask.any(axis=(1, 2)).all()
    assert (first[~mask] == 100).all() and (first[mask] != 100).any()  # only the masked pixels changed
    again = batch.copy()
    np.testing.assert_array_equal(paste_outlier_shapes(again, np.random.default_rng(5), 1.0), mask)
    np.testing.assert_array_equal(again, first)  # same seed, same pastes (resumable training)
    assert not paste_outlier_shapes(batch.copy(), np.random.default_rng(5), 0.0).any()


def test_pasted_outlier_shapes_follow_the_row_range() -> None:
    """The default keeps pastes in the lower two thirds; rows=(0, 0.2) puts their centres near the top."""
    from dicnet_ros.data.transforms import paste_outlier_shapes

    batch = np.zeros((16, 72, 128, 3), np.uint8)
    low = paste_outlier_shapes(batch.copy(), np.random.default_rng(1), 1.0, radius=(10, 20))
    high = paste_outlier_shapes(batch.copy(), np.random.default_rng(1), 1.0, radius=(10, 20), rows=(0.0, 0.2))
    rows = np.arange(72)[None, :, None]
    mean_row = lambda mask: float((mask * rows).sum() / mask.sum())  # noqa: E731
    assert not low[:, : int(0.35 * 72 - 20 * 72 / 216)].any()  # centres at >= 0.35 H, radius <= 20 px at 216 px
    assert mean_row(high) < 0.3 * 72 < mean_row(low)
