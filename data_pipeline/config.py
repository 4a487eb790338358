"""A study's data settings: ``DataConfig``, validated on its own (light: no image library is imported to read or
check one, so commands that only read results stay fast)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from annotated_types import Ge

from data_pipeline import schema
from data_pipeline.errors import ON_BAD_IMAGE, DataError
from data_pipeline.layout import LAYOUTS, TASKS, has_masks, manifest_path
from data_pipeline.masks import rule_problem
from data_pipeline.splits import OPTIONS, PROTOCOLS

# data.duplicates: a cluster of copies is one group (never in two splits), or all but its first image are dropped
# (a cluster filed under two classes: all of it), or copies are split like any images (the audit still counts them)
DUPLICATES = ("group", "drop", "ignore")

# The embedded sets (blood smears, brain-MRI slices), by name -> module; imported only when one is used.
SYNTHETIC = {"leukemia": "data_pipeline.synth", "brain_mri": "data_pipeline.synth_mri"}
SYNTHETIC_SETS = tuple(SYNTHETIC)
LAYOUT_CHOICES = ("auto", *LAYOUTS)


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

    # Read by pydantic from these types, strictly (data_pipeline.schema); ``problems`` checks what they cannot say.
    __pydantic_config__ = schema.STRICT

    task: Literal[TASKS] = "classification"
    data_dir: str | None = None  # a dataset folder, or a CSV manifest
    layout: Literal[LAYOUT_CHOICES] = "auto"
    image_size: Annotated[int, Ge(32)] = 224
    option: Literal[OPTIONS] = 2
    protocol: Literal[PROTOCOLS] = "leak_free"
    balance_to: Annotated[int, Ge(2)] | None = 1000
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # positive, summing to 1
    mask_rule: str = "auto"
    on_bad_image: Literal[ON_BAD_IMAGE] = "skip"
    seed: int = 0
    synthetic: Literal[SYNTHETIC_SETS] = "leukemia"
    synthetic_counts: tuple[Annotated[int, Ge(1)], ...] = ()
    synthetic_size: int = 224
    preprocess: tuple[str | dict, ...] = ()  # each step a name or {name: {param: value}}
    positive_class: str | None = None
    group_by: str | None = None
    duplicates: Literal[DUPLICATES] = "group"
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

    def problems(self, here: bool = True) -> list[str]:
        """Every invalid field, as 'field: what is wrong (allowed values)': what its declared types refuse, then what
        they cannot say. ``here``: also whether ``data_dir`` exists on this machine (reading a finished sweep's
        results does not need it)."""
        checked, out = schema.check(self)  # the checks below read the values their types let through
        return out + checked._meaning_problems(here)

    def _meaning_problems(self, here: bool) -> list[str]:
        out = []
        if min(self.fractions) <= 0 or abs(sum(self.fractions) - 1) > 1e-6:
            out.append(f"fractions: {self.fractions!r} must be three positive numbers summing to 1")
        if rule_problem(self.mask_rule):
            out.append(f"mask_rule: {rule_problem(self.mask_rule)}")
        if self.preprocess:  # the steps' module is OpenCV's: imported only for a study that has steps
            from data_pipeline import preprocess as preprocess_steps

            out += preprocess_steps.problems(self.preprocess)
        if self.data_dir is None and (
            p := positive_problem(synthetic_set(self.synthetic).CLASSES, self.positive_class)
        ):
            out.append(p)
        classes = synthetic_set(self.synthetic).CLASSES
        if self.synthetic_counts and len(self.synthetic_counts) != len(classes):
            out.append(
                f"synthetic_counts: {list(self.synthetic_counts)} must be {len(classes)} positive integers (images of "
                f"{', '.join(classes)} in the {self.synthetic} set), or empty for its default"
            )
        for name in ("group_by", "image_column", "label_column", "mask_column"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                out.append(
                    f"{name}: {value!r} must be null or a non-empty text (a manifest column, or for group_by a pattern)"
                )
        if here and self.data_dir is not None:
            where = Path(self.data_dir).expanduser()
            if not (where.is_dir() or manifest_path(where)):
                out.append(f"data_dir: {self.data_dir} does not exist (a dataset folder or a .csv manifest)")
        return out
