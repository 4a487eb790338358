"""What ``sweep data check`` reports: layout, classes, counts, sizes, the mask rule and what it makes of the masks,
exact and near-duplicate images (the same image under two classes is a problem), the problems that stop a sweep and
the warnings a user should read before spending GPU hours."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from data_pipeline import masks as mask_rules
from data_pipeline.duplicates import Cluster, duplicate_clusters
from data_pipeline.errors import DataError
from data_pipeline.groups import group_summary
from data_pipeline.io import MaskSample, decode, read_mask, resolve_mask_rule, sample_masks
from data_pipeline.layout import DatasetIndex

FEW_IMAGES = 10  # a class with fewer images than this gets a warning
_SHOWN_GROUPS = 5  # groups spanning classes named in the text report (all in --json)
SHOWN_CLUSTERS = 20  # duplicate clusters listed in the text report (--json lists all)


@dataclass(frozen=True)
class ImageFacts:
    """What decoding one image (and its masks) told: None where it could not be read."""

    size: tuple[int, int] | None  # (width, height)
    channels: int | None  # as stored: 1 grey, 3 colour, 4 with alpha
    foreground: float | None  # fraction of mask pixels that are foreground (segmentation)
    problem: str | None = None
    path: str | None = None  # the file the problem is about


@dataclass(frozen=True)
class CheckReport:
    """Everything ``sweep data check`` prints; ``to_dict`` is its JSON."""

    root: str
    layout: str
    task: str
    classes: tuple[str, ...]
    counts: dict[str, int]
    image_sizes: dict[str, object]
    mask_rule: str | None  # the rule applied (auto resolved); None for classification
    mask_rule_configured: str | None
    # the masks auto decides from: {"files": n, "lossy": bool, "auto": the rule auto picks from them,
    # "foreground_by_rule": {rule: the fraction of their pixels it makes foreground}}
    mask_sample: dict[str, object] | None
    foreground_fraction: dict[str, float] | None
    problems: tuple[dict[str, str], ...]
    warnings: tuple[dict[str, str], ...] = field(default=())
    groups: dict[str, object] | None = None  # with a group_by: groups.group_summary
    # clusters of copies: [{kind: exact|near, classes: [...], files: [path, ...]}]; label_conflicts: those whose
    # files are filed under two or more classes (each also a problem)
    duplicates: tuple[dict[str, object], ...] = field(default=())
    label_conflicts: tuple[dict[str, object], ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        out = dict(self.__dict__)
        out["classes"] = list(self.classes)
        out["problems"], out["warnings"] = list(self.problems), list(self.warnings)
        out["duplicates"], out["label_conflicts"] = list(self.duplicates), list(self.label_conflicts)
        return out


def _facts(index: DatasetIndex, i: int, rule: str | None) -> ImageFacts:
    try:
        raw = decode(index.images[i], cv2.IMREAD_UNCHANGED)
        shape = raw.shape[:2]
        channels = 1 if raw.ndim == 2 else raw.shape[2]
        fg = None
        if index.masks is not None:
            fg = float(read_mask(index.masks[i], rule, shape, index.images[i]).mean())
        return ImageFacts((shape[1], shape[0]), channels, fg)
    except DataError as exc:  # unreadable, truncated, or a mask of another size
        return ImageFacts(None, None, None, str(exc), str(exc.path or index.images[i]))


def _class_folders(index: DatasetIndex) -> dict[int, str]:
    """Each class's folder: the deepest folder that holds all its images."""
    paths: dict[int, list[str]] = {}
    for p, label in zip(index.images, index.labels, strict=True):
        paths.setdefault(label, []).append(str(p.parent))
    return {k: os.path.commonpath(sorted(set(v))) for k, v in paths.items()}


def dataset_warnings(
    classes: tuple[str, ...],
    labels: list[int],
    sizes: list[tuple[int, int] | None],
    channels: list[int | None],
    foreground: list[float | None] | None,
    folders: dict[int, str],
    root: str,
    rule: str | None,
) -> list[dict[str, str]]:
    """Warnings over per-image facts (pure): few images in a class, a class whose image sizes or channel counts no
    other class has (the model could learn the scanner, not the disease), masks all empty or all full."""
    out = []
    for k, name in enumerate(classes):
        n = labels.count(k)
        if n < FEW_IMAGES:
            out.append({"path": folders[k], "problem": f"class {name} has {n} image(s) (fewer than {FEW_IMAGES})"})
    if len(classes) > 1:
        for what, values in (("image size", sizes), ("channel count", channels)):
            per_class = [
                {v for v, lab in zip(values, labels, strict=True) if lab == k and v} for k in range(len(classes))
            ]
            for k, mine in enumerate(per_class):
                others = set().union(*(s for j, s in enumerate(per_class) if j != k))
                if mine and others and not mine & others:
                    shown = ", ".join(sorted(_fmt(v) for v in mine)[:3])
                    out.append(
                        {
                            "path": folders[k],
                            "problem": f"class {classes[k]}: every {what} ({shown}) differs from the other classes' "
                            f"({', '.join(sorted(_fmt(v) for v in others)[:3])}); a model can learn that instead of "
                            "the class",
                        }
                    )
    fg = [f for f in foreground or [] if f is not None]
    if fg and max(fg) == 0:
        out.append(
            {
                "path": root,
                "problem": f"every mask is empty under mask_rule {rule}: check the masks or "
                "set data.mask_rule (nonzero, threshold:N, color_on_black)",
            }
        )
    elif fg and min(fg) == 1:
        out.append(
            {
                "path": root,
                "problem": f"every mask is full (all foreground) under mask_rule {rule}: check "
                "the masks or set data.mask_rule (e.g. threshold:N with a higher N)",
            }
        )
    return out


def _fmt(value) -> str:
    return f"{value[0]}x{value[1]}" if isinstance(value, tuple) else str(value)


def _sample_facts(sample: MaskSample, rule: str) -> dict[str, object]:
    """The sample auto decides from, and the foreground fraction of its pixels under the rule applied, what auto
    picks, and the fixed rules, so a user sees what each choice would make of their masks."""
    auto = mask_rules.decide(sample.hist, sample.lossy)
    rules = [rule, auto, "nonzero", "threshold:128", "color_on_black"]
    return {
        "files": sample.files,
        "lossy": sample.lossy,
        "auto": auto,
        "foreground_by_rule": mask_rules.foreground_by_rule(sample.hist, rules),
    }


def _cluster_facts(cluster: Cluster, index: DatasetIndex) -> dict[str, object]:
    return {
        "kind": cluster.kind,
        "classes": list(cluster.classes),
        "files": [str(index.images[i]) for i in cluster.images],
    }


def duplicate_findings(
    clusters: list[Cluster], images: tuple[Path, ...], root: str
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(problems, warnings) about duplicate clusters of the dataset's ``images`` (pure): each label conflict is a
    problem (the same image cannot be two diagnoses: one label is wrong); copies within one class are one warning (a
    copy in training and its twin in test inflate the test score)."""
    problems = [
        {
            "path": str(images[c.images[-1]]),
            "problem": f"the same image ({c.kind} copies) is filed under classes {' and '.join(c.classes)}: "
            f"{', '.join(c.names)}; keep it under its true class and remove the other copies",
        }
        for c in clusters
        if c.label_conflict
    ]
    within = [c for c in clusters if not c.label_conflict]
    warnings = []
    if within:
        files = sum(len(c.images) for c in within)
        warnings.append(
            {
                "path": root,
                "problem": f"{len(within)} cluster(s) of duplicate images within a class ({files} files, listed "
                "under duplicates): a copy in training and its twin in test inflate the test score; remove the "
                "copies, or let sweeps keep each cluster in one split (data.duplicates: group, the default)",
            }
        )
    return problems, warnings


def check(
    index: DatasetIndex,
    mask_rule: str = "auto",
    workers: int | None = None,
    cache_dir: str | Path | None = None,
) -> CheckReport:
    """Decode every image and mask once (no cache), report sizes, foreground fractions, duplicate clusters (cached
    per dataset content, see ``data_pipeline.duplicates``), problems and warnings."""
    sample = None if index.masks is None else sample_masks(index)
    rule = resolve_mask_rule(index, mask_rule, sample)
    with ThreadPoolExecutor(max_workers=workers or min(32, (os.cpu_count() or 1) + 2)) as pool:
        facts = list(pool.map(lambda i: _facts(index, i, rule), range(len(index))))
    sizes = [f.size for f in facts]
    good = [s for s in sizes if s]
    by_area = sorted(good, key=lambda s: (s[0] * s[1], s))
    image_sizes = {
        "min": _fmt(by_area[0]) if good else None,
        "max": _fmt(by_area[-1]) if good else None,
        "distinct": len(set(good)),
    }
    fg = None if index.masks is None else [f.foreground for f in facts]
    stats = None
    if fg is not None and any(f is not None for f in fg):
        arr = np.asarray([f for f in fg if f is not None])
        stats = {
            "min": float(arr.min()),
            "median": float(np.median(arr)),
            "max": float(arr.max()),
            "mean": float(arr.mean()),
            "empty": int((arr == 0).sum()),
            "full": int((arr == 1).sum()),
        }
    folders = _class_folders(index)
    warnings = dataset_warnings(
        index.classes, list(index.labels), sizes, [f.channels for f in facts], fg, folders, str(index.root), rule
    )
    clusters = duplicate_clusters(index, cache_dir=cache_dir, workers=workers)
    dup_problems, dup_warnings = duplicate_findings(clusters, index.images, str(index.root))
    counts = {**index.counts(), "total": len(index)}
    return CheckReport(
        root=str(index.root),
        layout=index.layout,
        task=index.task,
        classes=index.classes,
        counts=counts,
        image_sizes=image_sizes,
        mask_rule=rule,
        mask_rule_configured=None if rule is None else mask_rule,
        mask_sample=None if sample is None else _sample_facts(sample, rule),
        foreground_fraction=stats,
        problems=tuple([{"path": f.path, "problem": f.problem} for f in facts if f.problem] + dup_problems),
        warnings=tuple(warnings + dup_warnings),
        duplicates=tuple(_cluster_facts(c, index) for c in clusters),
        label_conflicts=tuple(_cluster_facts(c, index) for c in clusters if c.label_conflict),
        groups=group_summary(index.groups, index.labels, index.classes) if index.groups else None,
    )


def render_text(report: CheckReport) -> str:
    """The report as a person reads it."""
    lines = [f"{report.root}: layout {report.layout}, task {report.task}, {report.counts['total']} images"]
    lines += [f"  {name:<24} {report.counts[name]:>6}" for name in report.classes]
    sizes = report.image_sizes
    lines.append(f"image sizes: {sizes['min']} to {sizes['max']} ({sizes['distinct']} distinct)")
    if report.mask_rule:
        how = " (decided by auto)" if report.mask_rule_configured == "auto" else ""
        lines.append(f"mask rule: {report.mask_rule}{how}")
        sample = report.mask_sample
        kind = "JPEG" if sample["lossy"] else "lossless"
        tags = {sample["auto"]: " (auto)", report.mask_rule: " (applied)"}  # applied wins when auto applied
        shown = ", ".join(f"{r} {f:.3f}{tags.get(r, '')}" for r, f in sample["foreground_by_rule"].items())
        lines.append(f"foreground of {sample['files']} sampled mask files ({kind}) by rule: {shown}")
    if report.foreground_fraction:
        f = report.foreground_fraction
        lines.append(
            f"foreground fraction per image: min {f['min']:.3f}, median {f['median']:.3f}, max {f['max']:.3f}, "
            f"mean {f['mean']:.3f} ({f['empty']} empty, {f['full']} full)"
        )
    if report.groups:
        lines += _group_lines(report.groups)
    lines += _duplicate_lines(report)
    for w in report.warnings:
        lines.append(f"warning: {w['path']}: {w['problem']}")
    if report.ok:
        lines.append("no problems found")
    else:
        lines.append(f"{len(report.problems)} problem(s):")
        lines += [f"  {p['problem']}" for p in report.problems]
    return "\n".join(lines)


def _group_lines(groups: dict[str, object]) -> list[str]:
    per, classes = groups["images_per_group"], groups["classes_per_group"]
    loose = (
        f", {groups['ungrouped_images']} image(s) without a group (each its own)" if groups["ungrouped_images"] else ""
    )
    lines = [
        f"groups: {groups['groups']}{loose}; images per group: min {per['min']}, median {per['median']:g}, "
        f"max {per['max']}; " + ", ".join(f"{n} with {k} class(es)" for k, n in classes.items())
    ]
    spanning = groups["spanning_classes"]
    if spanning:
        shown = "; ".join(f"{g} ({', '.join(c)})" for g, c in list(spanning.items())[:_SHOWN_GROUPS])
        more = f"; and {len(spanning) - _SHOWN_GROUPS} more" if len(spanning) > _SHOWN_GROUPS else ""
        lines.append(f"groups spanning classes (loading option 1 refuses them): {shown}{more}")
    return lines


def _duplicate_lines(report: CheckReport) -> list[str]:
    """The duplicates section: a count, then the clusters (label conflicts first), files relative to the root."""
    found = report.duplicates
    if not found:
        return ["duplicates: none (exact or near)"]
    exact = sum(c["kind"] == "exact" for c in found)
    lines = [
        f"duplicates: {len(found)} cluster(s) of {sum(len(c['files']) for c in found)} images ({exact} exact, "
        f"{len(found) - exact} near), {len(report.label_conflicts)} label conflict(s)"
    ]
    root = Path(report.root)
    ordered = sorted(found, key=lambda c: len(c["classes"]) < 2)  # label conflicts first, stable otherwise
    for c in ordered[:SHOWN_CLUSTERS]:
        files = ", ".join(str(Path(f).relative_to(root)) if Path(f).is_relative_to(root) else f for f in c["files"])
        conflict = " LABEL CONFLICT" if len(c["classes"]) > 1 else ""
        lines.append(f"  {c['kind']:<5} {' + '.join(c['classes'])}{conflict}: {files}")
    if len(found) > SHOWN_CLUSTERS:
        lines.append(f"  ... and {len(found) - SHOWN_CLUSTERS} more (--json lists them all)")
    return lines
