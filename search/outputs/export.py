"""From a finished sweep to a model users can ship: export the best trial, predict on new images, re-check it.

An exported model folder holds:
- ``model.keras``: the whole model (architecture, weights; preprocessing is a layer inside it), loadable with
  ``keras.saving.load_model(path, safe_mode=True)``;
- ``export.json``: task, model name, trial and hyperparameters, class names, preprocessing (input size, what the
  model does to its input, mask rule), validation and test metrics, and how the trial was selected;
- ``study.json``: the resolved study the sweep ran (data settings included, so the test split can be rebuilt);
- ``README.md``: how to use it;
- ``MODEL_CARD.md`` and ``model_card.json``: the model card (``search.outputs.card``): intended use, data, how it was
  chosen, test metrics with intervals, calibration, external validations, limitations;
- ``external-<name>.json/.md/.html``: each external validation (``sweep evaluate --data-dir OTHER``), once run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_pipeline.files import data_folders, publish_folder, refuse_inside, write_file, write_image
from models.tasks import TASKS, task_info
from search import storage as store
from search.errors import SweepError
from search.outputs import deploy
from search.outputs.card import (
    CARD_FILE,
    CARD_JSON,
    EXPORT_FILE,
    HANDLING_KEYS,
    REEXPORT,
    STUDY_FILE,
    summarize,
    write_card,
)
from search.study import checkpoints
from search.study.axes import CONFIG_KEYS
from search.study.experiment import load_details, load_predictions, load_results, load_study, load_sweep
from search.study.results import COST_COLUMNS, best_row, measured, with_checkpoint, within_budget
from search.study.spec import Study, read_recorded

MODEL_FILE = "model.keras"
EXPORT_FILES = (MODEL_FILE, EXPORT_FILE, STUDY_FILE, "README.md", CARD_FILE, CARD_JSON)


def selection_metric(task: str, metric: str | None) -> tuple[str, str]:
    """(column, mode) a trial is chosen by: a validation metric only, never a test one."""
    info = task_info(task)
    metric = metric or info.metric
    if not metric.startswith("val_"):
        raise SweepError(
            f"--metric {metric}: the best trial is chosen on validation metrics only (val_...); the test split "
            "is for reporting, choosing on it would make its numbers optimistic"
        )
    return metric, info.mode if metric == info.metric else "min" if metric.endswith("loss") else "max"


def select_best(frame: pd.DataFrame, metric: str, mode: str, family: str | None = None) -> pd.Series:
    """The row with the best validation ``metric`` among trials that left a checkpoint (optionally one family)."""
    if family is not None:
        if family not in set(frame["model"]):
            raise SweepError(
                f"no trial of model family {family!r}; this sweep has {', '.join(sorted(set(frame['model'])))}"
            )
        frame = frame[frame["model"] == family]
    if metric not in frame:
        allowed = ", ".join(c for c in frame.columns if c.startswith("val_"))
        raise SweepError(f"--metric {metric} is not in this sweep's results; validation metrics: {allowed}")
    best = best_row(with_checkpoint(frame), metric, mode)
    if best is None:
        raise SweepError(
            "no trial finished an epoch with a checkpoint (all failed or diverged at once): nothing to export"
        )
    return best


def select_within_budget(
    frame: pd.DataFrame,
    metric: str,
    mode: str,
    family: str | None,
    max_latency_ms: float | None,
    max_size_mb: float | None,
) -> pd.Series:
    """The best trial on validation ``metric`` whose measured cost fits the budget (median batch-1 latency on one
    thread, ONNX file size): among the candidates timed (``results.cost_candidates``, by ``search.costs`` or
    ``sweep costs``)."""
    asked = " ".join(
        f"--{name} {value:g}" for name, value in (("max-latency-ms", max_latency_ms), ("max-size-mb", max_size_mb))
        if value is not None
    )  # fmt: skip
    select_best(frame, metric, mode, family)  # its checks: the family, the metric, a checkpoint at all
    if family is not None:
        frame = frame[frame["model"] == family]
    if measured(frame).empty:
        raise SweepError(
            f"{asked}: no trial of this sweep has a measured cost (results.csv's latency_ms and size_mb): time each "
            "architecture's best trial on this machine with `sweep costs EXPERIMENT` first, or export without a budget"
        )
    row, fastest = within_budget(frame, metric, mode, max_latency_ms, max_size_mb)
    if row is None:
        raise SweepError(
            f"no trial fits {asked}: the fastest candidate is {fastest['trial']} at {fastest['latency_ms']:g} ms "
            f"(median, batch 1, one thread) and {fastest['size_mb']:g} MiB; raise the budget, or search smaller "
            "models or input sizes"
        )
    return row


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    return out


def export_manifest(
    row: pd.Series,
    study: Study,
    sweep: dict,
    metric: str,
    family: str | None,
    experiment: str,
    detail: dict | None = None,
) -> dict:
    """What a user of the exported model needs to know, from the results row, the study, the sweep record (its data
    summaries) and the trial's test report (``detail``, from results.json: its temperature when the study
    calibrates) (pure)."""
    import models
    from data_pipeline import preprocess as preprocess_steps

    task, facts = study.task, study.facts
    info = models.get(row["model"])
    option = str(int(row["option"])) if "option" in row and pd.notna(row.get("option")) else str(study.data.option)
    data = sweep["data"][option]
    size = study.data.image_size
    hp = {k: row[k] for k in CONFIG_KEYS if k not in ("model", "repeat") and k in row and pd.notna(row[k])}
    return {
        "task": task,
        "model": row["model"],
        "trial": row["trial"],
        "experiment": experiment,
        "selected_by": {"metric": metric, "family": family or "all", "split": "validation"},
        "hyperparameters": _clean(hp),
        # as built, its model's own defaults included (a width the study left to the model is not in its axes)
        "architecture": row["architecture"] if pd.notna(row.get("architecture")) else None,
        "classes": data["classes"],
        "preprocessing": {
            "input": f"RGB, {size}×{size}, values 0–255 (uint8 or float32); resize larger images with area "
            "interpolation",
            "input_size": size,
            "steps": [dict(step) for step in preprocess_steps.resolve(study.data.preprocess)],  # data.preprocess
            "normalisation": info.preprocess,
            "mask_rule": data.get("mask_rule") if facts.masks else None,  # how training masks were read
            "prediction_threshold": facts.threshold,
        },
        "output": facts.output,
        "masks": facts.masks,  # the output is a mask (the task table's): what a reader without the table decides by
        "epochs": int(row["epochs"]),
        "best_epoch": None if pd.isna(row.get("best_epoch")) else int(row["best_epoch"]),
        "validation": _clean({k[4:]: row[k] for k in row.index if k.startswith("val_")}),
        "test": _clean({k[5:]: row[k] for k in row.index if k.startswith("test_")}),
        "data": {
            "fingerprint": data["fingerprint"],
            "layout": data.get("layout"),
            "leakage_audit": data["leakage_audit"],
            "splits": data["splits"],
            **{k: data[k] for k in HANDLING_KEYS if k in data},  # patient groups and duplicates, when recorded
        },
        "calibration": (detail or {}).get("calibration"),  # {"temperature": T, ...}: `sweep predict` applies it
        "cost": _cost(row),
    }


def _cost(row: pd.Series) -> dict[str, Any] | None:
    """The row's measured deployment cost (``results.COST_COLUMNS``), None when it was not measured."""
    if pd.isna(row.get("latency_ms")):
        return None
    cost = _clean({k: row[k] for k in COST_COLUMNS})
    cost["params"] = int(cost["params"])
    where = "the machine that ran search.costs or `sweep costs`, or its trial's (search.objectives)"
    return {**cost, "measured_on": f"{where} (ONNX Runtime, CPU, batch 1)"}


def _readme(m: dict) -> str:
    headline = task_info(m["task"]).headline[0]
    return f"""# {m["model"]} ({m["task"]}), exported from a sweep

Trial `{m["trial"]}` of `{m["experiment"]}`, chosen by validation `{m["selected_by"]["metric"]}`
({m["selected_by"]["family"]} families). Test {headline}: {m["test"].get(headline)} (the test split played no part
in choosing it). Classes: {", ".join(m["classes"])}.

Input: {m["preprocessing"]["input"]}. The model normalises its input itself ({m["preprocessing"]["normalisation"]}),
so give it raw pixel values.

```python
import keras, numpy as np
model = keras.saving.load_model("model.keras", safe_mode=True)
probs = model.predict(images)  # images: (n, S, S, 3) RGB 0..255, S = {m["preprocessing"]["input_size"]}
```

From the command line: `sweep predict THIS_FOLDER IMAGE_OR_FOLDER... [--out DIR]`; re-check its test metrics on
the study's test split: `sweep evaluate THIS_FOLDER`. All facts (hyperparameters, metrics, data fingerprint) are in
`export.json`; the study it came from is in `study.json`. What it is for, what it was tested on, with
what uncertainty, and its limitations: `MODEL_CARD.md`.
{_standalone(m)}"""


def _standalone(m: dict) -> str:
    """The README's words on the ONNX bundle, when the export has one."""
    if not m.get("onnx"):
        return ""
    requires = " ".join(m["onnx"]["standalone"]["requires"])
    return f"""
## Without this project: ONNX Runtime

`model.onnx` is the same model (ONNX opset {m["onnx"]["opset"]}; on the {m["onnx"]["images"]} test images its
outputs differ from the Keras model's by at most {m["onnx"]["max_abs_difference"]:.1e}). `predict.py` needs only
`pip install {requires}`:

```bash
python predict.py IMAGE_OR_FOLDER... [--out predictions.csv]
```

It reads `export.json` (classes, input size, the preprocessing steps in `preprocess.py`, temperature, threshold).
{_int8(m["onnx"].get("int8"))}"""


def _int8(q: dict | None) -> str:
    """The README's words on the int8 model, when the export has one."""
    if not q:
        return ""
    change = ", ".join(f"{k} {q['test']['float32'][k]:.4f} -> {q['test']['int8'][k]:.4f}" for k in q["test_change"])
    return f"""
`model.int8.onnx` is the same model quantized to int8 by ONNX Runtime (calibrated on {q["calibration"]["images"]}
training images; {q["size_mb"]} MiB). On the test split: {change}. Use it with `python predict.py --int8 ...`.
"""


def export_best(
    experiment: str | Path,
    to: str | Path,
    family: str | None = None,
    metric: str | None = None,
    fmt: str = "keras",
    quantize: str | None = None,
    max_latency_ms: float | None = None,
    max_size_mb: float | None = None,
) -> Path:
    """Write the best trial (by validation) of a finished sweep to a new folder ``to``; return it. ``fmt``: "keras",
    or "onnx" for ``model.onnx`` and the standalone bundle beside the ``.keras`` (``search.outputs.deploy``), checked
    on the study's test split; ``quantize`` "int8" adds ``model.int8.onnx`` (calibrated on training images, its test
    metrics recorded beside the float model's). ``max_latency_ms``/``max_size_mb``: the best trial whose measured
    cost fits (``select_within_budget``). Everything is written to a temporary folder first and moved into
    place at the end: nothing partial is left."""
    import keras

    if fmt not in deploy.FORMATS:
        raise SweepError(f"--format {fmt}: choose one of {', '.join(deploy.FORMATS)}")
    if quantize is not None and (quantize not in deploy.QUANTIZATIONS or fmt != "onnx"):
        raise SweepError(f"--quantize {quantize}: choose one of {', '.join(deploy.QUANTIZATIONS)}, with --format onnx")

    experiment = store.normalize(experiment)
    sweep, study = load_sweep(experiment), load_study(experiment)
    metric, mode = selection_metric(study.task, metric)
    frame = load_results(experiment)
    if max_latency_ms is None and max_size_mb is None:
        row = select_best(frame, metric, mode, family)
    else:
        row = select_within_budget(frame, metric, mode, family, max_latency_ms, max_size_mb)
    to = refuse_inside(to, data_folders(study.data.data_dir), "--to")
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise SweepError(f"{to} exists and is not empty: export into a new folder")
    detail = load_details(experiment).get(row["trial"])
    manifest = export_manifest(row, study, sweep, metric, family, experiment, detail)
    if max_latency_ms is not None or max_size_mb is not None:
        manifest["selected_by"]["budget"] = {"max_latency_ms": max_latency_ms, "max_size_mb": max_size_mb}
    preds = load_predictions(experiment)
    if f"{row['trial']}/probs" in preds:  # a classifier's test predictions: its metrics with intervals
        manifest["test_intervals"] = summarize(preds[f"{row['trial']}/labels"], preds[f"{row['trial']}/probs"])
    with publish_folder(to) as staging, tempfile.TemporaryDirectory() as tmp:
        checkpoint = store.download(row["checkpoint"], tmp)
        files = checkpoints.model_files(checkpoint)
        if not all(f.is_file() for f in files):
            raise SweepError(f"the best trial's checkpoint {row['checkpoint']} has no {checkpoints.CHECKPOINT_MODEL}")
        if len(files) > 1:  # cross-validation: the fold models as one ensemble (mean of outputs)
            manifest["ensemble"] = {"folds": len(files), "combine": "mean of outputs"}
        if len(files) > 1 or checkpoints.head_record(checkpoint) is not None:  # a head: on its backbone
            checkpoints.whole_model(checkpoint, experiment).save(staging / MODEL_FILE)
        else:
            shutil.copyfile(files[0], staging / MODEL_FILE)
        model = keras.saving.load_model(staging / MODEL_FILE, safe_mode=True, compile=False)  # loadable as shipped
        manifest["parameters"] = int(model.count_params())
        if fmt == "onnx":  # converted, then checked against the model just loaded on the test split
            data, batch = study_data(study, _option(manifest, study)), study.train.batch_size
            manifest["onnx"] = deploy.add_onnx(staging, staging / MODEL_FILE, model, data.test.images, batch)
            if quantize == "int8":
                classes = tuple(manifest.get("classes") or ())
                manifest["onnx"]["int8"] = deploy.add_int8(staging, data, study.task, classes, batch)
        (staging / EXPORT_FILE).write_text(json.dumps(manifest, indent=2))
        (staging / STUDY_FILE).write_text(json.dumps(study.to_dict(), indent=2))
        (staging / "README.md").write_text(_readme(manifest))
        write_card(staging)
    return to


def check_export(model_dir: str | Path) -> dict:
    """The manifest of an exported folder, after checking it is one: every file there, export.json readable with the
    facts predictions need, model.keras an intact Keras archive. Cheap (no framework import); a clear error naming
    what is wrong otherwise."""
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise SweepError(f"{model_dir} is not a folder; give the folder `sweep export ... --to DIR` wrote")
    missing = [f for f in (MODEL_FILE, EXPORT_FILE, STUDY_FILE) if not (model_dir / f).is_file()]
    if missing:
        raise SweepError(
            f"{model_dir} is missing {', '.join(missing)}: it is not a complete exported model; export it again "
            "with `sweep export EXPERIMENT --to NEW_DIR`"
        )
    again = REEXPORT
    try:
        manifest = json.loads((model_dir / EXPORT_FILE).read_text())
        task, name, classes = manifest["task"], manifest["model"], manifest["classes"]
        size = manifest["preprocessing"]["input_size"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SweepError(f"{model_dir / EXPORT_FILE} is malformed ({type(exc).__name__}: {exc}); {again}") from None
    if not (task in TASKS and isinstance(name, str) and isinstance(classes, list) and isinstance(size, int)):
        raise SweepError(f"{model_dir / EXPORT_FILE} is malformed (task, model, classes or input size); {again}")
    onnx = manifest.get("onnx") or {}
    for listed in [onnx.get("file"), (onnx.get("int8") or {}).get("file")]:
        if listed and not (model_dir / listed).is_file():
            raise SweepError(f"{model_dir} is missing {listed} that its {EXPORT_FILE} lists; {again}")
    read_recorded(model_dir / STUDY_FILE, again)  # what serving and evaluating read, checked before anything starts
    try:
        with zipfile.ZipFile(model_dir / MODEL_FILE) as archive:
            damaged = archive.testzip()
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise SweepError(f"{model_dir / MODEL_FILE} is not a Keras model archive ({exc}); {again}") from None
    if damaged is not None or "config.json" not in names:
        what = f"{damaged} is damaged" if damaged else "it has no config.json"
        raise SweepError(f"{model_dir / MODEL_FILE} is not an intact Keras model archive ({what}); {again}")
    return manifest


def load_export(model_dir: str | Path, runtime: str = "keras"):
    """(model, manifest) of an exported folder; a clear error naming any missing or malformed file. ``runtime``
    (one of ``deploy.FORMATS``): "keras" loads ``model.keras`` with Keras; "onnx" runs ``model.onnx`` with ONNX
    Runtime and imports no deep-learning framework (an export made without ``--format onnx`` is refused)."""
    manifest = check_export(model_dir)
    folder = Path(model_dir).expanduser()
    if runtime == "onnx":
        if not manifest.get("onnx"):
            raise SweepError(
                f"{folder} has no {deploy.ONNX_FILE}: export it again with `sweep export EXPERIMENT --to DIR "
                "--format onnx`, or use the Keras runtime"
            )
        return deploy.OnnxModel(folder / deploy.ONNX_FILE), manifest
    import keras

    return keras.saving.load_model(folder / MODEL_FILE, safe_mode=True, compile=False), manifest


def image_paths(inputs: list[str | Path]) -> list[Path]:
    """The image files named, and those inside named folders (recursively, sorted); each once."""
    from data_pipeline.layout import IMAGE_EXTENSIONS

    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise SweepError(f"{item} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            out += found
        elif item.is_file():
            out.append(item)
        else:
            raise SweepError(f"{item} does not exist")
    first: dict[str, Path] = {}
    for p in out:
        first.setdefault(os.path.abspath(p), p)
    return list(first.values())


def temperature(manifest: dict) -> float | None:
    """The export's calibration temperature, None when its study did not calibrate."""
    return (manifest.get("calibration") or {}).get("temperature")


@dataclass(frozen=True)
class Predictions:
    """What an exported model says about images, in their order (`sweep predict` and `sweep serve` both report it)."""

    probabilities: np.ndarray  # classification: (n, classes) softmax; segmentation: (n, S, S) foreground probability
    labels: list[str] | None = None  # classification: the most probable class per image
    masks: list[np.ndarray] | None = None  # segmentation: 0/1 uint8 at each image's own size
    foreground: np.ndarray | None = None  # segmentation: fraction of pixels predicted foreground (at S×S)


def model_inputs(manifest: dict, originals: list[np.ndarray]) -> np.ndarray:
    """Decoded images as the model was trained on them: a classifier's preprocessing steps (data.preprocess: crop,
    musica, ...; exports made before they were recorded have none), then resized to the input size."""
    from data_pipeline import preprocess as preprocess_steps
    from data_pipeline.io import resize

    steps = () if task_info(manifest["task"]).masks else manifest["preprocessing"].get("steps") or ()
    size = manifest["preprocessing"]["input_size"]
    return np.stack([resize(preprocess_steps.apply(steps, o)[0] if steps else o, size) for o in originals])


def predict_arrays(model, manifest: dict, originals: list[np.ndarray], tta: bool = False) -> Predictions:
    """The one place predictions are made from decoded images (uint8 RGB, any size): each is resized as the
    training images were, the model runs (``tta``: averaged over flips and 90° rotations), a classifier's
    probabilities are calibrated when the export carries a temperature, and a segmenter's output is thresholded at
    the export's threshold."""
    import cv2

    from models.evaluation import predict

    probs = predict(model, model_inputs(manifest, originals), tta=tta)
    if not task_info(manifest["task"]).masks:
        if temperature(manifest) is not None:
            from models.stats import apply_temperature

            probs = apply_temperature(probs, temperature(manifest))
        return Predictions(probs, labels=[manifest["classes"][i] for i in probs.argmax(1)])
    masks = probs[..., 0] >= manifest["preprocessing"]["prediction_threshold"]
    full = [
        cv2.resize(m.astype(np.uint8), (o.shape[1], o.shape[0]), interpolation=cv2.INTER_NEAREST)
        for m, o in zip(masks, originals, strict=True)
    ]
    return Predictions(probs[..., 0], masks=full, foreground=masks.reshape(len(originals), -1).mean(1))


def predict_images(
    model_dir: str | Path,
    inputs: list[str | Path],
    out: str | Path | None = None,
    tta: bool = False,
    gradcam: bool = False,
) -> pd.DataFrame:
    """Predict every image; classification: label and probabilities per image (``out/predictions.csv``; calibrated
    when the export carries a temperature); segmentation: foreground fraction per image, and with ``out`` a mask
    PNG and an overlay PNG per image. ``tta``: average over flips and 90° rotations before thresholding.
    ``gradcam`` (classification, with ``out``): a Grad-CAM heatmap of the predicted class over each image, as the
    model saw it (``<image>_gradcam.png``). Output files are named after each image's path below the images'
    common folder (output_names). ``out`` may not be inside a folder holding an input image or the export's data
    folder, and no existing file is overwritten: both are refused before anything is read. All images are read and
    predicted before anything is written."""
    from data_pipeline.io import read_rgb

    manifest = check_export(model_dir)
    segmenter = task_info(manifest["task"]).masks
    if gradcam and not task_info(manifest["task"]).class_scores:
        raise SweepError(f"--gradcam explains a classifier; {model_dir} holds a {manifest['task']} model")
    paths = image_paths(inputs)
    names = output_names(paths)
    files: dict[str, list[Path]] = {}
    if out is not None:
        out = _prediction_folder(out, paths, model_dir)
        kinds = ("mask", "overlay") if segmenter else ("gradcam",) if gradcam else ()
        files = {kind: [out / f"{name}_{kind}.png" for name in names] for kind in kinds}
        _refuse_existing([*(p for group in files.values() for p in group), *([] if segmenter else [out / CSV])])
    model, _ = load_export(model_dir)
    originals = [read_rgb(p) for p in paths]  # a corrupt file fails here, naming its path, before any output
    pred = predict_arrays(model, manifest, originals, tta=tta)
    if not segmenter:
        classes = manifest["classes"]
        frame = pd.DataFrame(pred.probabilities, columns=[f"p_{c}" for c in classes])
        frame.insert(0, "label", pred.labels)
        frame.insert(0, "image", [str(p) for p in paths])
        if out is not None:
            if gradcam:
                frame["gradcam"] = _write_gradcam(model, manifest, originals, files["gradcam"])
            write_file(out / CSV, frame.to_csv(index=False).encode())
        return frame
    frame = pd.DataFrame({"image": [str(p) for p in paths], "foreground": pred.foreground})
    if out is not None:
        for mask_path, overlay_path, original, mask in zip(
            files["mask"], files["overlay"], originals, pred.masks, strict=True
        ):
            write_image(mask_path, mask * 255)
            write_image(overlay_path, overlay(original, mask))
        frame["mask"] = [str(p) for p in files["mask"]]
    return frame


CSV = "predictions.csv"


def _prediction_folder(out: str | Path, paths: list[Path], model_dir: str | Path) -> Path:
    """``out``'s real path, refused when it is inside a folder holding an input image (a ``<stem>_mask.png`` there
    is what the class-folders layout reads as ground truth) or the exported study's data folder."""
    protected = {p.resolve().parent: "a folder holding input images," for p in paths}
    study = recorded_study(model_dir)
    return refuse_inside(out, {**protected, **data_folders(study.data.data_dir)}, "--out")


def recorded_study(model_dir: str | Path) -> Study:
    """The study an export recorded (its ``study.json``), read by the study schema."""
    return read_recorded(Path(model_dir).expanduser() / STUDY_FILE, REEXPORT)[0]


def _refuse_existing(targets: list[Path]) -> None:
    existing = [p for p in targets if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise SweepError(
            f"--out: {existing[0]} exists{more}; predictions never overwrite files: give a new --out folder"
        )


def _write_gradcam(model, manifest: dict, originals: list[np.ndarray], paths: list[Path]) -> list[str]:
    """Grad-CAM overlays (models.gradcam) of the predicted class, one PNG per image; their paths."""
    from models.gradcam import gradcam, overlay

    images = model_inputs(manifest, originals)
    heatmaps = gradcam(model, images)
    for path, image, heat in zip(paths, images, heatmaps, strict=True):
        write_image(path, overlay(image, heat))
    return [str(p) for p in paths]


def output_names(paths: list[Path]) -> list[str]:
    """Where each image's outputs go below --out (pure): its path relative to the images' common folder, without its
    suffix (``d1/a.png``, ``d2/a.png`` -> ``d1/a``, ``d2/a``; one image: its stem). Images that would still share a
    name (``a.png``, ``a.jpg``) keep their suffix as ``a_png``, ``a_jpg``. Stable: the same inputs give the same
    names whatever else is in --out."""
    real = [Path(os.path.abspath(p)) for p in paths]
    root = Path(os.path.commonpath([p.parent for p in real]))
    rel = [p.relative_to(root) for p in real]
    plain = [r.with_suffix("").as_posix() for r in rel]
    names = [
        n if plain.count(n) == 1 else f"{n}_{r.suffix.lstrip('.').lower()}" for n, r in zip(plain, rel, strict=True)
    ]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise SweepError(f"two input images would both write {twice}_*.png; rename one of them")
    return names


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.45) -> np.ndarray:
    """The image with the mask's pixels tinted and its outline drawn (RGB uint8)."""
    import cv2

    out = image.copy()
    m = mask.astype(bool)
    out[m] = ((1 - alpha) * out[m] + alpha * np.asarray(color)).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, color, 1)
    return out


def evaluate_export(model_dir: str | Path, data_dir: str | None = None, tta: bool = False) -> tuple[dict, dict]:
    """(metrics now, metrics recorded at export) of an exported model on its study's test split, rebuilt from
    study.json (or on ``data_dir``'s test split, same split settings). ``tta``: with test-time augmentation, set
    against the ``tta_*`` metrics recorded when the study had ``search.tta``. With a temperature, the ECE after
    it (``ece_calibrated``) too."""
    from models import stats
    from models.evaluation import predict, report_from_probs

    model, manifest = load_export(model_dir)
    study = recorded_study(model_dir)
    data = study_data(study, _option(manifest, study), data_dir)
    if list(data.classes) != list(manifest["classes"]):
        raise SweepError(
            f"{data_dir or study.data.data_dir} holds classes {', '.join(data.classes)}, the model was trained on "
            f"{', '.join(manifest['classes'])}: pass the --data-dir of the study's dataset"
        )
    probs = predict(model, data.test.images, study.train.batch_size, tta=tta)
    report = report_from_probs(data.test, probs, manifest["task"], data.classes)
    if temperature(manifest) is not None and not tta:
        report["ece_calibrated"] = stats.ece(stats.apply_temperature(probs, temperature(manifest)), data.test.labels)
    recorded = manifest["test"]
    if tta:
        recorded = {k[4:]: v for k, v in recorded.items() if k.startswith("tta_")}
    return report, recorded


def _option(manifest: dict, study: Study) -> int:
    """The loading option the exported trial trained with."""
    return int(manifest["hyperparameters"].get("option", study.data.option))


def study_data(study: Study, option: int, data_dir: str | None = None):
    """The study's data split as its sweep split it (with ``option``; ``data_dir``: the same files elsewhere): its
    test split is the one the exported model was scored on."""
    import dataclasses

    from data_pipeline import prepare

    cfg = dataclasses.replace(study.data, option=option)
    return prepare(cfg if data_dir is None else dataclasses.replace(cfg, data_dir=str(data_dir)))
