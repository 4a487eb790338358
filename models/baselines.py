"""Classical segmentation baselines: no training, a few parameters fitted on the training split, evaluated by the
same code as the deep models (``models.evaluation.segmentation_report`` on their masks), so a table shows what the
deep models add.

  hsv_threshold  the leukemia study's "traditional approach": keep the pixels inside an HSV window (OpenCV: H in
                 [0, 180)), then a 3×3 opening. The window per channel is the [q, 100 - q] percentile range of the
                 training split's foreground pixels, q chosen among QUANTILES for the best training Dice.
  kmeans         seed 003's K-means on intensity: k chosen by the silhouette score over K_RANGE on training
                 pixels (seed 003 scans 2 to 20 with WCSS, BCSS and silhouette), one K-means fitted on the training
                 split's grey levels, and every pixel of a new image given its nearest centre; the brightest
                 cluster is the tumour. Masks are not used to fit (unsupervised).

Each baseline: ``fit(name, images, masks) -> params`` (a JSON-ready dict), ``predict(name, params, images) -> masks``
(uint8 {0, 1}, N×H×W). Images are uint8 RGB N×H×W×3, masks N×H×W.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

QUANTILES = (0.0, 0.5, 1.0, 2.5, 5.0, 10.0)
K_RANGE = (2, 8)  # inclusive
_PIXELS = 20_000  # training pixels sampled for K-means and the silhouette score


def _dice(masks: np.ndarray, predicted: np.ndarray) -> float:
    tp = float((masks * predicted).sum())
    den = float(masks.sum() + predicted.sum())
    return 2 * tp / den if den else 1.0


def _hsv(images: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(img, cv2.COLOR_RGB2HSV) for img in images])


def _hsv_masks(hsv: np.ndarray, low, high) -> np.ndarray:
    kernel = np.ones((3, 3), np.uint8)
    low, high = np.asarray(low, np.uint8), np.asarray(high, np.uint8)
    return np.stack([cv2.morphologyEx(cv2.inRange(x, low, high), cv2.MORPH_OPEN, kernel) > 0 for x in hsv]).astype(
        np.uint8
    )


def _fit_hsv(images: np.ndarray, masks: np.ndarray) -> dict:
    hsv = _hsv(images)
    fg = hsv[masks.astype(bool)]
    if len(fg) == 0:
        raise ValueError("hsv_threshold needs training masks with some foreground")
    best = None
    for q in QUANTILES:
        low = np.percentile(fg, q, axis=0).round().astype(int).tolist()
        high = np.percentile(fg, 100 - q, axis=0).round().astype(int).tolist()
        score = _dice(masks, _hsv_masks(hsv, low, high))
        if best is None or score > best["train_dice"]:
            best = {"low": low, "high": high, "quantile": q, "train_dice": score}
    return best


def _predict_hsv(params: dict, images: np.ndarray) -> np.ndarray:
    return _hsv_masks(_hsv(images), params["low"], params["high"])


def _grey(images: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) for img in images]).astype(np.float32)


def _fit_kmeans(images: np.ndarray, masks: np.ndarray | None = None, seed: int = 0) -> dict:
    del masks  # unsupervised
    pixels = _grey(images).reshape(-1, 1)
    rng = np.random.default_rng(seed)
    sample = pixels[rng.choice(len(pixels), min(_PIXELS, len(pixels)), replace=False)]
    silhouettes = {}
    for k in range(K_RANGE[0], K_RANGE[1] + 1):
        if len(np.unique(sample)) < k:
            break
        labels = KMeans(k, n_init=3, random_state=seed).fit_predict(sample)
        silhouettes[k] = float(silhouette_score(sample, labels, sample_size=min(4000, len(sample)), random_state=seed))
    k = max(silhouettes, key=silhouettes.get)
    centres = np.sort(KMeans(k, n_init=5, random_state=seed).fit(sample).cluster_centers_.ravel())
    return {"k": k, "centres": centres.tolist(), "silhouette": silhouettes}


def _predict_kmeans(params: dict, images: np.ndarray) -> np.ndarray:
    centres = np.asarray(params["centres"], np.float32)
    grey = _grey(images)
    nearest = np.abs(grey[..., None] - centres).argmin(-1)
    return (nearest == len(centres) - 1).astype(np.uint8)  # centres sorted: the last is the brightest


@dataclass(frozen=True)
class Baseline:
    name: str
    fit: Callable[..., dict]
    predict: Callable[[dict, np.ndarray], np.ndarray]
    description: str


BASELINES = {
    b.name: b
    for b in (
        Baseline("hsv_threshold", _fit_hsv, _predict_hsv, "HSV window from the training foreground's percentiles"),
        Baseline("kmeans", _fit_kmeans, _predict_kmeans, "K-means on grey levels, k by silhouette, brightest cluster"),
    )
}


def _get(name: str) -> Baseline:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; one of {', '.join(BASELINES)}")
    return BASELINES[name]


def fit(name: str, images: np.ndarray, masks: np.ndarray) -> dict:
    """The baseline's parameters, chosen on these (training) images and masks."""
    return _get(name).fit(np.asarray(images), np.asarray(masks))


def predict(name: str, params: dict, images: np.ndarray) -> np.ndarray:
    """Binary masks (uint8 {0, 1}, N×H×W) for uint8 RGB images."""
    return _get(name).predict(params, np.asarray(images))
