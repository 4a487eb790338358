"""Losses and training-time metrics, backend-agnostic (``keras.ops`` only).

Segmentation metrics, precisely (y = ground-truth mask in {0, 1}, p = predicted probability, ŷ = [p >= 0.5]):
  dice, iou           dataset-level on thresholded predictions: TP, FP, FN summed over every pixel of every image
                      of the split, then dice = 2TP / (2TP + FP + FN), iou = TP / (TP + FP + FN).
  study_dice          the study's definition: (2 Σ y·p + 1) / (Σ y + Σ p + 1) over the flattened batch, on soft
                      probabilities (smoothing 1); averaged over batches by Keras.
  study_iou           the study's definition: mean over images of (Σ y·p + 1) / (Σ y + Σ p − Σ y·p + 1), soft.
Per-image means of thresholded dice/iou are computed at evaluation time (``models.evaluation``).
"""

from __future__ import annotations

import keras
from keras import ops

from models.tasks import task_info


@keras.saving.register_keras_serializable(package="leukemia_sweep")
def study_dice(y_true, y_pred, smooth: float = 1.0):
    """The study's Dice: soft, over the flattened batch, smoothing 1."""
    y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
    y_pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
    inter = ops.sum(y_true * y_pred)
    return (2.0 * inter + smooth) / (ops.sum(y_true) + ops.sum(y_pred) + smooth)


@keras.saving.register_keras_serializable(package="leukemia_sweep")
def study_iou(y_true, y_pred, smooth: float = 1.0):
    """The study's IoU: soft, per image with smoothing 1, averaged over the images of the batch."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    axes = tuple(range(1, len(y_pred.shape)))
    inter = ops.sum(y_true * y_pred, axis=axes)
    union = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes) - inter
    return ops.mean((inter + smooth) / (union + smooth))


@keras.saving.register_keras_serializable(package="leukemia_sweep")
def dice_loss(y_true, y_pred):
    """1 − the study's soft Dice."""
    return 1.0 - study_dice(y_true, y_pred)


@keras.saving.register_keras_serializable(package="leukemia_sweep")
def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy + Dice loss."""
    bce = ops.mean(keras.losses.binary_crossentropy(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")))
    return bce + dice_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="leukemia_sweep")
class PixelScore(keras.metrics.Metric):
    """Dataset-level Dice or IoU on thresholded predictions: TP/FP/FN accumulate over every batch of the epoch."""

    def __init__(self, kind: str = "dice", threshold: float = 0.5, name: str | None = None, **kwargs):
        if kind not in ("dice", "iou"):
            raise ValueError(f"kind must be 'dice' or 'iou', not {kind!r}")
        super().__init__(name=name or kind, **kwargs)
        self.kind, self.threshold = kind, threshold
        self.tp = self.add_variable(shape=(), initializer="zeros", name="tp")
        self.fp = self.add_variable(shape=(), initializer="zeros", name="fp")
        self.fn = self.add_variable(shape=(), initializer="zeros", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        y_hat = ops.cast(ops.greater_equal(ops.cast(y_pred, "float32"), self.threshold), "float32")
        self.tp.assign_add(ops.sum(y_true * y_hat))
        self.fp.assign_add(ops.sum((1.0 - y_true) * y_hat))
        self.fn.assign_add(ops.sum(y_true * (1.0 - y_hat)))

    def result(self):
        if self.kind == "dice":
            num, den = 2.0 * self.tp, 2.0 * self.tp + self.fp + self.fn
        else:
            num, den = self.tp, self.tp + self.fp + self.fn
        return ops.where(den > 0, num / ops.maximum(den, 1.0), 1.0)

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn):
            v.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "threshold": self.threshold}


def get_loss(name: str):
    """A loss by study-spec name. ``categorical_crossentropy`` takes integer labels (sparse form, same value);
    ``bce`` is ``binary_crossentropy``; ``focal`` is Keras' binary focal cross-entropy (gamma 2, no class
    balancing), which down-weights the many easy background pixels."""
    losses = {
        "categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy(name="categorical_crossentropy"),
        "binary_crossentropy": keras.losses.BinaryCrossentropy(name="binary_crossentropy"),
        "bce": keras.losses.BinaryCrossentropy(name="bce"),
        "focal": keras.losses.BinaryFocalCrossentropy(name="focal"),
        "dice": dice_loss,
        "bce_dice": bce_dice_loss,
    }
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}; one of {', '.join(losses)}")
    return losses[name]


# Metrics a task's models compile (``TaskInfo.training_metrics``), by name; each reported per epoch under its name.
METRICS = {
    "sparse_categorical_accuracy": lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
    "binary_accuracy": lambda: keras.metrics.BinaryAccuracy(name="accuracy"),
    "precision": lambda: keras.metrics.Precision(name="precision"),
    "recall": lambda: keras.metrics.Recall(name="recall"),
    "dice": lambda: PixelScore("dice"),
    "iou": lambda: PixelScore("iou"),
    "study_dice": lambda: keras.metrics.MeanMetricWrapper(study_dice, name="study_dice"),
    "study_iou": lambda: keras.metrics.MeanMetricWrapper(study_iou, name="study_iou"),
}


def training_metrics(task: str) -> list:
    """The metrics compiled into a model of this task (reported per epoch for train and validation)."""
    return [METRICS[name]() for name in task_info(task).training_metrics]
