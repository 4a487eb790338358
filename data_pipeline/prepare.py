"""From a data configuration to train/val/test arrays: find, decode (cached), plan the splits, augment."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data_pipeline.config import DataConfig, positive_index, synthetic_set
from data_pipeline.errors import DataError
from data_pipeline.groups import group_ids, joined, spanning_classes
from data_pipeline.layout import DatasetIndex, scan
from data_pipeline.splits import SPLITS, SplitPlan, fold_plans, leakage_audit, plan_splits

if TYPE_CHECKING:
    from data_pipeline.io import LoadedData


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
    audit: dict[str, int]  # leakage audit: val/test images whose source is also in training (and groups_crossing)
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
    module = synthetic_set(cfg.synthetic)
    counts = tuple(cfg.synthetic_counts) or module.DEFAULT_COUNTS
    return module.embedded_dataset(counts, cfg.synthetic_size, seed=0, cache_dir=cache_dir)


def materialise(data: LoadedData, plan: SplitPlan, seed: int) -> dict[str, Split]:
    """Gather each split's rows; augmented copies are made in (source, copy) order, so the same seed gives the
    same images whatever the split order."""
    rows = np.concatenate([plan.split(s) for s in SPLITS])
    aug_rows = np.unique(rows[rows[:, 1] > 0], axis=0)
    src = aug_rows[:, 0]
    from data_pipeline.augment import augment  # albumentations: only when images are prepared

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


def _refuse_spanning_groups(index: DatasetIndex, cfg: DataConfig) -> None:
    """Option 1 splits each class on its own: a group with images of two classes cannot stay whole. Asked of the
    index, so the refusal comes before anything is decoded."""
    if (
        cfg.group_by is not None
        and cfg.option == 1
        and (spanning := spanning_classes(index.groups, index.labels, index.classes))
    ):
        group, classes = next(iter(spanning.items()))
        more = f" (and {len(spanning) - 1} more groups)" if len(spanning) > 1 else ""
        raise DataError(
            f"data.group_by: group {group!r} holds images of classes {', '.join(classes)}{more}, but loading option 1 "
            "splits each class on its own: use option 2 (space.option: [2]), or fix the labels or the groups"
        )


def _group_ids(index: DatasetIndex, names: tuple[str, ...]) -> np.ndarray | None:
    """The group id of each loaded image (``names``: the index's, less unreadable ones); None without groups."""
    if not index.groups:
        return None
    of = dict(zip(index.names, index.groups, strict=True))
    return group_ids([of[n] for n in names])


def _copies(index: DatasetIndex, cfg: DataConfig, cache_dir: str | Path | None) -> list:
    """The dataset's clusters of exact and near copies (decided once per dataset content, cached). Under
    ``duplicates: group`` a classification set with one image filed under two classes is refused: which label is
    right is the user's to say."""
    from data_pipeline.duplicates import duplicate_clusters

    clusters = duplicate_clusters(index, cache_dir=cache_dir)
    conflicts = [c for c in clusters if c.label_conflict] if not cfg.has_masks else []
    if conflicts and cfg.duplicates == "group":
        first = conflicts[0]
        more = f" (and {len(conflicts) - 1} more such clusters)" if len(conflicts) > 1 else ""
        raise DataError(
            f"data.duplicates: {first.names[0]} and {first.names[1]} are copies of one image filed under classes "
            f"{', '.join(first.classes)}{more}; `sweep data check` lists them all: fix the labels, or set "
            "data.duplicates: drop (leaves such images out) or ignore"
        )
    return clusters


def _without_copies(data: LoadedData, clusters: list, labelled: bool) -> LoadedData:
    """``duplicates: drop``: every cluster's first image kept, the others left out (recorded as skipped); a cluster
    filed under two classes (classification) left out whole."""
    row = {n: i for i, n in enumerate(data.names)}
    dropped: dict[int, str] = {}
    for c in clusters:
        conflict = c.label_conflict and labelled
        for name in c.names if conflict else c.names[1:]:
            if name in row:
                why = f"filed under {' and '.join(c.classes)}" if conflict else f"a copy of {c.names[0]}"
                dropped[row[name]] = f"{why} (data.duplicates: drop)"
    if not dropped:
        return data
    keep = np.asarray([i for i in range(len(data.names)) if i not in dropped], dtype=np.int64)
    return replace(
        data,
        images=data.images[keep],
        labels=data.labels[keep],
        masks=None if data.masks is None else data.masks[keep],
        names=tuple(data.names[i] for i in keep),
        skipped=data.skipped + tuple((data.names[i], why) for i, why in sorted(dropped.items())),
    )


@dataclass(frozen=True)
class _Loaded:
    """A dataset decoded and planned: its images, the plan, and what splits honour (patients, copies)."""

    data: LoadedData
    plan: SplitPlan
    groups: np.ndarray | None  # what splits keep whole: patients and clusters of copies joined (None: each image)
    patients: np.ndarray | None  # data.group_by's groups alone (the audit's groups_crossing)
    copies: list[list[int]]  # clusters of copies still in the data, as image indices (duplicates_crossing)


def _load(cfg: DataConfig, cache_dir: str | Path | None) -> _Loaded:
    problems = cfg.problems()
    if problems:
        raise DataError("invalid data settings:\n  " + "\n  ".join(problems))
    index = scan(resolve_root(cfg, cache_dir), cfg.task, cfg.layout, columns=cfg.columns, group_by=cfg.group_by)
    _refuse_spanning_groups(index, cfg)
    clusters = _copies(index, cfg, cache_dir)
    from data_pipeline.io import load  # OpenCV: only when images are read

    data = load(
        index,
        cfg.image_size,
        mask_rule=cfg.mask_rule,
        on_bad_image=cfg.on_bad_image,
        cache_dir=cache_dir,
        preprocess_steps=cfg.preprocess,
    )
    if cfg.duplicates == "drop":
        data = _without_copies(data, clusters, not cfg.has_masks)
    present = np.unique(data.labels)
    if len(present) < 2 and not cfg.has_masks:
        raise DataError(f"after skipping unreadable images only {len(present)} class is left under {index.root}")
    row = {n: i for i, n in enumerate(data.names)}
    copies = [m for c in clusters if len(m := [row[n] for n in c.names if n in row]) > 1]
    patients = _group_ids(index, data.names)
    groups = joined(patients, copies if cfg.duplicates == "group" else [], len(data.names))
    plan = plan_splits(
        data.labels,
        option=cfg.option,
        protocol=cfg.protocol,
        balance_to=cfg.balance_to,
        seed=cfg.seed,
        fractions=cfg.fractions,
        groups=groups,
    )
    return _Loaded(data, plan, groups, patients, copies)


def _prepared(loaded: _Loaded, plan: SplitPlan, cfg: DataConfig) -> PreparedData:
    data = loaded.data
    if not cfg.has_masks:
        positive_index(tuple(data.classes), cfg.positive_class)  # a class that is not there: stop before training
    splits = materialise(data, plan, cfg.seed)
    return PreparedData(
        classes=data.classes,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        audit=leakage_audit(plan, loaded.patients, loaded.copies),
        fingerprint=data.fingerprint,
        skipped=data.skipped,
        names=data.names,
        config=cfg,
        layout=data.layout,
        mask_rule=data.mask_rule,
    )


def prepare(cfg: DataConfig, cache_dir: str | Path | None = None) -> PreparedData:
    """Find, decode (through the cache), split, balance and augment; raise DataError naming every bad field."""
    loaded = _load(cfg, cache_dir)
    return _prepared(loaded, loaded.plan, cfg)


def prepare_folds(cfg: DataConfig, k: int, cache_dir: str | Path | None = None) -> tuple[PreparedData, ...]:
    """k-fold cross-validation: one PreparedData per fold (its own train/val, audited), all with the test split
    ``prepare(cfg)`` has (see ``splits.fold_plans``)."""
    loaded = _load(cfg, cache_dir)
    plans = fold_plans(
        loaded.data.labels,
        loaded.plan,
        k,
        balance_to=cfg.balance_to,
        seed=cfg.seed,
        fractions=cfg.fractions,
        stratify=not cfg.has_masks,
        groups=loaded.groups,
    )
    if any(min(len(p.train), len(p.val)) == 0 for p in plans):
        raise DataError(f"{k} folds leave a fold without training or validation images: use fewer folds")
    return tuple(_prepared(loaded, p, cfg) for p in plans)


def folds_summary(folds: tuple[PreparedData, ...]) -> dict[str, object]:
    """``PreparedData.summary`` for cross-validation: fold 0's, the leakage audit summed over folds, and each
    fold's split sizes and audit."""
    out = folds[0].summary()
    out["leakage_audit"] = {s: sum(f.audit[s] for f in folds) for s in folds[0].audit}
    out["folds"] = [{"splits": f.summary()["splits"], "leakage_audit": f.audit} for f in folds]
    return out
