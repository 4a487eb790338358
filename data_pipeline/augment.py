"""The study's augmentations, with albumentations.

Exactly the study's table: brightness ±10%, contrast ±10%, rotation ±20°, JPEG quality 50–100, horizontal and
vertical flips. Brightness, contrast and JPEG are pixel-level, so a mask is left alone by them; rotation and flips
move the mask with its image (nearest-neighbour for masks, so they stay binary).
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np


def study_transform(seed: int) -> A.Compose:
    """The study's augmentation pipeline; every call of one instance draws new parameters from ``seed``'s stream."""
    return A.Compose(
        [
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=1.0),
            # Reflected borders: a rotated smear corner shows more smear, not black wedges a model could key on.
            A.Rotate(limit=20, border_mode=cv2.BORDER_REFLECT_101, mask_interpolation=cv2.INTER_NEAREST, p=1.0),
            A.ImageCompression(quality_range=(50, 100), p=1.0),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
        ],
        seed=seed,
    )


def augment(images: np.ndarray, masks: np.ndarray | None = None, *, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Augment a batch (N,H,W,3 uint8, masks N,H,W) with one seeded pipeline, in order: same seed, same output."""
    transform = study_transform(seed)
    out_images = np.empty_like(images)
    out_masks = None if masks is None else np.empty_like(masks)
    for i in range(len(images)):
        if masks is None:
            out_images[i] = transform(image=images[i])["image"]
        else:
            res = transform(image=images[i], mask=masks[i])
            out_images[i], out_masks[i] = res["image"], res["mask"]
    return out_images, out_masks


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of online augmentation for one epoch: each epoch sees new, reproducible variants."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
