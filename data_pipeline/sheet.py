"""A contact sheet: a few images per class as the model will see them (square, resized), with the outline of the mask
the loader made drawn on each, and that mask beside it, so a user sees what the mask rule did before training."""

from __future__ import annotations

import cv2
import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.io import BadImageError, read_mask, read_rgb, resize
from data_pipeline.layout import DatasetIndex

OUTLINE = (0, 255, 0)  # RGB: green reads on pink smears, dermoscopy, endoscopy and grey scans alike
MAX_ROWS = 12  # classes shown; a dataset with more shows the first ones
LABEL_WIDTH = 120


def _tiles(index: DatasetIndex, i: int, rule: str | None, tile: int) -> list[np.ndarray]:
    rgb = read_rgb(index.images[i])
    shown = resize(rgb, tile)
    if index.masks is None:
        return [shown]
    mask = resize(read_mask(index.masks[i], rule, rgb.shape[:2], index.images[i]), tile, nearest=True)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    outlined = shown.copy()
    cv2.drawContours(outlined, contours, -1, OUTLINE, 1)
    return [outlined, np.repeat(mask[..., None] * 255, 3, axis=2)]


def _label(text: str, height: int) -> np.ndarray:
    strip = np.full((height, LABEL_WIDTH, 3), 255, np.uint8)
    ascii_text = text.encode("ascii", "replace").decode()[:14]
    cv2.putText(strip, ascii_text, (4, height // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def contact_sheet(index: DatasetIndex, rule: str | None, per_class: int = 4, tile: int = 112) -> np.ndarray:
    """One row per class (up to MAX_ROWS), ``per_class`` images spread over the class, uint8 RGB.
    Segmentation: each image with its mask outline, then the mask itself (white = foreground)."""
    rows = []
    for label, name in list(enumerate(index.classes))[:MAX_ROWS]:
        members = [i for i, lab in enumerate(index.labels) if lab == label]
        picks = [members[k] for k in np.unique(np.linspace(0, len(members) - 1, per_class).round().astype(int))]
        tiles: list[np.ndarray] = []
        for i in picks:
            try:
                tiles += _tiles(index, i, rule, tile)
            except (BadImageError, DataError):
                continue  # unreadable or mismatched: listed by the check's problems
        width = per_class * (2 if index.masks is not None else 1)
        tiles += [np.full((tile, tile, 3), 128, np.uint8)] * (width - len(tiles))
        gaps = [t for pair in zip(tiles, [np.full((tile, 2, 3), 255, np.uint8)] * len(tiles)) for t in pair]
        rows.append(np.concatenate([_label(name, tile), *gaps], 1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], 0)
