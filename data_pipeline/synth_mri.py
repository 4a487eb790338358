"""An embedded synthetic brain-MRI set in the layout of Kaggle's "Brain MRI Images for Brain Tumor Detection".

Each image is a greyscale axial slice: a bright scalp and skull ring, a dark gap, brain tissue with a smooth texture
and grey/white-matter shading, two dark lateral ventricles and, in ``yes/`` slices, an irregular tumour of varying size
and brightness (one region, sometimes two) whose exact mask is written beside it. ``no/`` slices are tumour-free.
Scanner-like variation: gain, gamma, a smooth bias field, blur and noise per image; a few images have a white
background or a white frame (like the real set's images 44 and 145), which ``clean_background`` removes.

Layout (class folders, read by ``data_pipeline.layout``): ROOT/no/N<i>.png and ROOT/yes/Y<i>.png, the two classes
``no`` and ``yes`` (sorted: ``yes`` is class 1), each image's mask beside it as <stem>_mask.png (0/255; all black for
``no`` slices). Classification reads the images and ignores the masks, as with the real set (which has none);
segmentation reads the pairs.

Deterministic: image i of class c depends on (seed, c, i) only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.files import encode_image
from data_pipeline.synth import cached_set, write_atomically

CLASSES = ("no", "yes")
REAL_COUNTS = (98, 155)  # the Kaggle set, per class
DEFAULT_COUNTS = tuple(round(c / 2) for c in REAL_COUNTS)  # the real imbalance, halved: (49, 78)
STYLE_VERSION = 1
WHITE_BACKGROUND = 0.06  # share of images with a white background
WHITE_FRAME = 0.04  # share with a white frame around a black background
TWO_TUMOURS = 0.2  # share of tumour slices with two separate regions


def _ellipse(size: int, cx: float, cy: float, ax: float, ay: float, angle: float) -> np.ndarray:
    import cv2

    canvas = np.zeros((size, size), np.uint8)
    cv2.ellipse(canvas, (round(cx * 16), round(cy * 16)), (round(ax * 16), round(ay * 16)), angle, 0, 360, 1, -1,
                cv2.LINE_AA, shift=4)  # fmt: skip
    return canvas.astype(bool)


def _blob(size: int, cx: float, cy: float, r: float, rng: np.random.Generator) -> np.ndarray:
    """An irregular closed outline (a few random harmonics of the radius), filled, as a bool mask."""
    import cv2

    theta = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    radius = np.ones_like(theta)
    for k in (2, 3, 4, 6):
        radius += rng.uniform(0.02, 0.16) * np.sin(k * theta + rng.uniform(0, 2 * np.pi)) * 2 / k
    pts = np.stack([cx + r * radius * np.cos(theta), cy + r * radius * np.sin(theta)], 1)
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 1, shift=4)
    return canvas.astype(bool)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    import cv2

    n = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), sigma)
    return n / (n.std() + 1e-6)


def render(class_name: str, index: int, size: int = 224, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One slice: (uint8 grey image size×size, uint8 tumour mask {0, 1}); the mask is empty for ``no``."""
    import cv2

    if class_name not in CLASSES:
        raise DataError(f"class must be one of {', '.join(CLASSES)}, not {class_name!r}")
    rng = np.random.default_rng([seed, 1000 + CLASSES.index(class_name), index])
    cx, cy = size / 2 + rng.normal(0, 0.03, 2) * size
    ax, ay = rng.uniform(0.34, 0.40) * size, rng.uniform(0.40, 0.46) * size
    angle = rng.uniform(-12, 12)
    ring = rng.uniform(0.035, 0.05) * size

    img = np.zeros((size, size), np.float32)
    head = _ellipse(size, cx, cy, ax, ay, angle)
    img[head] = rng.uniform(170, 215)  # scalp and skull: bright
    gap = _ellipse(size, cx, cy, ax - ring, ay - ring, angle)
    img[gap] = rng.uniform(20, 45)  # bone / CSF: dark
    brain = _ellipse(size, cx, cy, ax - 1.5 * ring, ay - 1.5 * ring, angle)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre_dist = np.hypot((xx - cx) / ax, (yy - cy) / ay)
    tissue = rng.uniform(95, 125) + 18 * (1 - centre_dist) + 9 * _smooth_noise(rng, size, size / 40)
    img[brain] = tissue[brain]
    for side in (-1, 1):  # lateral ventricles, roughly mirrored
        vx = cx + side * rng.uniform(0.05, 0.09) * size
        vy = cy + rng.uniform(-0.04, 0.02) * size
        ventricle = _ellipse(size, vx, vy, rng.uniform(0.025, 0.045) * size, rng.uniform(0.08, 0.13) * size,
                             angle + side * rng.uniform(5, 20))  # fmt: skip
        img[ventricle & brain] = rng.uniform(25, 50)

    mask = np.zeros((size, size), bool)
    if class_name == "yes":
        n = 2 if rng.random() < TWO_TUMOURS else 1
        for _ in range(n):
            r = rng.uniform(0.05, 0.14 if n == 1 else 0.08) * size
            for _try in range(20):  # a centre well inside the brain, away from the other region
                tx = cx + rng.uniform(-0.55, 0.55) * (ax - 1.5 * ring - r)
                ty = cy + rng.uniform(-0.55, 0.55) * (ay - 1.5 * ring - r)
                blob = _blob(size, tx, ty, r, rng)
                if not (cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & blob).any():
                    break
            mask |= blob & brain
        bright = rng.uniform(145, 235)
        core = 0.85 + 0.15 * _smooth_noise(rng, size, max(1.0, size / 60))
        img[mask] = (bright * core)[mask]

    # scanner-like variation: bias field, gain, gamma, blur, noise
    bias = 1 + np.clip(rng.uniform(0.0, 0.08) * _smooth_noise(rng, size, size / 4), -0.15, 0.15)
    img = img * bias * rng.uniform(0.75, 1.2)
    img = 255 * (np.clip(img, 0, 255) / 255) ** rng.uniform(0.8, 1.25)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.0)) + rng.normal(0, rng.uniform(1.5, 5), img.shape)
    scalp = head & ~brain
    img[scalp] = np.minimum(img[scalp], 210)  # below clean_background's near-white level, as in real scans
    outside = ~_ellipse(size, cx, cy, ax + 1, ay + 1, angle)
    img[outside] = np.clip(img[outside], 0, 12)  # air: black, with a little noise
    style = rng.random()
    if style < WHITE_BACKGROUND:
        img[outside] = rng.uniform(235, 255)
    elif style < WHITE_BACKGROUND + WHITE_FRAME:
        w = max(2, round(rng.uniform(0.02, 0.05) * size))
        img[:w], img[-w:], img[:, :w], img[:, -w:] = 245, 245, 245, 245
    return np.clip(img, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def file_stem(class_name: str, index: int) -> str:
    return f"{'Y' if class_name == 'yes' else 'N'}{index + 1}"


def write_dataset(
    out: str | Path, counts: tuple[int, ...] = DEFAULT_COUNTS, size: int = 224, seed: int = 0, workers=None
) -> Path:
    """Write no/ and yes/ (images and masks beside them) into ``out``, which must not hold a dataset yet.

    Written into a temporary folder beside ``out`` and renamed at the end, so an interrupted run leaves nothing."""

    def write_one(tmp: Path, c: str, i: int) -> None:
        image, mask = render(c, i, size, seed)
        stem = file_stem(c, i)
        (tmp / c).mkdir(exist_ok=True)
        for name, arr in ((f"{stem}.png", image), (f"{stem}_mask.png", mask * 255)):
            (tmp / c / name).write_bytes(encode_image(arr, ".png", rgb=False))

    return write_atomically(out, CLASSES, counts, size, write_one, workers)


def embedded_dataset(
    counts: tuple[int, ...] = DEFAULT_COUNTS, size: int = 224, seed: int = 0, cache_dir: str | Path | None = None
) -> Path:
    """The synthetic MRI set for these parameters, generated once into the cache folder and reused."""
    name = f"brain-mri-v{STYLE_VERSION}-{'-'.join(map(str, counts))}-{size}px-seed{seed}"
    return cached_set(name, CLASSES[-1], lambda root: write_dataset(root, counts, size, seed), cache_dir)
