"""From a mask file, whatever its encoding, to a binary foreground mask.

Every rule works on one *intensity* per pixel (uint8):
  - a grey mask: its grey level (16-bit files scaled to 8 bits, keeping every non-zero label non-zero);
  - a colour mask: its brightest channel, so an object kept in its own colours on black (a purple nucleus, a red
    lesion) counts whatever its hue;
  - an RGBA mask whose alpha varies: its alpha (objects painted opaque on a transparent background).

Rules (``data.mask_rule``):
  nonzero         intensity > 0: 0/1 and 0/255 masks, label images (every non-zero label is foreground)
  threshold:N     intensity > N (0 <= N <= 254): binary masks saved with JPEG noise or anti-aliased edges
  color_on_black  intensity > COLOR_TOLERANCE: objects in their own colours on black, saved lossy (Kaggle ALL)
  auto            nonzero or threshold:N, chosen once per dataset from a sample of its masks and whether they are
                  stored lossy (``decide``)
"""

from __future__ import annotations

import numpy as np

from data_pipeline.errors import DataError

RULES = ("auto", "nonzero", "threshold:N", "color_on_black")
COLOR_TOLERANCE = 32  # JPEG noise on a black background stays below this; dark nuclei stay above it
AUTO_SAMPLE = 64  # masks read (evenly spread over the dataset) to decide the rule


def rule_problem(rule: object) -> str | None:
    """Why ``rule`` is not a valid mask rule, or None."""
    if rule in ("auto", "nonzero", "color_on_black"):
        return None
    if isinstance(rule, str) and rule.startswith("threshold:"):
        level = rule.partition(":")[2]
        if level.isdigit() and 0 <= int(level) <= 254:
            return None
        return f"{rule!r}: the level N of threshold:N must be an integer in [0, 254]"
    return f"{rule!r} is not one of {', '.join(RULES)}"


def _level(rule: str) -> int:
    """The intensity a pixel must exceed to be foreground under a (non-auto) rule."""
    problem = rule_problem(rule)
    if problem or rule == "auto":
        raise DataError(f"mask rule {problem or 'auto must be decided first (decide)'}")
    if rule == "nonzero":
        return 0
    if rule == "color_on_black":
        return COLOR_TOLERANCE
    return int(rule.partition(":")[2])


def intensity(raw: np.ndarray) -> np.ndarray:
    """A decoded mask (cv2.IMREAD_UNCHANGED: grey, BGR or BGRA; 8 or 16 bit or float) as uint8 intensity, HxW."""
    if raw.ndim == 3 and raw.shape[2] == 4:
        alpha = raw[..., 3]
        raw = alpha if alpha.min() != alpha.max() else raw[..., :3]
    if raw.ndim == 3:
        raw = raw.max(axis=2)
    if raw.dtype == np.uint8:
        return raw
    if raw.dtype.kind == "f":
        scale = 255.0 if raw.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(raw) * scale, 0, 255).astype(np.uint8)
    raw = raw.astype(np.int64)
    if raw.max(initial=0) <= 255:  # a 16-bit label image with small labels
        return raw.astype(np.uint8)
    return np.maximum(raw >> 8, raw > 0).astype(np.uint8)  # 16-bit grey: keep every non-zero pixel non-zero


def binarize(value: np.ndarray, rule: str) -> np.ndarray:
    """uint8 {0, 1}: intensity above the rule's level."""
    return (value > _level(rule)).astype(np.uint8)


def decide(hist: np.ndarray, lossy: bool) -> str:
    """The rule for a dataset, from the histogram (256 bins) of its masks' intensities pooled over a sample, and
    whether any sampled mask file is stored lossy (JPEG).

    - Lossless files with at most 16 distinct levels: exact masks (0/1, 0/255, grey levels, label images):
      ``nonzero``. A JPEG never counts as exact: at high quality its ringing is a few levels (1, 2, 3 around every
      object) that ``nonzero`` would keep as a ring of foreground.
    - Lossy files: ``threshold:N`` at the ``_valley`` between the black and the objects. This one rule fits binary
      masks at any level (white, grey 128) and objects kept in their own colours: JPEG rings on both sides of an
      edge, below and above the object's level, and its chroma subsampling bleeds colour well above
      ``COLOR_TOLERANCE`` into the black at quality 50, so neither a fixed tolerance nor half the top level fits both.
    - Other lossless files: ``threshold`` at half the top level when at least 90% of the pixels above the colour
      tolerance are bright (>= 3/4 of the top level) and the faint ones (1 to the tolerance) are few beside them
      (at most a quarter): anti-aliased edges of a binary mask, a thin ramp around every object. Else ``nonzero``:
      label images with many labels (their low labels are whole objects, not a ramp: a label image of 40 objects is
      all "bright" above 32), objects in their own colours on a clean black.
    """
    hist = np.asarray(hist, dtype=np.int64)
    if hist[1:].sum() == 0 or (not lossy and np.count_nonzero(hist) <= 16):
        return "nonzero"
    if lossy:
        return f"threshold:{_valley(hist)}"
    above = hist[COLOR_TOLERANCE + 1 :]
    if above.sum() > 0:
        cumulative = np.cumsum(above)
        top = COLOR_TOLERANCE + 1 + int(np.searchsorted(cumulative, 0.99 * cumulative[-1]))
        bright = hist[(3 * top) // 4 :].sum()
        faint = hist[1 : COLOR_TOLERANCE + 1].sum()
        if bright >= 0.9 * above.sum() and faint <= 0.25 * bright:
            return f"threshold:{top // 2}"
    return "nonzero"


def _middle(levels: np.ndarray) -> int:
    """The middle one of tied levels: across an empty gap (a JPEG at high quality: nothing between its faint ringing
    and its objects) the first tie would sit on the ringing's edge; the middle leaves room to masks not sampled."""
    return int(levels[len(levels) // 2])


def _otsu(hist: np.ndarray) -> int:
    """Otsu's threshold of a 256-bin histogram: the level t that best splits it into <= t and > t (largest
    between-class variance), as skimage.filters.threshold_otsu(hist=...) computes it (not a dependency), except
    that a tie (t anywhere in an empty gap) takes the middle level, not the first."""
    p = np.asarray(hist, dtype=np.float64) / max(int(np.sum(hist)), 1)
    w0 = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.nan_to_num((mu[-1] * w0 - mu) ** 2 / (w0 * (1 - w0)), nan=-1.0, posinf=-1.0)
    return _middle(np.flatnonzero(between == between.max()))


VALLEY_SMOOTHING = 9  # levels averaged: JPEG histograms are spiky level to level; 9 of 256 keeps the valley's place


def _valley(hist: np.ndarray) -> int:
    """The least populated level (histogram smoothed over ``VALLEY_SMOOTHING`` levels) from 0 to Otsu's threshold:
    where the lossy black's noise has faded and the objects have not yet begun. Otsu alone splits two peaks (a
    binary mask's black and its object level) well, but lands inside objects whose colours spread over a range; its
    valley below it sits under the darkest object colours and above the ringing.
    """
    smooth = np.convolve(np.asarray(hist, dtype=np.float64), np.ones(VALLEY_SMOOTHING) / VALLEY_SMOOTHING, "same")
    below = smooth[: _otsu(hist) + 1]
    return _middle(np.flatnonzero(below == below.min()))


def foreground_by_rule(hist: np.ndarray, rules: list[str]) -> dict[str, float]:
    """The fraction of the histogram's pixels each (non-auto) rule makes foreground, in the order given."""
    hist = np.asarray(hist, dtype=np.int64)
    total = max(int(hist.sum()), 1)
    return {rule: int(hist[_level(rule) + 1 :].sum()) / total for rule in dict.fromkeys(rules)}


def histogram(value: np.ndarray) -> np.ndarray:
    """256-bin histogram of a uint8 intensity image (to pool over masks for ``decide``)."""
    return np.bincount(value.ravel(), minlength=256)
