"""One table of facts about each task, as the registry holds facts about each model.

A study, a results table, a report, an export and the CLI ask this table for a task's selection metric, its losses,
its headline test metrics and its report columns; a new task or metric is one edit here.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def metric_name(self) -> str:
        """The selection metric without its split prefix: ``accuracy`` for ``val_accuracy``."""
        return self.metric.split("_", 1)[1]


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
    ),
}
TASKS = tuple(TASK_TABLE)


def task_info(name: str) -> TaskInfo:
    """The facts of task ``name``; an unknown task raises and lists the valid ones."""
    try:
        return TASK_TABLE[name]
    except KeyError:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {name!r}") from None
