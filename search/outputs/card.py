"""The model card every export carries: ``MODEL_CARD.md`` and ``model_card.json``, rebuilt from the export folder.

The card is made from what the folder records (``export.json``, ``study.json`` and any ``external-*.json`` that
``sweep evaluate --data-dir OTHER`` wrote there), so regenerating it after an external validation adds that
validation and nothing else changes. It is one document (``search.outputs.report.document``'s sections) rendered to
Markdown for the folder and to HTML for the serve page's "Model card" link; the JSON holds the same facts.

Which reporting-checklist items it covers is said in the card itself (``CHECKLISTS``): TRIPOD+AI (Collins et al.,
BMJ 2024;385:e078378) and CLAIM (Mongan et al., Radiology: Artificial Intelligence 2020), by item number. Items a
card cannot answer from a sweep's records (ethics, funding, eligibility of patients, reference standard, ...) are
not claimed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.tasks import task_info
from search.study.spec import read_recorded

CARD_FILE = "MODEL_CARD.md"
CARD_JSON = "model_card.json"
EXPORT_FILE = "export.json"  # the export's manifest and its study record: what the card is made from
STUDY_FILE = "study.json"
REEXPORT = "export it again with `sweep export EXPERIMENT --to NEW_DIR`"  # what to do about a damaged export
EXTERNAL_PREFIX = "external-"  # external validations written next to the model: external-<name>.json/.md/.html
DISCLAIMER = (
    "This is a research model. It is not a diagnostic device: it must not be used to diagnose, treat or rule out "
    "any disease. A qualified person must read every image."
)
SYNTHETIC_WHAT = {"leukemia": "blood-smear", "brain_mri": "brain MRI"}  # data.synthetic -> what its images show
# What the sweep may record about patient groups and duplicate images (sweep.json's data section, its leakage audit,
# or the study's data settings): shown when present, "not grouped" / "not checked" otherwise.
HANDLING_KEYS = ("group_by", "groups_crossing", "duplicates", "duplicates_crossing")
DUPLICATES_DONE = {  # data.duplicates, in words
    "group": "each cluster of copies kept in one split (data.duplicates: group)",
    "drop": "one image of each cluster kept, the others left out (data.duplicates: drop)",
    "ignore": "split like any images (data.duplicates: ignore)",
}
METRIC_NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1": "macro F1",
    "roc_auc": "AUROC (macro, one-vs-rest)",
    "ece": "ECE (15 bins)",
}
BOOTSTRAP = (
    "95% percentile intervals from 10,000 bootstrap resamples of the images (seed 0). Balanced accuracy and AUROC "
    "average over the classes present; macro F1 over all the model's classes. ECE is biased upward on small sets "
    "(and on resamples): its interval can lie above the estimate."
)
# (card section, TRIPOD+AI items, CLAIM 2020 items, shown when): only items the section answers.
CHECKLISTS = (
    ("Intended use", "3b (intended use), 15 (model output)", "3 (intended use), 39 (intended use)", "always"),
    ("Data", "5a (data sources), 7 (data preparation)", "7 (data sources), 9 (pre-processing)", "always"),
    ("Data: counts per class and split", "12a (how data were used, partitions)", "20 (partitions)", "always"),
    (
        "How groups and duplicates were handled",
        "12a (partitions)",
        "21 (level at which partitions are disjoint)",
        "always",
    ),
    (
        "How the model was chosen",
        "12c (model type, building, tuning, internal validation)",
        "22 (model), 25 (training details), 26 (selecting the final model)",
        "always",
    ),
    ("How the model was chosen", "", "27 (ensembling)", "ensemble"),
    (
        "Test metrics",
        "12e (performance measures), 25 (performance with confidence intervals)",
        "28 (metrics), 29 (uncertainty), 36 (estimates and their precision)",
        "always",
    ),
    ("Calibration", "12e (calibration)", "28 (metrics)", "calibration"),
    ("Calibration", "12f (recalibration)", "", "temperature"),
    ("External validation", "25 (performance, with subgroups)", "32 (external data)", "external"),
    ("Limitations", "27b (limitations)", "38 (limitations)", "always"),
)


# ---- facts (pure) --------------------------------------------------------------------------------------------------


def reliability_rows(probs: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """The reliability table: per non-empty confidence bin, its range, images, mean confidence and accuracy."""
    from models import stats

    r = stats.reliability(probs, labels)
    bins = len(r["count"])
    return [
        {
            "confidence bin": f"({b / bins:.2f}, {(b + 1) / bins:.2f}]",
            "n": int(r["count"][b]),
            "mean confidence": float(r["confidence"][b]),
            "accuracy": float(r["accuracy"][b]),
        }
        for b in range(bins)
        if r["count"][b] > 0
    ]


def summarize(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """One classifier on one set of images: n, each metric with its bootstrap interval, the reliability table."""
    from models import stats

    intervals = stats.classifier_intervals(labels, probs)
    return {
        "n": len(labels),
        "metrics": {k: {b: _finite(v) for b, v in m.items()} for k, m in intervals.items()},
        "reliability": reliability_rows(probs, labels),
    }


def _finite(value: float) -> float | None:
    """JSON has no NaN: a metric undefined here (AUROC with one class, an interval of one image) is None."""
    return float(value) if np.isfinite(value) else None


def trained_on(manifest: dict, study: dict) -> str:
    """A plain sentence saying what data the model learned from and was tested on."""
    data = study.get("data", {})
    splits = manifest.get("data", {}).get("splits", {})
    what = SYNTHETIC_WHAT.get(data.get("synthetic", "leukemia"), "image")
    source = (
        f"the built-in synthetic {what} dataset: computer-generated pictures, not images of patients"
        if data.get("data_dir") is None
        else f"the images in the folder {Path(data['data_dir']).name}"
    )
    size = manifest["preprocessing"]["input_size"]
    facts = task_info(manifest["task"])
    target = f"{facts.target} {', '.join(manifest['classes'])}" if facts.class_scores else facts.target
    counts = ""
    if "train" in splits and "test" in splits:
        counts = (
            f" It learned from {splits['train']['n']} images, was chosen on {splits.get('val', {}).get('n', '?')} "
            f"others and tested on {splits['test']['n']} images it never saw before."
        )
    return f"Trained to predict {target} from {source}, at {size}×{size} pixels.{counts}"


def _fact(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fact(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return f"{len(value)}" + (
            f" ({', '.join(map(str, value[:5]))}{', ...' if len(value) > 5 else ''})" if value else ""
        )
    return str(value)


def handling(manifest: dict, study: dict) -> dict[str, Any]:
    """How patient groups and duplicate images were handled, from whatever the sweep recorded (``HANDLING_KEYS`` in
    the study's data settings, the export's data record or its leakage audit), in words."""
    data = manifest.get("data", {})
    audit = data.get("leakage_audit", {})
    facts = {}
    for source in (study.get("data", {}), data, audit):
        facts.update({k: source[k] for k in HANDLING_KEYS if source.get(k) is not None})
    if "group_by" in facts:
        groups = f"grouped by `{facts['group_by']}`: split so that a group's images stay in one split"
        if "groups_crossing" in facts:
            groups += f"; groups found in more than one split: {_fact(facts['groups_crossing'])}"
    else:
        groups = (
            "not grouped (data.group_by not set): images were split one by one, so images of one patient may be "
            "in both training and test"
        )
    if "duplicates" in facts:  # the study's data.duplicates: what the sweep did with the copies it found
        duplicates = "exact and near copies looked for; " + DUPLICATES_DONE.get(
            facts["duplicates"], f"data.duplicates: {_fact(facts['duplicates'])}"
        )
        if "duplicates_crossing" in facts:
            duplicates += f"; pairs of copies split apart: {_fact(facts['duplicates_crossing'])}"
    else:
        duplicates = "not checked: identical or near-identical images may sit in both training and test"
    copies = {k: v for k, v in audit.items() if k in ("val", "test")}
    augmented = (
        f"{copies.get('val', 0)} validation and {copies.get('test', 0)} test images share their source image with "
        "training (augmented copies); 0 means none"
        if copies
        else "not recorded"
    )
    return {"groups": groups, "duplicates": duplicates, "augmented_copies": augmented, "recorded": facts}


def _limitations(card: dict) -> list[str]:
    out = []
    if card["data"]["data_dir"] is None:
        out.append(
            "Trained and tested on computer-generated images, not images of patients: nothing here says how it "
            "does on real ones."
        )
    n = card["test"].get("n") or card["data"]["splits"].get("test", {}).get("n")
    if not card["external"]:
        out.append(
            f"Tested on {n} held-out images from the same source as its training data (internal validation only); "
            "no external dataset yet: `sweep evaluate MODEL --data-dir OTHER`."
        )
    if card["handling"]["groups"].startswith("not grouped"):
        out.append("Not split by patient: test numbers may be optimistic if one patient has several images.")
    if card["handling"]["duplicates"].startswith("not checked"):
        out.append("Duplicate images were not looked for: a duplicate across splits makes test numbers optimistic.")
    if card["calibration"].get("temperature") is not None:
        out.append("Calibrated (temperature) on the validation split of the training source; other sites may differ.")
    size = card["input_size"]
    out.append(f"Images are resized to {size}×{size} pixels: detail finer than that is not seen.")
    return out


def model_card(manifest: dict, study: dict, external: list[dict]) -> dict[str, Any]:
    """Every fact of the card, JSON-ready, from the export's manifest, its study record and the external
    validations done since (pure)."""
    data = study.get("data", {})
    uncertainty = manifest.get("test_intervals") or {}
    calibration = manifest.get("calibration") or {}
    card = {
        "model": manifest["model"],
        "task": manifest["task"],
        "trial": manifest.get("trial"),
        "experiment": Path(manifest.get("experiment", "")).name,
        "parameters": manifest.get("parameters"),
        "input_size": manifest["preprocessing"]["input_size"],
        "classes": manifest["classes"],
        "intended_use": _intended_use(manifest),
        "warning": DISCLAIMER,
        "data": {
            "source": trained_on(manifest, study),
            "data_dir": None if data.get("data_dir") is None else Path(data["data_dir"]).name,
            "layout": manifest.get("data", {}).get("layout"),
            "fingerprint": manifest.get("data", {}).get("fingerprint"),
            "preprocessing": manifest["preprocessing"],
            "splits": manifest.get("data", {}).get("splits", {}),
        },
        "handling": handling(manifest, study),
        "selection": {
            **manifest.get("selected_by", {}),
            "hyperparameters": manifest.get("hyperparameters", {}),
            "epochs": manifest.get("epochs"),
            "best_epoch": manifest.get("best_epoch"),
            "ensemble": manifest.get("ensemble"),
        },
        "test": {"n": uncertainty.get("n"), "recorded": manifest.get("test", {}), **uncertainty},
        "calibration": {
            "ece": manifest.get("test", {}).get("ece"),
            "temperature": calibration.get("temperature"),
            "fitted_on": calibration.get("fitted_on"),
            "ece_calibrated": manifest.get("test", {}).get("ece_calibrated"),
        },
        "external": [_external_summary(e) for e in external],
    }
    card["limitations"] = _limitations(card)
    when = {
        "always": True,
        "calibration": card["calibration"]["ece"] is not None,
        "ensemble": bool(manifest.get("ensemble")),
        "temperature": calibration.get("temperature") is not None,
        "external": bool(external),
    }
    card["checklists"] = [
        {"card section": s, "TRIPOD+AI": t, "CLAIM": c} for s, t, c, w in CHECKLISTS if when[w] and (t or c)
    ]
    return card


def _intended_use(manifest: dict) -> str:
    like = "in images like its training data (same stain, magnification and acquisition)"
    if task_info(manifest["task"]).masks:
        return f"Research on segmenting cells (the foreground) {like}; output: a foreground probability per pixel."
    calibrated = (manifest.get("calibration") or {}).get("temperature") is not None
    return f"Research on classifying {', '.join(manifest['classes'])} {like}; output: a probability per class" + (
        ", calibrated by the recorded temperature." if calibrated else "."
    )


def _external_summary(e: dict) -> dict:
    """An external validation as the card shows it: its data folder by name only (the card is served)."""
    keep = ("name", "n", "metrics", "by", "subgroups", "temperature", "tta")
    data = {k: v for k, v in e["data"].items() if k != "source"}
    return {**{k: e[k] for k in keep if k in e}, "data": {**data, "folder": Path(data["folder"]).name}}


# ---- the document --------------------------------------------------------------------------------------------------


def interval_table(metrics: dict[str, dict[str, float]]) -> pd.DataFrame:
    """metric | value | 95% CI, one row per metric with an interval."""
    return pd.DataFrame(
        [
            {"metric": METRIC_NAMES.get(k, k), "value": m["value"], "95% CI": _ci(m)}
            for k, m in metrics.items()
            if k in METRIC_NAMES
        ]
    )


def _ci(m: dict[str, float | None]) -> str:
    if m["low"] is None or m["high"] is None:
        return "–"
    return f"{m['low']:.3f}–{m['high']:.3f}"


def subgroup_table(groups: list[dict], by: str) -> pd.DataFrame:
    """One row per subgroup: its value, n, then each metric as "value (low–high)"."""
    rows = []
    for g in groups:
        row = {by: g["value"], "n": g["n"]}
        for k, m in g["metrics"].items():
            row[METRIC_NAMES.get(k, k)] = "–" if m["value"] is None else f"{m['value']:.3f} ({_ci(m)})"
        rows.append(row)
    return pd.DataFrame(rows)


def _counts_table(classes: list[str], splits: dict) -> pd.DataFrame:
    frame = pd.DataFrame({"class": classes})
    for name, s in splits.items():
        if "per_class" in s:
            frame[f"{name} (augmented {s.get('augmented', 0)})" if s.get("augmented") else name] = s["per_class"]
    return frame


def external_blocks(e: dict) -> tuple:
    """An external validation's metrics, and its subgroups when it has them, as document blocks."""
    from search.outputs.report.document import Note, Table

    blocks = [Table(interval_table(e["metrics"]))]
    if e.get("subgroups"):
        blocks.append(Table(subgroup_table(e["subgroups"], e["by"])))
    return (*blocks, Note(BOOTSTRAP))


def card_sections(card: dict) -> list:
    """The card, in reading order, as the report's document sections (pure)."""
    from search.outputs.report.document import Note, Section, Table

    title = f"Model card: {card['model']} ({card['task']})"
    lead = (
        f"Trial `{card['trial']}` of sweep `{card['experiment']}`; {card['parameters']:,} parameters."
        if (card["parameters"])
        else f"Trial `{card['trial']}` of sweep `{card['experiment']}`."
    )
    data, test, cal = card["data"], card["test"], card["calibration"]
    out = [
        Section(title, level=1, lead=(lead,)),
        Section("Intended use", lead=(card["intended_use"],), bullets=(f"**{card['warning']}**",)),
        Section(
            "Data",
            lead=(data["source"],),
            bullets=(
                f"Data fingerprint: `{data['fingerprint']}` (layout {data['layout'] or 'as recorded'})",
                f"Input: {data['preprocessing']['input']}; normalisation inside the model: "
                f"{data['preprocessing']['normalisation']}",
                f"Pre-processing steps: {_steps(data['preprocessing'].get('steps'))}",
            ),
            blocks=(Table(_counts_table(card["classes"], data["splits"])),),
        ),
        Section(
            "How groups and duplicates were handled",
            bullets=(
                f"Patient groups: {card['handling']['groups']}",
                f"Duplicates: {card['handling']['duplicates']}",
                f"Leakage audit: {card['handling']['augmented_copies']}",
            ),
        ),
        Section("How the model was chosen", bullets=_selection_lines(card["selection"])),
    ]
    if test.get("metrics"):
        out.append(
            Section(
                "Test metrics (held-out test split)",
                lead=(f"{test['n']} images, never used for training or choosing.",),
                blocks=(Table(interval_table(test["metrics"])), Note(BOOTSTRAP)),
            )
        )
    else:
        recorded = pd.DataFrame([{"metric": k, "value": v} for k, v in test["recorded"].items() if v is not None])
        out.append(
            Section("Test metrics (held-out test split)", lead=("No intervals recorded.",), blocks=(Table(recorded),))
        )
    if cal["ece"] is not None:
        out.append(_calibration_section(cal, test))
    if card["external"]:
        for e in card["external"]:
            d = e["data"]
            lead = (
                f"{e['n']} images of `{d['folder']}` (layout {d['layout']}, fingerprint `{d['fingerprint']}`), a "
                "dataset the sweep never saw"
                + (f"; subgroups by `{e['by']}`" if e.get("by") else "")
                + ("; probabilities after the export's temperature" if e.get("temperature") is not None else "")
                + ".",
            )
            out.append(Section(f"External validation: {e['name']}", lead=lead, blocks=external_blocks(e)))
    else:
        out.append(Section("External validation", lead=("None yet: `sweep evaluate MODEL --data-dir OTHER`.",)))
    out.append(Section("Limitations", bullets=tuple(card["limitations"])))
    checklists = pd.DataFrame(card["checklists"])
    note = Note(
        "TRIPOD+AI (Collins et al., BMJ 2024) and CLAIM (Mongan et al., Radiology: AI 2020) item numbers; items "
        "not listed are not covered by this card (study design, participants, reference standard, ethics, funding)."
    )
    out.append(Section("Reporting checklist items covered", blocks=(Table(checklists), note)))
    return out


def _calibration_section(cal: dict, test: dict):
    from search.outputs.report.document import Section, Table

    cal_rows = [("test ECE (15 bins)", cal["ece"])]
    if cal["temperature"] is not None:
        cal_rows += [
            (f"temperature (fitted on {cal['fitted_on']})", cal["temperature"]),
            ("test ECE after it", cal["ece_calibrated"]),
        ]
    cal_blocks = [Table(pd.DataFrame(cal_rows, columns=["quantity", "value"]))]
    if test.get("reliability"):
        cal_blocks.append(Table(pd.DataFrame(test["reliability"])))
    return Section("Calibration", blocks=tuple(cal_blocks))


def _steps(steps: list[dict] | None) -> str:
    return "; ".join(", ".join(f"{k} {v}" for k, v in step.items()) for step in steps or ()) or "none"


def _selection_lines(s: dict) -> tuple[str, ...]:
    hp = ", ".join(f"{k} = {v}" for k, v in s["hyperparameters"].items()) or "none"
    lines = [
        f"The trial with the best validation `{s.get('metric')}` among {s.get('family')} model families; the test "
        "split played no part in choosing it",
        f"Hyperparameters: {hp}",
        f"Trained {s['epochs']} epochs; checkpoint of epoch {s['best_epoch']}"
        if s.get("best_epoch") is not None
        else f"Trained {s['epochs']} epochs",
    ]
    if s.get("ensemble"):
        lines.append(
            f"An ensemble of {s['ensemble']['folds']} cross-validation fold models ({s['ensemble']['combine']})"
        )
    return tuple(lines)


# ---- the files -----------------------------------------------------------------------------------------------------


def external_records(model_dir: str | Path) -> list[dict]:
    """The external validations written next to the model (external-*.json), by name."""
    return [json.loads(p.read_text()) for p in sorted(Path(model_dir).glob(f"{EXTERNAL_PREFIX}*.json"))]


def card_of(model_dir: str | Path) -> dict:
    """The card of an export folder, from its files."""
    folder = Path(model_dir).expanduser()
    manifest = json.loads((folder / EXPORT_FILE).read_text())
    _, study = read_recorded(folder / STUDY_FILE, REEXPORT)
    return model_card(manifest, study, external_records(folder))


def render_card(card: dict, fmt: str) -> str:
    """The card in ``fmt`` (md or html)."""
    from search.outputs.report.document import render

    return render(card_sections(card), fmt)


def write_card(model_dir: str | Path) -> Path:
    """(Re)write MODEL_CARD.md and model_card.json in an export folder; the Markdown's path."""
    from data_pipeline.files import write_file

    folder = Path(model_dir).expanduser()
    card = card_of(folder)
    write_file(folder / CARD_JSON, json.dumps(card, indent=2, allow_nan=False, default=_json_safe).encode())
    return write_file(folder / CARD_FILE, render_card(card, "md").encode())


def _json_safe(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
