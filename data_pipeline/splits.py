"""Split and balancing plans: pure functions over label arrays, no images.

A plan lists, for each split, entries ``(source, copy)``: ``source`` indexes the original images, ``copy`` is 0 for
the original itself and k > 0 for its k-th augmented copy. Materialising a plan (``prepare``) reads and augments.

Loading options (the study's):
  1  class-specific: each class is split 70/15/15 on its own (700/150/150 at 1,000 per class), then shuffled.
  2  one global dataset: everything pooled, shuffled, split 70/15/15.
Groups (``groups``: one integer id per image, e.g. its patient): every split keeps a group's images together,
shuffling whole groups and cutting where the image counts come closest to 70/15/15. Without groups every image is
its own group, which is exactly the ungrouped plan (same draws, same arrays).
Protocols:
  leak_free  split the originals first, then top up the *training* split only; validation and test hold only
             untouched originals. The default.
  study      balance first, split afterwards, as the paper did: augmented copies of one image land in training and
             in validation/test. Leaky; available so the paper's numbers can be reproduced, labelled wherever used.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data_pipeline.errors import DataError

OPTIONS = (1, 2)
PROTOCOLS = ("leak_free", "study")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitPlan:
    train: np.ndarray  # (n, 2) int64 rows of (source, copy)
    val: np.ndarray
    test: np.ndarray
    option: int
    protocol: str

    def split(self, name: str) -> np.ndarray:
        return getattr(self, name)


def split_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Sizes of train/val/test for n items: val and test rounded, train takes the rest (1000 -> 700/150/150)."""
    n_val = round(n * fractions[1])
    n_test = round(n * fractions[2])
    return n - n_val - n_test, n_val, n_test


def _originals(sources: np.ndarray) -> np.ndarray:
    return np.stack([sources, np.zeros_like(sources)], 1).astype(np.int64)


def top_up(sources: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """All of ``sources`` as originals plus augmented copies up to ``target`` rows (never fewer originals).

    Copies cycle over the sources in a shuffled order, so each source gets ⌊k/n⌋ or ⌈k/n⌉ of the k copies.
    """
    rows = [_originals(sources)]
    need = target - len(sources)
    if need > 0 and len(sources):
        order = rng.permutation(sources)
        picks = np.resize(order, need)
        copy_ids = np.arange(need) // len(sources) + 1
        rows.append(np.stack([picks, copy_ids], 1).astype(np.int64))
    return np.concatenate(rows)


def _shuffled_cut(
    rows: np.ndarray, keys: np.ndarray | None, fractions, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows shuffled group by group (rows with one key stay together, in their order) and cut into train/val/test at
    the group boundaries nearest ``split_sizes``' counts. ``keys`` None: each row on its own, which is
    ``rng.permutation(rows)`` cut at exactly ``split_sizes`` (the same draws)."""
    if keys is None:
        keys = np.arange(len(rows))
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    appearance = np.argsort(first)  # groups in the order their first row comes
    order = appearance[rng.permutation(len(appearance))]
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    shuffled = rows[np.argsort(rank[inverse], kind="stable")]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse)[order])])
    n_train, n_val, _ = split_sizes(len(rows), fractions)
    a, b = (int(bounds[np.argmin(np.abs(bounds - t))]) for t in (n_train, n_train + n_val))
    return shuffled[:a], shuffled[a:b], shuffled[b:]


def groups_spanning_classes(labels: np.ndarray, groups: np.ndarray) -> dict[int, list[int]]:
    """Each group whose images have more than one label: group id -> its labels (sorted)."""
    pairs = np.unique(np.stack([np.asarray(groups), np.asarray(labels)], 1), axis=0)
    ids, counts = np.unique(pairs[:, 0], return_counts=True)
    return {int(g): pairs[pairs[:, 0] == g, 1].tolist() for g in ids[counts > 1]}


def plan_splits(
    labels: np.ndarray,
    *,
    option: int = 2,
    protocol: str = "leak_free",
    balance_to: int | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    groups: np.ndarray | None = None,
) -> SplitPlan:
    """Plan train/val/test for images with these labels; ``balance_to`` = images per class (None: no balancing).
    ``groups``: one id per image; a group's images (and their augmented copies) land in one split. Option 1 splits
    each class on its own, so it refuses a group spanning classes (ValueError)."""
    if option not in OPTIONS:
        raise ValueError(f"option must be one of {OPTIONS}, not {option!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    if abs(sum(fractions) - 1) > 1e-9 or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive numbers summing to 1, not {fractions}")
    labels = np.asarray(labels)
    if groups is not None and option == 1 and (spanning := groups_spanning_classes(labels, groups)):
        group, classes = next(iter(spanning.items()))
        raise ValueError(f"option 1 splits each class on its own: group {group} spans classes {classes}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]

    def cut(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _shuffled_cut(rows, None if groups is None else np.asarray(groups)[rows[:, 0]], fractions, rng)

    if protocol == "study":  # balance first, split afterwards (leaky; copies keep their source's group)
        pools = [top_up(s, balance_to or 0, rng) for s in by_class]
        if option == 1:
            parts = [cut(p) for p in pools]
            train, val, test = (np.concatenate([p[k] for p in parts]) for k in range(3))
        else:
            train, val, test = cut(np.concatenate(pools))
    else:  # leak_free: split originals first, then top up training only
        if option == 1:
            parts = [cut(_originals(s)) for s in by_class]
            train, val, test = (np.concatenate([p[k] for p in parts]) for k in range(3))
        else:
            train, val, test = cut(_originals(np.concatenate(by_class)))
        if balance_to:
            per_class_train = split_sizes(balance_to, fractions)[0]
            train_sources = train[:, 0]
            train = np.concatenate(
                [top_up(train_sources[labels[train_sources] == c], per_class_train, rng) for c in classes]
            )
    return SplitPlan(rng.permutation(train), rng.permutation(val), rng.permutation(test), option, protocol)


def leakage_audit(
    plan: SplitPlan, groups: np.ndarray | None = None, copies: Sequence[Sequence[int]] | None = None
) -> dict[str, int]:
    """How many validation/test images share their source image with training (as original or augmented copy);
    with ``groups``, also ``groups_crossing``: how many groups have images in more than one split (absent without
    groups, where it could only be 0); with ``copies`` (clusters of duplicate images, as source indices), also
    ``duplicates_crossing``: how many pairs of copies have one image in one split and the other in another."""
    in_train = set(plan.train[:, 0].tolist())
    out = {name: int(sum(s in in_train for s in plan.split(name)[:, 0].tolist())) for name in ("val", "test")}
    if groups is not None:
        groups = np.asarray(groups)
        seen = [set(groups[plan.split(s)[:, 0]].tolist()) for s in SPLITS]
        out["groups_crossing"] = len((seen[0] & seen[1]) | (seen[0] & seen[2]) | (seen[1] & seen[2]))
    if copies is not None:
        where: dict[int, set[str]] = {}
        for s in SPLITS:
            for source in plan.split(s)[:, 0].tolist():
                where.setdefault(source, set()).add(s)
        out["duplicates_crossing"] = sum(
            any(x != y for x in where.get(a, ()) for y in where.get(b, ()))
            for members in copies
            for a, b in itertools.combinations(members, 2)
        )
    return out


def fold_plans(
    labels: np.ndarray,
    base: SplitPlan,
    k: int,
    *,
    balance_to: int | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    stratify: bool = True,
    groups: np.ndarray | None = None,
) -> list[SplitPlan]:
    """k-fold cross-validation plans sharing ``base``'s test split: the non-test originals (base's training
    originals and validation) are cut into k folds (stratified by label when ``stratify``); fold f validates on
    fold f and trains on the rest, topped up to ``balance_to`` per class as ``plan_splits`` does. Augmented
    copies are made of a fold's own training sources only, so they never cross folds. Leak-free protocol only.
    ``groups``: a group's images stay in one fold (scikit-learn's StratifiedGroupKFold, or GroupKFold unstratified)."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if base.protocol != "leak_free":
        raise ValueError("cross-validation needs the leak_free protocol (the study protocol leaks across folds)")
    labels = np.asarray(labels)
    pool = np.sort(np.concatenate([base.train[base.train[:, 1] == 0, 0], base.val[:, 0]]))
    units = len(pool) if groups is None else len(np.unique(np.asarray(groups)[pool]))
    if k > units:
        what = "images" if groups is None else "groups (data.group_by)"
        raise DataError(f"search.folds: {k} folds need {k} {what} outside the test split, there are {units}: use fewer")
    if groups is None:
        splitter = (StratifiedKFold if stratify else KFold)(n_splits=k, shuffle=True, random_state=seed)
        folds = splitter.split(pool, labels[pool])
    else:
        splitter = (StratifiedGroupKFold if stratify else GroupKFold)(n_splits=k, shuffle=True, random_state=seed)
        folds = splitter.split(pool, labels[pool], np.asarray(groups)[pool])
    rng = np.random.default_rng(seed)
    per_class_train = split_sizes(balance_to, fractions)[0] if balance_to else None
    plans = []
    for train_idx, val_idx in folds:
        train = _originals(pool[train_idx])
        if per_class_train:
            train = np.concatenate(
                [top_up(pool[train_idx][labels[pool[train_idx]] == c], per_class_train, rng) for c in np.unique(labels)]
            )
        plans.append(
            SplitPlan(
                rng.permutation(train),
                rng.permutation(_originals(pool[val_idx])),
                base.test,
                base.option,
                base.protocol,
            )
        )
    return plans
