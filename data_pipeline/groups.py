"""Groups of images that must stay in one split (a patient's fields of view, a scan's neighbouring slices).

``data.group_by`` names a column of the CSV manifest, or is a regular expression with one capture group, tried on
each image's path as the dataset names it (``benign/P01_a.png``: relative to the images folder, or as the
manifest writes it) and then on its file name alone (``P01_a.png``), so ``^(P\\d+)_`` works in class folders too.
An image without a group (an empty cell, a path the pattern does not match) is its own group.

Splitting takes the groups as one integer id per image (``group_ids``), so any other source of groups (duplicate
clusters, say) can feed the same splits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.splits import groups_spanning_classes

NO_GROUP = ""  # an image's group name when it has none: it is a group of its own


def _shown(text: str) -> str:
    """A user's text quoted for a one-line message: as written, or as Python writes it when it holds a control
    character."""
    return f"'{text}'" if text.isprintable() else repr(text)


def _pattern(group_by: str, where: str, columns: Sequence[str]) -> re.Pattern:
    """group_by as a regular expression with exactly one capture group, or a one-line DataError."""
    what = f"data.group_by {_shown(group_by)}"
    if columns:
        what += f" is not a column of {where} (columns: {', '.join(map(_shown, columns))}), and as a pattern it"
    example = "e.g. '^(P\\d+)_' for P01_a.png"
    try:
        pattern = re.compile(group_by)
    except re.error as exc:
        raise DataError(
            f"{what} is not a valid regular expression ({exc}): give a manifest column or a pattern with one "
            f"capture group, {example}"
        ) from None
    if pattern.groups != 1:
        raise DataError(
            f"{what} has {pattern.groups} capture groups, not 1: put the group's part of the path in one pair of "
            f"parentheses (others as (?:...)), {example}"
        )
    return pattern


def _captured(pattern: re.Pattern, name: str) -> str:
    for text in (name, name.rsplit("/", 1)[-1]):
        if (match := pattern.search(text)) and match.group(1):
            return match.group(1)
    return NO_GROUP


def group_names(
    names: Sequence[str], group_by: str, columns: dict[str, Sequence[str]] | None = None, where: str = ""
) -> tuple[str, ...]:
    """Each image's group name (NO_GROUP for none): the manifest column ``group_by`` (matched as columns are, any
    letter case) when ``columns`` (the manifest's, parallel to ``names``) has it, else the pattern's capture."""
    columns = columns or {}
    key = group_by.strip().lower()
    if key in columns:
        return tuple(str(v).strip() for v in columns[key])
    pattern = _pattern(group_by, where, list(columns))
    out = tuple(_captured(pattern, n) for n in names)
    if names and all(g == NO_GROUP for g in out):
        raise DataError(
            f"data.group_by {_shown(group_by)} matches none of the {len(names)} image paths of {where} (such as "
            f"{names[0]!r}); fix the pattern so its capture group finds the patient (or subject) in those paths"
        )
    return out


def group_ids(names: Sequence[str]) -> np.ndarray:
    """One integer id per image: named groups numbered in sorted order, then each image without a group its own."""
    named = sorted({n for n in names if n != NO_GROUP})
    number = {n: i for i, n in enumerate(named)}
    loose = iter(range(len(named), len(named) + len(names)))
    return np.asarray([number[n] if n != NO_GROUP else next(loose) for n in names], dtype=np.int64)


def spanning_classes(names: Sequence[str], labels: Sequence[int], classes: Sequence[str]) -> dict[str, list[str]]:
    """Each named group whose images are of more than one class: its name -> those classes."""
    named = sorted({n for n in names if n != NO_GROUP})  # group_ids' numbering of the named groups
    spanning = groups_spanning_classes(np.asarray(labels), group_ids(names))
    return {named[g]: [classes[c] for c in found] for g, found in spanning.items()}


def group_summary(names: Sequence[str], labels: Sequence[int], classes: Sequence[str]) -> dict[str, object]:
    """What ``sweep data check`` says about groups: how many, images per group, classes per group, and the groups
    that span classes (which loading option 1 refuses)."""
    ids = group_ids(names)
    per_group = np.bincount(ids)
    pairs = np.unique(np.stack([ids, np.asarray(labels, dtype=np.int64)], 1), axis=0)
    classes_per_group = np.bincount(pairs[:, 0], minlength=len(per_group))
    return {
        "groups": len(per_group),
        "ungrouped_images": sum(n == NO_GROUP for n in names),
        "images_per_group": {
            "min": int(per_group.min()),
            "median": float(np.median(per_group)),
            "max": int(per_group.max()),
        },
        "classes_per_group": {str(k): int((classes_per_group == k).sum()) for k in np.unique(classes_per_group)},
        "spanning_classes": spanning_classes(names, labels, classes),
    }


def joined(groups: np.ndarray | None, clusters: Sequence[Sequence[int]], n: int) -> np.ndarray | None:
    """One group id per image (``n`` images) where images that share a group or a cluster of copies (``clusters``:
    image indices) share one: the connected components of both relations, so a copy of one patient's image filed
    under another patient joins the two. None when there are neither groups nor clusters (each image on its own)."""
    if groups is None and not clusters:
        return None
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols = list(range(n)), list(range(n))
    if groups is not None:  # every image linked to its group's first image
        first: dict[int, int] = {}
        cols = [first.setdefault(g, i) for i, g in enumerate(np.asarray(groups).tolist())]
    for members in clusters:
        rows += list(members)
        cols += [members[0]] * len(members)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)
