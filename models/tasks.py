"""One table of facts about each task, as the registry holds facts about each model.

A study, a trial, a results table, a report, an export, the server and the CLI ask this table for a task's facts:
its selection metric, losses, training metrics, what its targets and outputs are, what a study may search over, its
headline test metrics and report columns, and what the study's own tables call them. No code outside it compares a
task's name: a new task or metric is one entry here (and, for a new kind of output, its decoding where outputs are
read: ``models.evaluation.report_from_probs``, ``search.outputs.export.predict_arrays``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TaskInfo:
    name: str
    metric: str  # the validation metric ASHA ranks trials by and the best trial is chosen by (never a test one)
    mode: str  # "max" or "min" for ``metric``
    losses: tuple[str, ...]  # loss names a study may give (models.metrics.get_loss)
    default_loss: str
    headline: tuple[str, ...]  # test metrics (without the ``test_`` prefix) a summary shows, the first foremost
    report_columns: tuple[tuple[str, str], ...]  # the study's table columns, in its order: (heading, results column)
    output: str  # what a model of this task outputs, in words (export manifests, the served model's page)
    target: str  # what it predicts, in words for a reader (the model card)
    masks: bool  # targets and outputs are per-pixel masks (one sigmoid channel), not a label per image
    class_scores: bool  # outputs a probability per class: calibration, Grad-CAM, binary metrics, paired tests
    fine_tunes: bool  # its models may unfreeze a pretrained backbone after the head has trained (train.fine_tune_*)
    min_classes: int  # the classes a dataset of this task needs
    axes: tuple[str, ...]  # what a study may search over; those in ``train_axes`` are train settings
    train_axes: tuple[str, ...]  # train settings a trial's value overrides (spec.Train)
    training_metrics: tuple[str, ...]  # compiled into its models, reported per epoch (models.metrics.METRICS)
    threshold: float | None  # a mask output is foreground at this probability; None: no threshold
    study_table: str  # the study's published table of this task (search/outputs/report/reference/)
    study_headline: str  # the column of that table the study picked its best by
    study_columns: tuple[tuple[str, str, float], ...]  # ours, the study's, its scale to a fraction
    no_skill: Callable[[Mapping[str, Any]], dict[str, float]]  # the test split's summary -> a no-skill model's metrics
    no_skill_name: str  # that model, in words

    def num_outputs(self, classes: int) -> int:
        """Output channels of a model of this task for a dataset of ``classes`` classes."""
        return 1 if self.masks else classes

    @property
    def metric_name(self) -> str:
        """The selection metric without its split prefix: ``accuracy`` for ``val_accuracy``."""
        return self.metric.split("_", 1)[1]


def _most_frequent_class(test: Mapping[str, Any]) -> dict[str, float]:
    """A model that learned nothing answers the most frequent class: its accuracy; macro F1 = F1 of that class over
    the number of classes."""
    majority = max(test["per_class"]) / sum(test["per_class"])
    return {"accuracy": majority, "f1": 2 * majority / (1 + majority) / len(test["per_class"])}


def _all_background(test: Mapping[str, Any]) -> dict[str, float]:
    """A model that learned nothing answers an empty mask: Dice and IoU 0, pixel accuracy the background's share."""
    return {"dice": 0.0, "iou": 0.0, "accuracy": 1.0 - test["foreground_fraction"]}


_COMMON_TRAIN_AXES = ("optimizer", "weight_decay", "lr_schedule", "batch_size")
_CLASSIFICATION_TRAIN_AXES = (*_COMMON_TRAIN_AXES, "dense_units", "base_filters", "blocks")
_SEGMENTATION_TRAIN_AXES = (*_COMMON_TRAIN_AXES, "base_filters", "loss")

TASK_TABLE: dict[str, TaskInfo] = {
    "classification": TaskInfo(
        name="classification",
        metric="val_accuracy",
        mode="max",
        losses=("categorical_crossentropy",),
        default_loss="categorical_crossentropy",
        headline=("accuracy", "f1", "loss"),
        report_columns=(
            ("precision", "test_precision"),
            ("recall", "test_recall"),
            ("F1", "test_f1"),
            ("train acc", "train_accuracy"),
            ("train loss", "train_loss"),
            ("val acc", "val_accuracy"),
            ("val loss", "val_loss"),
            ("test acc", "test_accuracy"),
            ("test loss", "test_loss"),
        ),
        output="softmax probabilities over classes",
        target="the classes",
        masks=False,
        class_scores=True,
        fine_tunes=True,
        min_classes=2,
        axes=("model", "option", "lr", "dropout", *_CLASSIFICATION_TRAIN_AXES),
        train_axes=_CLASSIFICATION_TRAIN_AXES,
        training_metrics=("sparse_categorical_accuracy",),
        threshold=None,
        study_table="study_classification_48.csv",
        study_headline="test_acc",
        study_columns=(
            ("test_accuracy", "test_acc", 0.01),
            ("test_loss", "test_loss", 0.01),
            ("test_precision", "precision", 1.0),
            ("test_recall", "recall", 1.0),
            ("test_f1", "f1", 1.0),
            ("val_accuracy", "val_acc", 0.01),
        ),
        no_skill=_most_frequent_class,
        no_skill_name="always the most frequent class",
    ),
    "segmentation": TaskInfo(
        name="segmentation",
        metric="val_dice",
        mode="max",
        losses=("binary_crossentropy", "bce", "dice", "focal", "bce_dice"),
        default_loss="bce_dice",
        headline=("dice", "iou", "dice_per_image"),
        report_columns=(
            ("accuracy", "test_accuracy"),
            ("loss", "test_loss"),
            ("precision", "test_precision"),
            ("recall", "test_recall"),
            ("IoU", "test_iou"),
            ("Dice", "test_dice"),
            ("IoU (study def.)", "test_study_iou"),
            ("Dice (study def.)", "test_study_dice"),
            ("boundary F1", "test_boundary_f1"),  # tolerance 2 px, mean over images
            ("Dice, 2+ regions", "test_dice_multi_region"),  # images with two or more tumour regions (seed 003)
            ("val Dice", "val_dice"),
        ),
        output="per-pixel foreground probability (sigmoid), one channel",
        target="which pixels belong to cells (the foreground)",
        masks=True,
        class_scores=False,
        fine_tunes=False,
        min_classes=1,
        axes=("model", "lr", "dropout", *_SEGMENTATION_TRAIN_AXES),
        train_axes=_SEGMENTATION_TRAIN_AXES,
        training_metrics=(
            "binary_accuracy",
            "precision",
            "recall",
            "dice",
            "iou",
            "study_dice",
            "study_iou",
        ),
        threshold=0.5,
        study_table="study_segmentation_36.csv",
        study_headline="dice",
        study_columns=(
            ("test_accuracy", "accuracy", 0.01),
            ("test_loss", "loss", 0.01),
            ("test_precision", "precision", 0.01),
            ("test_recall", "recall", 0.01),
            ("test_iou", "iou", 0.01),
            ("test_dice", "dice", 0.01),
        ),
        no_skill=_all_background,
        no_skill_name="an all-background mask",
    ),
}
TASKS = tuple(TASK_TABLE)


def task_info(name: str) -> TaskInfo:
    """The facts of task ``name``; an unknown task raises and lists the valid ones."""
    try:
        return TASK_TABLE[name]
    except KeyError:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {name!r}") from None


def tasks_with(fact: str) -> str:
    """The tasks whose ``fact`` (a flag of ``TaskInfo``) is true, for a message: ``classification``."""
    return " or ".join(name for name, info in TASK_TABLE.items() if getattr(info, fact))
