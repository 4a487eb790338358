"""Image preprocessing steps applied where images are decoded (``data.preprocess``), before resizing.

A pipeline is an ordered list of steps, each a bare name (its defaults) or ``{name: {param: value}}``:

  crop              the brain's (or any object's) bounding box: threshold the image (``mode: hard``, Otsu's global
                    threshold, for evenly lit images; ``mode: soft``, adaptive thresholding, for uneven lighting),
                    take the largest outer contour, pad its box by ``padding`` (a fraction of the box side) and cut
                    the image and its mask alike. An image without any contour is left as it is.
  clean_background  near-white pixels (grey level >= ``level``) connected to the image border become black, and
                    so do their neighbours within ``dilate`` pixels (anti-aliased outlines): white backgrounds and
                    white frames around a black background (seed 003's images 44 and 145). Bright tissue inside
                    the object is not touched, because it does not reach the border through near-white pixels.
  musica            MUSICA multiscale contrast amplification of the luminance: a Laplacian pyramid of ``levels``
                    detail levels (cv2.pyrDown/pyrUp), each detail d amplified as
                    d + (a - 1) · M · sign(d) · (|d| / M)^p, with M the level's largest |d| and a the
                    ``amplification`` (one number, or one per level, finest first), then reconstructed; the change of
                    luminance is added to every channel and the result clipped to the input's range.
                    ``amplification: 1`` is the identity; above 1 the details grow, and ``p`` < 1 lifts faint
                    details more than strong ones (Vuylsteke & Schoeters' power law).
  grayscale         RGB to its luminance, repeated on 3 channels (greyscale files always load as 3 channels;
                    this makes colour-annotated scans grey too, for ImageNet-style 3-channel backbones).

Each step maps (uint8 RGB image HxWx3, mask HxW or None) to the same; only ``crop`` changes the shape. Nothing is
written anywhere: the steps run on decoded arrays, and their parameters are part of the decode cache key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

CROP_MODES = ("hard", "soft")


@dataclass(frozen=True)
class _Step:
    fn: Callable[..., tuple[np.ndarray, np.ndarray | None]]
    defaults: dict[str, Any]
    checks: dict[str, tuple[Callable[[Any], bool], str]]  # param -> (is valid, allowed values in words)


def _number(lo: float, hi: float | None = None, *, low_open: bool = False):
    def ok(x: Any) -> bool:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return False
        return (x > lo if low_open else x >= lo) and (hi is None or x <= hi)

    return ok


def _int(lo: int, hi: int):
    return lambda x: isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


# ---------------------------------------------------------------------------------------------------------------
# crop
# ---------------------------------------------------------------------------------------------------------------


def _grey(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def foreground(image: np.ndarray, mode: str = "hard") -> np.ndarray:
    """The thresholded object (uint8 {0, 255}) that ``crop`` takes the largest contour of."""
    import cv2

    grey = _grey(image)
    side = min(grey.shape)
    if mode == "hard":  # blur, then Otsu's global threshold
        blurred = cv2.GaussianBlur(grey, (5, 5), 0)
        _, binary = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return binary
    # soft: less blur, then a local threshold (a pixel clearly above its neighbourhood's mean), edges closed up
    blurred = cv2.GaussianBlur(grey, (3, 3), 0)
    block = max(3, (side // 8) | 1)
    binary = cv2.adaptiveThreshold(blurred, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, -5)
    return cv2.morphologyEx(binary, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))


def bounding_box(image: np.ndarray, mode: str = "hard", padding: float = 0.05) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the largest outer contour's box, padded by ``padding`` × its longer side and kept inside
    the image; None when the threshold finds nothing."""
    import cv2

    contours, _ = cv2.findContours(foreground(image, mode), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    pad = round(padding * max(w, h))
    height, width = image.shape[:2]
    return max(0, x - pad), max(0, y - pad), min(width, x + w + pad), min(height, y + h + pad)


def crop(image: np.ndarray, mask: np.ndarray | None = None, *, mode: str = "hard", padding: float = 0.05):
    box = bounding_box(image, mode, padding)
    if box is None:
        return image, mask
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1].copy(), None if mask is None else mask[y0:y1, x0:x1].copy()


# ---------------------------------------------------------------------------------------------------------------
# clean_background
# ---------------------------------------------------------------------------------------------------------------


def background_mask(image: np.ndarray, level: int = 220, dilate: int = 1) -> np.ndarray:
    """bool HxW: the near-white regions that touch the image border, grown by ``dilate`` pixels."""
    import cv2

    near_white = (_grey(image) >= level).astype(np.uint8)
    _, labels = cv2.connectedComponents(near_white, connectivity=8)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[border > 0]  # label 0 is everything that is not near-white
    out = np.isin(labels, border).astype(np.uint8)
    if dilate:
        out = cv2.dilate(out, np.ones((3, 3), np.uint8), iterations=dilate)
    return out.astype(bool)


def clean_background(image: np.ndarray, mask: np.ndarray | None = None, *, level: int = 220, dilate: int = 1):
    out = image.copy()
    out[background_mask(image, level, dilate)] = 0
    return out, mask


# ---------------------------------------------------------------------------------------------------------------
# musica
# ---------------------------------------------------------------------------------------------------------------


def laplacian_pyramid(grey: np.ndarray, levels: int) -> list[np.ndarray]:
    """[detail_0 (finest), ..., detail_{levels-1}, residual], float32; ``reconstruct`` inverts it exactly."""
    import cv2

    current = grey.astype(np.float32)
    out = []
    for _ in range(levels):
        down = cv2.pyrDown(current)
        up = cv2.pyrUp(down, dstsize=(current.shape[1], current.shape[0]))
        out.append(current - up)
        current = down
    return [*out, current]


def reconstruct(pyramid: list[np.ndarray]) -> np.ndarray:
    import cv2

    current = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        current = cv2.pyrUp(current, dstsize=(detail.shape[1], detail.shape[0])) + detail
    return current


def max_levels(shape: tuple[int, ...]) -> int:
    """The deepest pyramid an image of this shape allows (its coarsest level at least 2 pixels on a side)."""
    return max(1, int(np.log2(max(2, min(shape[:2])))) - 1)


def amplify(detail: np.ndarray, amplification: float, p: float) -> np.ndarray:
    """MUSICA's power law on one detail level: d + (a - 1) · M · sign(d) · (|d| / M)^p."""
    top = float(np.abs(detail).max())
    if top == 0 or amplification == 1:
        return detail
    return detail + (amplification - 1) * top * np.sign(detail) * (np.abs(detail) / top) ** p


def musica(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    levels: int = 4,
    amplification: float | list[float] = 1.5,
    p: float = 0.7,
):
    gains = list(amplification) if isinstance(amplification, (list, tuple)) else [amplification] * levels
    rgb = image.astype(np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)  # a grey image's luminance is its grey level
    pyramid = laplacian_pyramid(luma, min(levels, max_levels(luma.shape)))
    pyramid = [amplify(d, gains[i], p) for i, d in enumerate(pyramid[:-1])] + [pyramid[-1]]
    # The luminance change is added to every channel: grey stays grey, colours keep their hue.
    out = rgb + (reconstruct(pyramid) - luma)[..., None]
    return np.clip(np.rint(out), int(image.min()), int(image.max())).astype(np.uint8), mask


# ---------------------------------------------------------------------------------------------------------------
# grayscale
# ---------------------------------------------------------------------------------------------------------------


def grayscale(image: np.ndarray, mask: np.ndarray | None = None):
    return np.repeat(_grey(image)[..., None], 3, axis=2), mask


# ---------------------------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------------------------


def _gains_ok(x: Any) -> bool:
    values = x if isinstance(x, (list, tuple)) else [x]
    return len(values) > 0 and all(_number(1.0)(v) for v in values)


STEPS: dict[str, _Step] = {
    "crop": _Step(
        crop,
        {"mode": "hard", "padding": 0.05},
        {"mode": (lambda x: x in CROP_MODES, f"one of {', '.join(CROP_MODES)}"), "padding": (_number(0, 1), "0 to 1")},
    ),
    "clean_background": _Step(
        clean_background,
        {"level": 220, "dilate": 1},
        {"level": (_int(1, 255), "an integer in [1, 255]"), "dilate": (_int(0, 10), "an integer in [0, 10]")},
    ),
    "musica": _Step(
        musica,
        {"levels": 4, "amplification": 1.5, "p": 0.7},
        {
            "levels": (_int(1, 8), "an integer in [1, 8]"),
            "amplification": (_gains_ok, "a number >= 1, or a list of them (one per level, finest first)"),
            "p": (_number(0, 1, low_open=True), "a number in (0, 1]"),
        },
    ),
    "grayscale": _Step(grayscale, {}, {}),
}


def _name_and_params(entry: Any) -> tuple[str | None, Any]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        ((name, params),) = entry.items()
        return name, {} if params is None else params
    return None, None


def problems(steps: Any, where: str = "preprocess") -> list[str]:
    """Every problem of a step list, as 'where[i]: what is wrong (allowed values)'."""
    if not isinstance(steps, (list, tuple)):
        return [f"{where}: must be a list of steps (names among {', '.join(STEPS)}), got {steps!r}"]
    out = []
    for i, entry in enumerate(steps):
        name, params = _name_and_params(entry)
        if name is None:
            out.append(f"{where}[{i}]: {entry!r} must be a step name or {{name: {{param: value}}}}")
            continue
        step = STEPS.get(name)
        if step is None:
            out.append(f"{where}[{i}]: {name!r} is not one of {', '.join(STEPS)}")
            continue
        if not isinstance(params, dict):
            out.append(f"{where}[{i}].{name}: parameters must be a mapping, got {params!r}")
            continue
        for key, value in params.items():
            if key not in step.defaults:
                allowed = ", ".join(step.defaults) or "none"
                out.append(f"{where}[{i}].{name}.{key}: unknown parameter; allowed: {allowed}")
            elif not step.checks[key][0](value):
                out.append(f"{where}[{i}].{name}.{key}: {value!r} must be {step.checks[key][1]}")
        if name == "musica":
            gains, levels = params.get("amplification"), params.get("levels", step.defaults["levels"])
            if isinstance(gains, (list, tuple)) and len(gains) != levels:
                out.append(f"{where}[{i}].musica.amplification: {len(gains)} values for {levels} levels")
    return out


def resolve(steps: Any) -> tuple[dict[str, dict[str, Any]], ...]:
    """Each step as ``{name: params}`` with every parameter written out (defaults filled in): what the cache key and
    provenance hold. Resolving a resolved list gives it back."""
    bad = problems(steps)
    if bad:
        raise ValueError("; ".join(bad))
    return tuple({name: {**STEPS[name].defaults, **params}} for name, params in map(_name_and_params, steps))


def apply(steps: Any, image: np.ndarray, mask: np.ndarray | None = None):
    """Run the steps in order on one image (uint8 RGB) and its mask: (image, mask)."""
    for step in resolve(steps):
        ((name, params),) = step.items()
        image, mask = STEPS[name].fn(image, mask, **params)
    return image, mask
