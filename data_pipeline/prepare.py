"""From a data configuration to train/val/test arrays: find, decode (cached), plan the splits, augment."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from data_pipeline import preprocess as preprocess_steps
from data_pipeline import synth, synth_mri
from data_pipeline.augment import augment
from data_pipeline.errors import DataError
from data_pipeline.io import ON_BAD_IMAGE, LoadedData, load
from data_pipeline.layout import LAYOUTS, TASKS, manifest_path, scan
from data_pipeline.masks import rule_problem
from data_pipeline.splits import OPTIONS, PROTOCOLS, SPLITS, SplitPlan, fold_plans, leakage_audit, plan_splits

SYNTHETIC = {"leukemia": synth, "brain_mri": synth_mri}  # the embedded sets: blood smears, brain-MRI slices


@dataclass(frozen=True)
class DataConfig:
    """How a study's data is read, split and balanced. ``data_dir: None`` means the embedded synthetic set.

    ``layout``: auto (detected) or one of data_pipeline.layout.LAYOUTS; ``mask_rule``: auto, nonzero, threshold:N or
    color_on_black (data_pipeline.masks). ``preprocess``: ordered steps of data_pipeline.preprocess, each a name or
    ``{name: {param: value}}``, run on every image (and mask) before resizing. ``synthetic``: which embedded set
    (SYNTHETIC) a study reads when ``data_dir`` is null; ``synthetic_counts``: its images per class (empty: that
    set's default). ``positive_class``: of a two-class classification, the class binary metrics (sensitivity,
    specificity, ROC AUC, ...) call positive; null: the second class in sorted order (``yes`` of ``no``/``yes``)."""

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
    online_augmentation: bool = False
    seed: int = 0
    synthetic: str = "leukemia"
    synthetic_counts: tuple[int, ...] = ()
    synthetic_size: int = 224
    preprocess: tuple = ()
    positive_class: str | None = None

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
        out += preprocess_steps.problems(self.preprocess)
        if self.synthetic not in SYNTHETIC:
            out.append(f"synthetic: {self.synthetic!r} is not one of {', '.join(SYNTHETIC)}")
        elif self.data_dir is None and (p := positive_problem(SYNTHETIC[self.synthetic].CLASSES, self.positive_class)):
            out.append(p)
        if self.synthetic in SYNTHETIC and self.synthetic_counts:
            classes = SYNTHETIC[self.synthetic].CLASSES
            counts = self.synthetic_counts
            if len(counts) != len(classes) or not all(isinstance(n, int) and n >= 1 for n in counts):
                out.append(
                    f"synthetic_counts: {list(counts)} must be {len(classes)} positive integers (images of "
                    f"{', '.join(classes)} in the {self.synthetic} set), or empty for its default"
                )
        if self.layout != "auto" and self.layout not in LAYOUTS:
            out.append(f"layout: {self.layout!r} is not auto or one of {', '.join(LAYOUTS)}")
        if self.data_dir is not None:
            where = Path(self.data_dir).expanduser()
            if not (where.is_dir() or manifest_path(where)):
                out.append(f"data_dir: {self.data_dir} does not exist (a dataset folder or a .csv manifest)")
        return out


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
class Split:
    images: np.ndarray  # (n, S, S, 3) uint8 RGB
    labels: np.ndarray  # (n,) int32
    masks: np.ndarray | None  # (n, S, S) uint8 {0, 1}
    sources: np.ndarray  # (n,) index of the original image in the loaded data
    augmented: np.ndarray  # (n,) bool: an augmented copy, not an original

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class PreparedData:
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    audit: dict[str, int]  # leakage audit: val/test images whose source is also in training
    fingerprint: str
    skipped: tuple[tuple[str, str], ...]
    names: tuple[str, ...]  # of the loaded originals; Split.sources index into it
    config: DataConfig = field(repr=False)
    layout: str = ""  # the layout read (auto resolved)
    mask_rule: str | None = None  # the mask rule applied (auto resolved); None for classification

    def split(self, name: str) -> Split:
        return getattr(self, name)

    def summary(self) -> dict[str, object]:
        """JSON-ready provenance: sizes, per-class counts, audit, fingerprint, skipped files."""
        return {
            "classes": list(self.classes),
            "fingerprint": self.fingerprint,
            "layout": self.layout,
            "mask_rule": self.mask_rule,
            "config": asdict(self.config),
            "splits": {
                s: {
                    "n": len(self.split(s)),
                    "augmented": int(self.split(s).augmented.sum()),
                    "per_class": np.bincount(self.split(s).labels, minlength=len(self.classes)).tolist(),
                }
                for s in SPLITS
            },
            "leakage_audit": self.audit,
            "skipped": [list(s) for s in self.skipped],
        }


def resolve_root(cfg: DataConfig, cache_dir: str | Path | None = None) -> Path:
    """The dataset folder: the user's, or the embedded synthetic set (generated once into the cache)."""
    if cfg.data_dir is not None:
        return Path(cfg.data_dir).expanduser()
    module = SYNTHETIC[cfg.synthetic]
    counts = tuple(cfg.synthetic_counts) or module.DEFAULT_COUNTS
    return module.embedded_dataset(counts, cfg.synthetic_size, seed=0, cache_dir=cache_dir)


def materialise(data: LoadedData, plan: SplitPlan, seed: int) -> dict[str, Split]:
    """Gather each split's rows; augmented copies are made in (source, copy) order, so the same seed gives the
    same images whatever the split order."""
    rows = np.concatenate([plan.split(s) for s in SPLITS])
    aug_rows = np.unique(rows[rows[:, 1] > 0], axis=0)
    src = aug_rows[:, 0]
    aug_images, aug_masks = augment(data.images[src], None if data.masks is None else data.masks[src], seed=seed)
    where = {(int(s), int(c)): i for i, (s, c) in enumerate(aug_rows)}

    def gather(entries: np.ndarray) -> Split:
        is_aug = entries[:, 1] > 0
        pos = np.asarray([where.get((int(s), int(c)), -1) for s, c in entries], dtype=np.int64)
        images = data.images[entries[:, 0]]
        images[is_aug] = aug_images[pos[is_aug]]
        masks = None
        if data.masks is not None:
            masks = data.masks[entries[:, 0]]
            masks[is_aug] = aug_masks[pos[is_aug]]
        return Split(images, data.labels[entries[:, 0]], masks, entries[:, 0].copy(), is_aug)

    return {s: gather(plan.split(s)) for s in SPLITS}


def _load(cfg: DataConfig, cache_dir: str | Path | None):
    problems = cfg.problems()
    if problems:
        raise DataError("invalid data settings:\n  " + "\n  ".join(problems))
    index = scan(resolve_root(cfg, cache_dir), cfg.task, cfg.layout)
    data = load(
        index,
        cfg.image_size,
        mask_rule=cfg.mask_rule,
        on_bad_image=cfg.on_bad_image,
        cache_dir=cache_dir,
        preprocess_steps=cfg.preprocess,
    )
    present = np.unique(data.labels)
    if len(present) < 2 and cfg.task == "classification":
        raise DataError(f"after skipping unreadable images only {len(present)} class is left under {index.root}")
    plan = plan_splits(
        data.labels,
        option=cfg.option,
        protocol=cfg.protocol,
        balance_to=cfg.balance_to,
        seed=cfg.seed,
        fractions=cfg.fractions,
    )
    return data, plan


def _prepared(data: LoadedData, plan: SplitPlan, cfg: DataConfig) -> PreparedData:
    if cfg.task == "classification":
        positive_index(tuple(data.classes), cfg.positive_class)  # a class that is not there: stop before training
    splits = materialise(data, plan, cfg.seed)
    return PreparedData(
        classes=data.classes,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        audit=leakage_audit(plan),
        fingerprint=data.fingerprint,
        skipped=data.skipped,
        names=data.names,
        config=cfg,
        layout=data.layout,
        mask_rule=data.mask_rule,
    )


def prepare(cfg: DataConfig, cache_dir: str | Path | None = None) -> PreparedData:
    """Find, decode (through the cache), split, balance and augment; raise DataError naming every bad field."""
    data, plan = _load(cfg, cache_dir)
    return _prepared(data, plan, cfg)


def prepare_folds(cfg: DataConfig, k: int, cache_dir: str | Path | None = None) -> tuple[PreparedData, ...]:
    """k-fold cross-validation: one PreparedData per fold (its own train/val, audited), all with the test split
    ``prepare(cfg)`` has (see ``splits.fold_plans``)."""
    data, plan = _load(cfg, cache_dir)
    plans = fold_plans(
        data.labels,
        plan,
        k,
        balance_to=cfg.balance_to,
        seed=cfg.seed,
        fractions=cfg.fractions,
        stratify=cfg.task == "classification",
    )
    if any(min(len(p.train), len(p.val)) == 0 for p in plans):
        raise DataError(f"{k} folds leave a fold without training or validation images: use fewer folds")
    return tuple(_prepared(data, p, cfg) for p in plans)


def folds_summary(folds: tuple[PreparedData, ...]) -> dict[str, object]:
    """``PreparedData.summary`` for cross-validation: fold 0's, the leakage audit summed over folds, and each
    fold's split sizes and audit."""
    out = folds[0].summary()
    out["leakage_audit"] = {s: sum(f.audit[s] for f in folds) for s in folds[0].audit}
    out["folds"] = [{"splits": f.summary()["splits"], "leakage_audit": f.audit} for f in folds]
    return out
