"""External validation: an exported classifier on a dataset its sweep never saw, in any layout.

``sweep evaluate MODEL --data-dir DIR`` decides by the data's fingerprint (``data_pipeline.io.load_fingerprint``,
under the export's image size and preprocessing: the layout, class names, every file's relative path, size and
modification time): the fingerprint the model was trained on means the study's own data (moved or not), scored on
its test split as before; any other is an external set, scored on every image. Its class names must be the model's
(the same set: the report's macro averages are over the model's classes); every image goes through ``sweep
predict``'s path (preprocessing, resize, the export's temperature). Each metric comes with a bootstrap 95% interval
(``models.stats.classifier_intervals``), with the reliability table, and, with ``--by COLUMN`` on a CSV manifest,
the same per value of that column with its n. Written next to the model as ``external-<name>.json/.md/.html``
(``<name>``: the data folder's name and fingerprint, so two sets never share files), printed, and added to the
model card.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.tasks import task_info
from search.errors import SweepError
from search.outputs.card import EXTERNAL_PREFIX, interval_table, subgroup_table, summarize, write_card

BATCH = 64  # images decoded and predicted at once: memory stays bounded on a large external set
BLANK = "(blank)"  # a subgroup value left empty in the manifest


@dataclass(frozen=True)
class ExternalSet:
    """A dataset that is not the model's training data: its index, fingerprint and the export it is scored by."""

    index: Any  # data_pipeline.DatasetIndex
    fingerprint: str
    source: str  # what the user passed (a folder or a CSV file)


# ---- decisions (pure) ----------------------------------------------------------------------------------------------


def class_problem(model_classes: list[str], data_classes: list[str], where: str) -> str | None:
    """None when the data's class names are the model's; otherwise one line naming the difference."""
    unknown = [c for c in data_classes if c not in model_classes]
    missing = [c for c in model_classes if c not in data_classes]
    if not unknown and not missing:
        return None
    diff = "; ".join(
        part
        for part in (
            f"not in the model: {', '.join(unknown)}" if unknown else "",
            f"missing: {', '.join(missing)}" if missing else "",
        )
        if part
    )
    return (
        f"{where} holds classes {', '.join(data_classes)}; the model was trained on {', '.join(model_classes)} "
        f"({diff}): external validation needs the model's class names, every one of them (class folders or the "
        "label column); rename them to match"
    )


def external_name(source: str | Path, fingerprint: str, by: str | None) -> str:
    """``external-<data folder or CSV name>-<fingerprint[:8]>[-by-<column>]``: two sets (or two --by of one set)
    never write the same files; the same set and column again rewrites its own."""

    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "data"

    path = Path(source)
    stem = path.parent.name if path.name.lower() == "manifest.csv" else path.stem if path.suffix else path.name
    name = f"{EXTERNAL_PREFIX}{slug(stem)}-{fingerprint[:8]}"
    return f"{name}-by-{slug(by)}" if by else name


def groups_of(values: list[str]) -> list[tuple[str, np.ndarray]]:
    """(value, indices of the images with it), values sorted."""
    arr = np.asarray(values, dtype=object)
    return [(v, np.flatnonzero(arr == v)) for v in sorted(set(values))]


# ---- reading -------------------------------------------------------------------------------------------------------


def external_set(model_dir: str | Path, data_dir: str | Path) -> ExternalSet | None:
    """The dataset at ``data_dir`` when its fingerprint (under the export's settings) is not the training data's;
    None when it is the model's own data."""
    from data_pipeline import scan
    from data_pipeline.io import load_fingerprint
    from search.outputs.export import check_export, recorded_study

    manifest = check_export(model_dir)
    cfg = recorded_study(model_dir).data
    index = scan(data_dir, manifest["task"], "auto")
    fingerprint = load_fingerprint(index, cfg.image_size, cfg.mask_rule, cfg.preprocess)
    if fingerprint == manifest.get("data", {}).get("fingerprint"):
        return None
    return ExternalSet(index, fingerprint, str(data_dir))


def subgroup_values(found: ExternalSet, by: str) -> list[str]:
    """Each image's value in the manifest's column ``by`` (case-insensitive, as the layout reads columns)."""
    import pandas as pd

    from data_pipeline.layout import manifest_columns, manifest_path

    csv = manifest_path(Path(found.source).expanduser().resolve())
    if found.index.layout != "csv" or csv is None:
        raise SweepError(
            f"--by {by}: {found.source} is not a CSV manifest (layout {found.index.layout}); subgroups come from a "
            "column of a manifest (columns image, label, and e.g. site, scanner, sex, age_band)"
        )
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    roles = manifest_columns(list(frame.columns), {}, csv)  # the image, label and mask columns, as scan found them
    column = by.strip().lower()
    if column not in frame.columns or column in roles.values():
        others = [c for c in frame.columns if c not in roles.values()]
        raise SweepError(
            f"--by {by}: {csv} has no such column to group by (its other columns: {', '.join(others) or 'none'}); "
            "give one of them, or add the column"
        )
    value = {img.strip(): v.strip() or BLANK for img, v in zip(frame[roles["image"]], frame[column], strict=True)}
    return [value[name] for name in found.index.names]


# ---- the validation ------------------------------------------------------------------------------------------------


def validate_external(
    model_dir: str | Path, found: ExternalSet, by: str | None = None, tta: bool = False
) -> tuple[dict, list[Path]]:
    """Score the export on every image of ``found``; write external-<name>.json/.md/.html next to the model and
    regenerate its card. Every check (task, classes, --by column, where files go) is made before any image is read,
    and nothing is written when one fails. (the record, the files written)."""
    from data_pipeline.files import refuse_inside, write_file
    from search.outputs.export import check_export, load_export, temperature
    from search.outputs.report.document import render

    manifest = check_export(model_dir)
    index = found.index
    if not task_info(manifest["task"]).class_scores:
        raise SweepError(
            f"{found.source} is not the data this {manifest['task']} model was trained on: external validation "
            "scores classifiers only (for now); pass the study's own data folder to re-check its test split"
        )
    problem = class_problem(list(manifest["classes"]), list(index.classes), found.source)
    if problem:
        raise SweepError(problem)
    values = subgroup_values(found, by) if by else None
    folder = refuse_inside(model_dir, {index.root.resolve(): "the external dataset's folder"}, "MODEL_DIR")
    name = external_name(found.source, found.fingerprint, by)

    labels, probs = _predict(load_export(model_dir)[0], manifest, index, tta)
    record = {
        "name": name,
        "model": manifest["model"],
        "trial": manifest.get("trial"),
        "data": {
            "folder": str(index.root),  # the dataset's folder (a manifest's own folder)
            "source": str(Path(found.source).expanduser().resolve()),  # what --data-dir named
            "layout": index.layout,
            "fingerprint": found.fingerprint,
            "classes": list(index.classes),
            "per_class": {c: int((labels == manifest["classes"].index(c)).sum()) for c in index.classes},
        },
        "training_fingerprint": manifest.get("data", {}).get("fingerprint"),
        "temperature": temperature(manifest),
        "tta": tta,
        **summarize(labels, probs),
        "by": by,
        "subgroups": [{"value": v, **summarize(labels[rows], probs[rows])} for v, rows in groups_of(values or [])],
    }
    for g in record["subgroups"]:
        del g["reliability"]  # per subgroup: n and the metrics; the reliability table is the whole set's
    doc = external_sections(record)
    written = [
        write_file(folder / f"{name}.json", json.dumps(record, indent=2, allow_nan=False).encode()),
        write_file(folder / f"{name}.md", render(doc, "md").encode()),
        write_file(folder / f"{name}.html", render(doc, "html").encode()),
    ]
    return record, [*written, write_card(folder)]


def _predict(model, manifest: dict, index, tta: bool) -> tuple[np.ndarray, np.ndarray]:
    """(labels in the model's class order, probabilities) of every image, through `sweep predict`'s path."""
    from data_pipeline.io import read_rgb
    from search.outputs.export import predict_arrays

    classes = list(manifest["classes"])
    labels = np.asarray([classes.index(index.classes[i]) for i in index.labels], np.int64)
    chunks = [
        predict_arrays(model, manifest, [read_rgb(p) for p in index.images[i : i + BATCH]], tta=tta).probabilities
        for i in range(0, len(index.images), BATCH)
    ]
    return labels, np.concatenate(chunks).astype(np.float64)


def external_sections(record: dict) -> list:
    """The external validation as the report's document sections (pure)."""
    import pandas as pd

    from search.outputs.card import BOOTSTRAP
    from search.outputs.report.document import Note, Section, Table

    d = record["data"]
    counts = ", ".join(f"{n} {c}" for c, n in d["per_class"].items())
    how = "Probabilities as `sweep predict` gives them" + (
        f" (after the export's temperature, {record['temperature']:.3f})" if record["temperature"] is not None else ""
    )
    lead = (
        f"{record['n']} images ({counts}) of `{d['source']}`, layout {d['layout']}, fingerprint `{d['fingerprint']}`: "
        f"not the data the model was trained on (`{record['training_fingerprint']}`).",
        how + (", with test-time augmentation." if record["tta"] else "."),
    )
    out = [
        Section(f"External validation: {record['model']} on {Path(d['folder']).name}", level=1, lead=lead),
        Section("Metrics", blocks=(Table(interval_table(record["metrics"])), Note(BOOTSTRAP))),
    ]
    if record["by"]:
        title = f"By {record['by']} (n per subgroup)"
        out.append(Section(title, blocks=(Table(subgroup_table(record["subgroups"], record["by"])), Note(BOOTSTRAP))))
    out.append(Section("Calibration (reliability, 15 bins)", blocks=(Table(pd.DataFrame(record["reliability"])),)))
    return out
