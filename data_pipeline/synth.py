"""An embedded synthetic blood-smear dataset in the Kaggle "Leukemia" layout.

Each image is a pale pink smear with red blood cells (with central pallor) and one or two white cells whose
purple nucleus differs by class in size, nucleus-to-cytoplasm ratio, outline and chromatin texture. The class
ranges overlap and cells overlap each other, so the task is learnable but not trivial. ``Segmented/`` looks like the
real set's: an HSV colour threshold keeps the purple cells in their own colours on black (dark nuclei included, whose
grey level is far below 128), so the default mask rule (auto: every non-black pixel, with the lossless PNG files)
gives back exactly that threshold's region.

Deterministic: image i of class c depends on (seed, c, i) only.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.files import encode_image, publish_folder
from data_pipeline.layout import ORIGINAL_DIR, SEGMENTED_DIR

CLASSES = ("Benign", "Early", "Pre", "Pro")
REAL_COUNTS = (504, 985, 963, 804)  # the Kaggle set, per class
DEFAULT_COUNTS = tuple(round(c / 8) for c in REAL_COUNTS)  # the real imbalance, scaled down
FORMATS = ("png", "jpg")

# HSV window (OpenCV: H in [0, 180)) that keeps purple white cells and drops pink background and red cells.
HSV_LOW = np.array([105, 50, 0], np.uint8)
HSV_HIGH = np.array([165, 255, 245], np.uint8)


@dataclass(frozen=True)
class _Style:
    cell_radius: tuple[float, float]  # fraction of the image side
    nc_ratio: tuple[float, float]  # nucleus radius / cell radius
    irregularity: tuple[float, float]  # amplitude of the nucleus outline's wobble
    cleft: tuple[float, float]  # depth of an indentation, fraction of the nucleus radius
    texture: tuple[float, float]  # chromatin speckle amplitude
    grain: float  # speckle blur sigma in pixels at 224 px: small = fine chromatin
    two_cells: float  # probability of a second white cell


# Version 2 (issue 15): the classes' ranges were pulled apart so that the set is about as separable as the real one
# (the study reaches 0.97-0.98 test accuracy there); version 1's ranges overlapped so much that no model got near it.
# Same story: from Benign to Pro the cell grows, the nucleus takes less of it, its outline gets rougher and more
# cleft, and its chromatin coarser.
STYLE_VERSION = 2
_STYLES = {
    "Benign": _Style((0.075, 0.095), (0.80, 0.92), (0.00, 0.04), (0.0, 0.05), (0.05, 0.12), 1.0, 0.15),
    "Early": _Style((0.100, 0.120), (0.70, 0.80), (0.04, 0.08), (0.0, 0.15), (0.12, 0.20), 1.0, 0.25),
    "Pre": _Style((0.125, 0.145), (0.60, 0.70), (0.08, 0.12), (0.25, 0.45), (0.20, 0.28), 2.0, 0.30),
    "Pro": _Style((0.150, 0.175), (0.50, 0.60), (0.14, 0.24), (0.10, 0.40), (0.30, 0.40), 3.0, 0.35),
}


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _blob(size: int, cx: float, cy: float, r: float, rng: np.random.Generator, wobble: float, cleft: float):
    """A filled, wobbly closed outline as a bool mask; cleft carves a kidney-shaped indentation."""
    import cv2

    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    radius = np.ones_like(theta)
    for k in (2, 3, 5):
        radius += wobble * rng.uniform(-1, 1) * np.sin(k * theta + rng.uniform(0, 2 * np.pi)) / k * 2
    pts = np.stack([cx + r * radius * np.cos(theta), cy + r * radius * np.sin(theta)], 1)
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_AA, shift=4)
    if cleft > 0:
        a = rng.uniform(0, 2 * np.pi)
        ccx, ccy = cx + r * np.cos(a) * 1.05, cy + r * np.sin(a) * 1.05
        cv2.circle(canvas, (round(ccx), round(ccy)), max(1, round(r * cleft * 1.2)), 0, -1)
    return canvas.astype(bool)


def render(class_name: str, index: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """One synthetic smear image (uint8 RGB, size×size) of the given class."""
    import cv2

    style = _STYLES[class_name]
    rng = np.random.default_rng([seed, CLASSES.index(class_name), index])
    s = size / 224.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    shade = 1.0 + 0.04 * np.sin(2 * np.pi * (xx * rng.uniform(0.3, 1) + yy * rng.uniform(0.3, 1)))
    img = np.empty((size, size, 3), np.float32)
    img[:] = np.array([236, 212, 216]) + rng.normal(0, 3, 3)
    img *= shade[..., None]

    for _ in range(rng.integers(8, 20)):  # red blood cells with central pallor
        r = rng.uniform(0.045, 0.075) * size
        c = rng.uniform(0, size, 2)
        col = np.array([206, 118, 128]) + rng.normal(0, 8, 3)
        disk = np.zeros((size, size), np.uint8)
        cv2.circle(disk, (round(c[0]), round(c[1])), round(r), 1, -1, cv2.LINE_AA)
        img[disk.astype(bool)] = img[disk.astype(bool)] * 0.25 + col * 0.75
        pallor = np.zeros((size, size), np.uint8)
        cv2.circle(pallor, (round(c[0]), round(c[1])), max(1, round(r * 0.45)), 1, -1, cv2.LINE_AA)
        img[pallor.astype(bool)] = img[pallor.astype(bool)] * 0.5 + np.array([228, 180, 186]) * 0.5

    n_cells = 2 if rng.random() < style.two_cells else 1
    for _ in range(n_cells):  # white cells: cytoplasm, then nucleus with chromatin texture
        r = _u(rng, style.cell_radius) * size
        cx, cy = rng.uniform(r, size - r, 2)
        cyto = _blob(size, cx, cy, r, rng, 0.04, 0.0)
        img[cyto] = np.array([172, 142, 214]) + rng.normal(0, 6, 3)
        rn = r * _u(rng, style.nc_ratio)
        ox, oy = rng.uniform(-1, 1, 2) * (r - rn) * 0.8
        nucleus = _blob(size, cx + ox, cy + oy, rn, rng, _u(rng, style.irregularity), _u(rng, style.cleft))
        speckle = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), style.grain * s)
        speckle /= speckle.std() + 1e-6
        base = np.array([92, 46, 128]) * rng.uniform(0.85, 1.1)
        tex = 1.0 + _u(rng, style.texture) * speckle[nucleus][:, None]
        img[nucleus] = np.clip(base * tex, 20, 200)

    img = cv2.GaussianBlur(img, (3, 3), 0.6) + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def segment(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The HSV threshold of the real set: (binary mask, Segmented image with the cells in their colours on black)."""
    import cv2

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    mask = cv2.inRange(hsv, HSV_LOW, HSV_HIGH)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    # A kept pixel is never pure black (its saturation is >= 50), so "non-black" on the file gives back `mask` exactly.
    seg = np.where(mask[..., None], rgb, 0).astype(np.uint8)
    return mask.astype(np.uint8), seg


def file_name(class_name: str, index: int, fmt: str) -> str:
    kind = "Benign" if class_name == "Benign" else f"Malignant-{class_name}"
    return f"WBC-{kind}-{index + 1:03d}.{fmt}"


def write_dataset(
    out: str | Path,
    counts: tuple[int, ...] = DEFAULT_COUNTS,
    size: int = 224,
    seed: int = 0,
    fmt: str = "png",
    workers: int | None = None,
) -> Path:
    """Write Original/ and Segmented/ for the four classes into ``out`` (which must not hold a dataset yet).

    Written into a temporary folder beside ``out`` and renamed at the end, so an interrupted run leaves nothing.
    """
    if fmt not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")

    def write_one(tmp: Path, c: str, i: int) -> None:
        rgb = render(c, i, size, seed)
        _, seg = segment(rgb)
        name = file_name(c, i, fmt)
        for folder, arr in ((ORIGINAL_DIR, rgb), (SEGMENTED_DIR, seg)):
            (tmp / folder / c).mkdir(parents=True, exist_ok=True)
            (tmp / folder / c / name).write_bytes(encode_image(arr, f".{fmt}"))

    return write_atomically(out, CLASSES, counts, size, write_one, workers)


def write_atomically(
    out, classes: tuple[str, ...], counts: tuple[int, ...], size: int, write_one, workers=None
) -> Path:
    """Check the counts and size, then call ``write_one(tmp, class, index)`` for every image (threads) into a
    temporary folder beside ``out`` and rename it ``out`` at the end (files.publish_folder), so an interrupted run
    leaves nothing. ``out`` must not hold a dataset yet. Shared by every embedded set."""
    if len(counts) != len(classes) or min(counts) < 1:
        raise DataError(f"counts must be {len(classes)} positive numbers (for {', '.join(classes)}), not {counts}")
    if size < 32:
        raise DataError(f"size must be at least 32 pixels, not {size}")
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists and is not empty; choose a new folder or delete it first.")
    jobs = [(c, i) for c, n in zip(classes, counts, strict=True) for i in range(n)]
    with publish_folder(out) as tmp, ThreadPoolExecutor(max_workers=workers or (os.cpu_count() or 1)) as pool:
        list(pool.map(lambda job: write_one(tmp, *job), jobs))
    return out


def embedded_dataset(
    counts: tuple[int, ...] = DEFAULT_COUNTS, size: int = 224, seed: int = 0, cache_dir: str | Path | None = None
) -> Path:
    """The synthetic dataset for these parameters, generated once into the cache folder and reused."""
    name = f"synthetic-v{STYLE_VERSION}-{'-'.join(map(str, counts))}-{size}px-seed{seed}"
    return cached_set(name, ORIGINAL_DIR, lambda root: write_dataset(root, counts, size, seed), cache_dir)


def cached_set(name: str, marker: str, write, cache_dir: str | Path | None = None) -> Path:
    """``SWEEP_CACHE_DIR/synthetic/name``, written by ``write(root)`` the first time (``marker``: a folder that
    exists once it is written; several processes may race to write it: the first rename wins)."""
    from data_pipeline.cache import cache_folder, mark_used

    root = cache_folder("synthetic", cache_dir) / name
    if (root / marker).is_dir():
        mark_used(root)
    else:
        try:
            write(root)
        except DataError:
            if not (root / marker).is_dir():  # not another process winning the race: a real problem
                raise
    return root


def contact_sheet(root: str | Path, per_class: int = 4, tile: int = 112) -> np.ndarray:
    """A grid (one row per class) of originals with their mask outlines, each beside its mask, uint8 RGB."""
    from data_pipeline.io import resolve_mask_rule
    from data_pipeline.layout import scan
    from data_pipeline.sheet import contact_sheet as sheet

    index = scan(root, "segmentation")
    return sheet(index, resolve_mask_rule(index, "auto"), per_class, tile)
