"""A study's data settings: ``DataConfig``, validated on its own (light: no image library is imported to read or
check one, so commands that only read results stay fast)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.errors import ON_BAD_IMAGE, DataError
from data_pipeline.layout import LAYOUTS, TASKS, has_masks, manifest_path
from data_pipeline.masks import rule_problem
from data_pipeline.splits import OPTIONS, PROTOCOLS

# data.duplicates: a cluster of copies is one group (never in two splits), or all but its first image are dropped
# (a cluster filed under two classes: all of it), or copies are split like any images (the audit still counts them)
DUPLICATES = ("group", "drop", "ignore")

# The embedded sets (blood smears, brain-MRI slices), by name -> module; imported only when one is used.
SYNTHETIC = {"leukemia": "data_pipeline.synth", "brain_mri": "data_pipeline.synth_mri"}


def synthetic_set(name: str):
    """The module of embedded set ``name`` (its CLASSES, DEFAULT_COUNTS and ``embedded_dataset``)."""
    return importlib.import_module(SYNTHETIC[name])


def positive_problem(classes: tuple[str, ...], positive_class: str | None) -> str | None:
    """What is wrong with ``data.positive_class`` for these classes, or None."""
    if positive_class is None:
        return None
    if len(classes) != 2:
        return f"positive_class: {positive_class!r} needs two classes; this data has {len(classes)}: use null"
    if positive_class in classes:
        return None
    return f"positive_class: {positive_class!r} is not one of the classes {', '.join(classes)}"


def positive_index(classes: tuple[str, ...], positive_class: str | None = None) -> int | None:
    """The index of the positive class of a two-class problem (``positive_class``, or the second class in sorted
    order); None with any other number of classes. A class that is not there raises DataError."""
    if p := positive_problem(classes, positive_class):
        raise DataError(f"data.{p}: set data.positive_class to one of them")
    if len(classes) != 2:
        return None
    return classes.index(positive_class) if positive_class is not None else classes.index(sorted(classes)[1])


@dataclass(frozen=True)
class DataConfig:
    """How a study's data is read, split and balanced. ``data_dir: None`` means the embedded synthetic set.

    ``layout``: auto (detected) or one of data_pipeline.layout.LAYOUTS; ``mask_rule``: auto, nonzero, threshold:N or
    color_on_black (data_pipeline.masks). ``preprocess``: ordered steps of data_pipeline.preprocess, each a name or
    ``{name: {param: value}}``, run on every image (and mask) before resizing. ``synthetic``: which embedded set
    (SYNTHETIC) a study reads when ``data_dir`` is null; ``synthetic_counts``: its images per class (empty: that
    set's default). ``positive_class``: of a two-class classification, the class binary metrics (sensitivity,
    specificity, ROC AUC, ...) call positive; null: the second class in sorted order (``yes`` of ``no``/``yes``).
    ``group_by``: a manifest column or a regular expression with one capture group giving each image's patient (or
    subject): a group's images stay in one split (data_pipeline.groups). ``image_column``, ``label_column``,
    ``mask_column``: a CSV manifest's columns, where they are not found by their usual names (layout.USUAL_COLUMNS).
    ``duplicates``: what a sweep does with exact and near copies (data_pipeline.duplicates): ``group`` keeps each
    cluster in one split, ``drop`` keeps its first image only, ``ignore`` splits them as any images (DUPLICATES)."""

    task: str = "classification"
    data_dir: str | None = None  # a dataset folder, or a CSV manifest
    layout: str = "auto"
    image_size: int = 224
    option: int = 2
    protocol: str = "leak_free"
    balance_to: int | None = 1000
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    mask_rule: str = "auto"
    on_bad_image: str = "skip"
    seed: int = 0
    synthetic: str = "leukemia"
    synthetic_counts: tuple[int, ...] = ()
    synthetic_size: int = 224
    preprocess: tuple = ()
    positive_class: str | None = None
    group_by: str | None = None
    duplicates: str = "group"
    image_column: str | None = None
    label_column: str | None = None
    mask_column: str | None = None

    @property
    def has_masks(self) -> bool:
        """Whether this task's targets are masks (segmentation) rather than a label per image (classification)."""
        return has_masks(self.task)

    @property
    def columns(self) -> dict[str, str | None]:
        """The manifest columns named, by role (image, label, mask)."""
        return {"image": self.image_column, "label": self.label_column, "mask": self.mask_column}

    def __post_init__(self):
        for name in ("preprocess", "synthetic_counts"):  # a list from YAML or JSON, kept as a tuple
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def problems(self) -> list[str]:
        """Every invalid field, as 'field: what is wrong (allowed values)'."""
        out = []
        if self.task not in TASKS:
            out.append(f"task: {self.task!r} is not one of {', '.join(TASKS)}")
        if self.option not in OPTIONS:
            out.append(f"option: {self.option!r} is not one of {', '.join(map(str, OPTIONS))}")
        if self.protocol not in PROTOCOLS:
            out.append(f"protocol: {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.duplicates not in DUPLICATES:
            out.append(f"duplicates: {self.duplicates!r} is not one of {', '.join(DUPLICATES)}")
        if self.on_bad_image not in ON_BAD_IMAGE:
            out.append(f"on_bad_image: {self.on_bad_image!r} is not one of {', '.join(ON_BAD_IMAGE)}")
        if not (isinstance(self.image_size, int) and self.image_size >= 32):
            out.append(f"image_size: {self.image_size!r} must be an integer >= 32")
        if self.balance_to is not None and not (isinstance(self.balance_to, int) and self.balance_to >= 2):
            out.append(f"balance_to: {self.balance_to!r} must be null or an integer >= 2")
        if len(self.fractions) != 3 or min(self.fractions) <= 0 or abs(sum(self.fractions) - 1) > 1e-6:
            out.append(f"fractions: {self.fractions!r} must be three positive numbers summing to 1")
        if rule_problem(self.mask_rule):
            out.append(f"mask_rule: {rule_problem(self.mask_rule)}")
        if self.preprocess:  # the steps' module is OpenCV's: imported only for a study that has steps
            from data_pipeline import preprocess as preprocess_steps

            out += preprocess_steps.problems(self.preprocess)
        if self.synthetic not in SYNTHETIC:
            out.append(f"synthetic: {self.synthetic!r} is not one of {', '.join(SYNTHETIC)}")
        elif self.data_dir is None and (
            p := positive_problem(synthetic_set(self.synthetic).CLASSES, self.positive_class)
        ):
            out.append(p)
        if self.synthetic in SYNTHETIC and self.synthetic_counts:
            classes = synthetic_set(self.synthetic).CLASSES
            counts = self.synthetic_counts
            if len(counts) != len(classes) or not all(isinstance(n, int) and n >= 1 for n in counts):
                out.append(
                    f"synthetic_counts: {list(counts)} must be {len(classes)} positive integers (images of "
                    f"{', '.join(classes)} in the {self.synthetic} set), or empty for its default"
                )
        for name in ("group_by", "image_column", "label_column", "mask_column"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.strip()):
                out.append(
                    f"{name}: {value!r} must be null or a non-empty text (a manifest column, or for group_by a pattern)"
                )
        if self.layout != "auto" and self.layout not in LAYOUTS:
            out.append(f"layout: {self.layout!r} is not auto or one of {', '.join(LAYOUTS)}")
        if self.data_dir is not None:
            where = Path(self.data_dir).expanduser()
            if not (where.is_dir() or manifest_path(where)):
                out.append(f"data_dir: {self.data_dir} does not exist (a dataset folder or a .csv manifest)")
        return out
