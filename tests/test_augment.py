"""Augmentations on synthetic arrays: shapes, dtypes, ranges, determinism, masks move with their images."""

import numpy as np

from data_pipeline.augment import augment, epoch_seed, study_transform


def _marker_batch(n=12, size=64):
    images = np.full((n, size, size, 3), 90, np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y, x = 8 + i, 10 + 2 * i
        images[i, y : y + 14, x : x + 22] = 240  # a bright, off-centre, asymmetric block
        masks[i, y : y + 14, x : x + 22] = 1
    return images, masks


def test_shapes_dtypes_ranges():
    images, masks = _marker_batch()
    out_i, out_m = augment(images, masks, seed=1)
    assert out_i.shape == images.shape and out_i.dtype == np.uint8
    assert out_m.shape == masks.shape and out_m.dtype == np.uint8
    assert set(np.unique(out_m)) <= {0, 1}
    assert not np.array_equal(out_i, images)


def test_mask_moves_with_its_image():
    images, masks = _marker_batch()
    out_i, out_m = augment(images, masks, seed=2)
    moved = 0
    for img, m, m0 in zip(out_i, out_m, masks):
        bright = img.mean(-1) > 165  # where the block went (brightness/contrast ±10% and JPEG keep it bright)
        iou = (bright & (m > 0)).sum() / max((bright | (m > 0)).sum(), 1)
        assert iou > 0.85
        moved += not np.array_equal(m, m0)
    assert moved >= len(masks) // 2  # rotation and flips really moved most masks


def test_same_seed_same_images_other_seed_other_images():
    images, masks = _marker_batch()
    a = augment(images, masks, seed=5)
    b = augment(images, masks, seed=5)
    c = augment(images, masks, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_pipeline_is_the_studys_table():
    names = [type(t).__name__ for t in study_transform(0).transforms]
    assert names == ["RandomBrightnessContrast", "Rotate", "ImageCompression", "HorizontalFlip", "VerticalFlip"]
    t = study_transform(0).transforms
    assert t[0].brightness_limit == (-0.1, 0.1) and t[0].contrast_limit == (-0.1, 0.1)
    assert t[1].limit == (-20, 20) and t[2].quality_range == (50, 100)


def test_epoch_seeds_differ_and_repeat():
    assert epoch_seed(0, 1) == epoch_seed(0, 1) != epoch_seed(0, 2)
