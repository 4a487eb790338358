"""Final evaluation on a split: pure functions over label/mask arrays and predicted probabilities.

Classification (scikit-learn): accuracy; macro precision, recall and F1 (unweighted mean over classes, a class
never predicted scores 0); the per-class report; the confusion matrix (rows = actual, columns = predicted);
one-vs-rest ROC AUC per class and its macro mean; mean categorical cross-entropy.

Segmentation: see ``models.metrics`` for dice/iou/study_dice/study_iou. Also pixel accuracy, precision and recall
(dataset-level, thresholded at 0.5), per-image means of thresholded dice and iou (an image whose mask and
prediction are both empty scores 1), and mean binary cross-entropy. ``boundary_f1``: the per-image mean of the
boundary F1 score (outlines matched within BOUNDARY_TOLERANCE pixels). ``dice_multi_region``: the per-image mean
Dice over the images whose true mask has two or more regions (8-connected components; NaN when none has), and
``multi_region_images`` how many those are.

Binary classification (``binary_report``): for a named positive class, ROC AUC, sensitivity, specificity,
precision and F1 at 0.5, and at the operating threshold chosen on validation by Youden's J.
"""

from __future__ import annotations

import cv2
import numpy as np
from sklearn import metrics as skm

from models.stats import ece
from models.tasks import task_info

_EPS = 1e-7
BOUNDARY_TOLERANCE = 2  # pixels


def classification_report(y_true: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...]) -> dict:
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    labels = list(range(len(class_names)))
    y_pred = probs.argmax(1)
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = np.unique(y_true)
    auc = {}
    for k in labels:
        positives = y_true == k
        auc[class_names[k]] = (
            float(skm.roc_auc_score(positives, probs[:, k])) if 0 < positives.sum() < len(y_true) else float("nan")
        )
    finite_auc = [v for v in auc.values() if np.isfinite(v)]
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(p[present].mean() if len(present) == len(labels) else p.mean()),
        "recall": float(r.mean()),
        "f1": float(f.mean()),
        "loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], _EPS, 1.0)))),
        "roc_auc": float(np.mean(finite_auc)) if finite_auc else float("nan"),
        "ece": ece(probs, y_true),
        "per_class": {
            c: {
                "precision": float(p[k]),
                "recall": float(r[k]),
                "f1": float(f[k]),
                "support": int(s[k]),
                "roc_auc": auc[c],
            }
            for k, c in enumerate(class_names)
        },
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    return np.where(den > 0, num / np.maximum(den, 1), empty)


def _counts(y: np.ndarray, y_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image (rows of flattened masks): true positives, false positives, false negatives."""
    return (y * y_hat).sum(1), ((1 - y) * y_hat).sum(1), (y * (1 - y_hat)).sum(1)


def per_image_dice(masks: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Thresholded Dice of each image (1 when its mask and prediction are both empty): the paired comparisons'
    unit."""
    y = np.asarray(masks, dtype=np.float64).reshape(len(masks), -1)
    tp, fp, fn = _counts(y, (np.asarray(probs, dtype=np.float64).reshape(len(masks), -1) >= threshold).astype(float))
    return _ratio(2 * tp, 2 * tp + fp + fn, 1.0).astype(np.float32)


def segmentation_report(masks: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
    y = np.asarray(masks, dtype=np.float64).reshape(len(masks), -1)
    p = np.asarray(probs, dtype=np.float64).reshape(len(masks), -1)
    y_hat = (p >= threshold).astype(np.float64)
    tp_i, fp_i, fn_i = _counts(y, y_hat)
    tp, fp, fn = tp_i.sum(), fp_i.sum(), fn_i.sum()
    soft_inter_i = (y * p).sum(1)
    pc = np.clip(p, _EPS, 1 - _EPS)
    return {
        "accuracy": float((y == y_hat).mean()),
        "precision": float(_ratio(tp, tp + fp, 0.0)),
        "recall": float(_ratio(tp, tp + fn, 0.0)),
        "dice": float(_ratio(2 * tp, 2 * tp + fp + fn, 1.0)),
        "iou": float(_ratio(tp, tp + fp + fn, 1.0)),
        "dice_per_image": float(per_image_dice(masks, probs, threshold).mean()),
        "iou_per_image": float(_ratio(tp_i, tp_i + fp_i + fn_i, 1.0).mean()),
        "study_dice": float((2 * soft_inter_i.sum() + 1) / (y.sum() + p.sum() + 1)),
        "study_iou": float(((soft_inter_i + 1) / (y.sum(1) + p.sum(1) - soft_inter_i + 1)).mean()),
        "loss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
        "foreground_fraction": float(y.mean()),  # an all-background mask scores accuracy 1 - this, Dice and IoU 0
        "boundary_f1": float(boundary_f1(masks, probs >= threshold).mean()),
        **multi_region_dice(masks, probs, threshold),
    }


def _outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels: in the mask, with a neighbour (8-connected) outside it."""
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8))).astype(bool)


def _matched(outline: np.ndarray, other: np.ndarray, tolerance: float) -> int:
    """How many pixels of ``outline`` lie within ``tolerance`` (Euclidean) of a pixel of ``other``."""
    if not other.any():
        return 0
    distance = cv2.distanceTransform((~other).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return int((distance[outline] <= tolerance).sum())


def boundary_f1(masks: np.ndarray, predicted: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> np.ndarray:
    """Per image: the boundary F1 score (Csurka et al. 2013). Precision = the share of the predicted outline
    within ``tolerance`` pixels of the true outline, recall = the share of the true outline within ``tolerance`` of
    the predicted one. 1 when both masks are empty, 0 when exactly one is."""
    out = np.empty(len(masks), np.float64)
    for i, (y, p) in enumerate(zip(np.asarray(masks) > 0, np.asarray(predicted) > 0, strict=True)):
        ty, tp = _outline(y), _outline(p)
        if not ty.any() and not tp.any():
            out[i] = 1.0
            continue
        precision = _matched(tp, ty, tolerance) / max(tp.sum(), 1)
        recall = _matched(ty, tp, tolerance) / max(ty.sum(), 1)
        out[i] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return out


def regions(mask: np.ndarray) -> int:
    """The number of separate regions (8-connected components) of a binary mask."""
    return cv2.connectedComponents((np.asarray(mask) > 0).astype(np.uint8), connectivity=8)[0] - 1


def multi_region_dice(masks: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
    """Per-image mean Dice over the images whose true mask has two or more regions, and how many there are."""
    multi = np.asarray([regions(m) >= 2 for m in masks], bool)
    if not multi.any():
        return {"dice_multi_region": float("nan"), "multi_region_images": 0}
    dice = per_image_dice(np.asarray(masks)[multi], np.asarray(probs)[multi], threshold)
    return {"dice_multi_region": float(dice.mean()), "multi_region_images": int(multi.sum())}


def _scores(probs: np.ndarray, positive: int) -> np.ndarray:
    """The positive class's probability: ``probs`` itself (n,), or its column of (n, classes)."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs[:, positive] if probs.ndim == 2 else probs


def binary_metrics(labels: np.ndarray, probs: np.ndarray, positive: int = 1, threshold: float = 0.5) -> dict:
    """Sensitivity (recall of the positive class), specificity, precision, F1 and accuracy when an image is called
    positive at probability >= ``threshold``; ROC AUC (threshold-free; NaN with one class only)."""
    y = np.asarray(labels) == positive
    s = _scores(probs, positive)
    hat = s >= threshold
    tp, fp = int((y & hat).sum()), int((~y & hat).sum())
    fn, tn = int((y & ~hat).sum()), int((~y & ~hat).sum())
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    precision = tp / (tp + fp) if tp + fp else 0.0
    return {
        "threshold": float(threshold),
        "roc_auc": float(skm.roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan"),
        "sensitivity": float(sensitivity),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "precision": float(precision),
        "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0,
        "accuracy": float((tp + tn) / len(y)) if len(y) else float("nan"),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def youden_threshold(labels: np.ndarray, probs: np.ndarray, positive: int = 1) -> float:
    """The probability threshold that maximises Youden's J = sensitivity + specificity - 1 on these (validation)
    predictions; of tied thresholds the highest. 0.5 when the labels hold one class only."""
    y = np.asarray(labels) == positive
    if not 0 < y.sum() < len(y):
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(y, _scores(probs, positive), drop_intermediate=False)
    finite = np.isfinite(thresholds)  # the first is +inf (nothing called positive)
    j = (tpr - fpr)[finite]
    return float(thresholds[finite][int(np.argmax(j))])


def binary_report(
    val_labels: np.ndarray,
    val_probs: np.ndarray,
    test_labels: np.ndarray,
    test_probs: np.ndarray,
    positive: int = 1,
    positive_name: str | None = None,
) -> dict:
    """Test metrics for the positive class at 0.5 and at the threshold Youden's J picks on validation."""
    t = youden_threshold(val_labels, val_probs, positive)
    return {
        "positive_class": positive_name if positive_name is not None else positive,
        **binary_metrics(test_labels, test_probs, positive),
        "youden_threshold": t,
        "at_youden": binary_metrics(test_labels, test_probs, positive, t),
    }


def tta_transforms(height: int, width: int) -> list[tuple[int, bool]]:
    """Test-time augmentation as (quarter turns, then horizontal flip): the 4 flips of any image, and all 8
    symmetries of the square (90° rotations too) when it is square. The first is the identity."""
    turns = (0, 1, 2, 3) if height == width else (0, 2)
    return [(k, flip) for k in turns for flip in (False, True)]


def _transform(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    x = np.rot90(x, k, axes=(1, 2))
    return np.ascontiguousarray(x[:, :, ::-1] if flip else x)


def _untransform(y: np.ndarray, k: int, flip: bool) -> np.ndarray:
    y = y[:, :, ::-1] if flip else y
    return np.rot90(y, -k, axes=(1, 2))


def predict(model, images: np.ndarray, batch_size: int = 32, tta: bool = False) -> np.ndarray:
    """The model's output for uint8 RGB images, batch by batch. With ``tta``, the mean of its outputs over
    ``tta_transforms`` (masks turned back first), before any threshold."""
    if not tta:
        return _predict_once(model, images, batch_size)
    outs = []
    for k, flip in tta_transforms(*images.shape[1:3]):
        out = _predict_once(model, _transform(images, k, flip), batch_size)
        outs.append(_untransform(out, k, flip) if out.ndim == 4 else out)  # a mask follows its image back
    return np.mean(outs, axis=0).astype(np.float32)


def _predict_once(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Eager calls: for a single pass over a split they cost less than tracing a predict function used once. A model
    that answers with NumPy arrays (``search.outputs.deploy.OnnxModel``) never imports Keras here."""
    outs = []
    for i in range(0, len(images), batch_size):
        out = model(images[i : i + batch_size].astype("float32"), training=False)
        if not isinstance(out, np.ndarray):  # a backend tensor
            import keras

            out = keras.ops.convert_to_numpy(out)
        outs.append(out)
    return np.concatenate(outs).astype(np.float32)


def report_from_probs(split, probs: np.ndarray, task: str, class_names: tuple[str, ...]) -> dict:
    """The classification or segmentation report of predicted probabilities on one split."""
    if task_info(task).masks:
        return segmentation_report(split.masks, probs[..., 0], task_info(task).threshold)
    return classification_report(split.labels, probs, class_names)
