"""The study's comparison tables and a visual report from a finished sweep.

``tables`` computes the tables (pure functions of ``results.csv`` and ``sweep.json``), ``figures`` draws the figures
(also reading each trial's ``progress.csv`` and ``predictions.npz``), ``document`` lays both out as one list of
sections rendered to Markdown, HTML and LaTeX. ``write_report`` puts everything in one folder: report.md,
report.html (figures embedded), report.tex, one CSV per table, figures/.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from data_pipeline.files import data_folders, refuse_inside, write_file
from search import storage as store
from search.errors import SweepError
from search.outputs import importance
from search.outputs.report import figures as fig
from search.outputs.report import tables as tab
from search.outputs.report.document import render, sections
from search.study.experiment import (
    load_baselines,
    load_details,
    load_predictions,
    load_results,
    load_study,
    load_sweep,
)
from search.study.results import best_by
from search.study.spec import Study

FORMATS = ("md", "html", "csv", "tex")

__all__ = ["FORMATS", "build", "publish_report", "write_report"]


def build(experiment: str | Path, out: Path) -> dict[str, Any]:
    """Compute every table and write every figure of the report into ``out/figures``; return the parts."""
    experiment = store.normalize(experiment)
    frame = load_results(experiment)
    sweep, study = load_sweep(experiment), load_study(experiment)  # the record (data, resources) and its study
    task, max_epochs = study.task, study.train.epochs
    agg, ref = tab.aggregate(frame), tab.reference(task)
    per_trial, totals = tab.cost_table(frame, float(sweep["resources"]["gpus_per_trial"]), max_epochs)
    figs = fig.Figures(out / "figures")
    best = best_by(frame, study.metric, study.mode, by="model")  # each model's best trial, best first
    fig.plot_learning_curves(figs, experiment, best, task)
    fig.plot_heatmaps(figs, agg, task)
    fig.plot_epochs(figs, frame, max_epochs)
    mattered = importance.importance(frame, study.metric, study.mode)
    fig.plot_axis_effects(figs, frame, importance.searched_axes(frame), study.metric, study.mode)
    fig.plot_parallel_coordinates(figs, frame, importance.searched_axes(frame), study.metric, study.mode)
    fig.plot_pareto(figs, frame, study.metric, study.mode, study.front_cost)
    preds = load_predictions(experiment)
    comparisons, sentences = tab.paired_comparisons(frame, task, preds, tab.study_pick(ref, task))
    return {
        "experiment": experiment,
        "task": task,
        "tables": {tab.family_title(f): tab.family_table(agg, task, f) for f in tab.families(agg)},
        "summary": tab.summary_table(agg, task),
        "importance": mattered,
        "versus": tab.versus_study(agg, task, ref),
        "cost": per_trial,
        "deployment": tab.deployment_table(frame, study.metric, study.mode, study.front_cost),
        "study": study,
        "metric": study.metric,
        "unscored": tab.unscored_table(frame),
        "totals": pd.DataFrame([{"quantity": k, "value": v} for k, v in totals.items()]),
        "trust": tab.trust(agg, study, sweep["data"]),
        "comparisons": comparisons,
        "sentences": sentences,
        "tta": tab.tta_table(best, task) if study.search.tta else None,
        "baselines": tab.baselines_table(baselines, best) if (baselines := load_baselines(experiment)) else None,
        "figures": figs,
        "best_trial": None if best.empty else best.iloc[0]["trial"],
        **_best_trial(experiment, study, sweep["data"], best.head(1), preds, figs),
    }


def _best_trial(
    experiment: str, study: Study, data: dict, overall: pd.DataFrame, preds: dict, figs: fig.Figures
) -> dict[str, Any]:
    """The best trial's own figures (confusion matrix, ROC, reliability; or its predicted masks) and, for a
    classifier, its per-class and calibration tables."""
    details = load_details(experiment)
    out: dict[str, Any] = {"per_class": None, "calibration": None, "binary": None, "binary_positive": None}
    if overall.empty or overall.iloc[0]["trial"] not in details:
        return out
    row = overall.iloc[0]
    trial = row["trial"]
    if not study.facts.class_scores:
        if f"{trial}/masks" in preds:
            fig.plot_best_segmenter(figs, preds["images"], preds["truth"], preds[f"{trial}/masks"])
        return out
    report = details[trial]
    option = str(int(row["option"])) if "option" in overall else next(iter(data))
    probs, labels = preds.get(f"{trial}/probs"), preds.get(f"{trial}/labels")
    fig.plot_best_classifier(figs, report, data[option]["classes"], probs, labels)
    if probs is not None:
        fig.plot_reliability(figs, probs, labels, report.get("calibration", {}).get("temperature"))
    if "gradcam_heatmaps" in preds:
        heat = [preds[f"gradcam_{k}"] for k in ("images", "heatmaps", "labels", "predicted")]
        fig.plot_gradcam(figs, *heat, data[option]["classes"])
    return {
        "per_class": pd.DataFrame(report["per_class"]).T.rename_axis("class").reset_index(),
        "calibration": tab.calibration_table(row, report),
        "binary": tab.binary_table(report["binary"]) if "binary" in report else None,
        "binary_positive": report.get("binary", {}).get("positive_class"),
    }


def _slug(text: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in text).split())


def publish_report(experiment: str | Path, out: str | Path | None = None, formats: tuple[str, ...] = FORMATS) -> str:
    """Write the report into ``out``, by default EXPERIMENT/report (for an experiment in cloud storage: built in a
    temporary folder, then uploaded there); return where it is."""
    experiment = store.normalize(experiment)
    if out is not None or not store.is_uri(experiment):
        return str(write_report(experiment, out, formats))
    target = store.join(experiment, "report")
    with tempfile.TemporaryDirectory() as tmp:
        write_report(experiment, tmp, formats)
        store.upload(tmp, target)
    return target


def write_report(experiment: str | Path, out: str | Path | None = None, formats: tuple[str, ...] = FORMATS) -> Path:
    """Write the report in ``formats`` into ``out`` (default EXPERIMENT/report, local experiments only); return it."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise SweepError(f"--format {','.join(unknown)}: unknown; choose from {','.join(FORMATS)}")
    experiment = store.normalize(experiment)
    if out is None and store.is_uri(experiment):
        raise SweepError(f"{experiment} is in cloud storage: write its report locally with --out DIR")
    if out is not None:
        out = refuse_inside(out, data_folders(load_study(experiment).data.data_dir), "--out")
    out = Path(out) if out is not None else Path(experiment) / "report"
    out.mkdir(parents=True, exist_ok=True)
    parts = build(experiment, out)
    doc = sections(parts)
    for fmt in ("md", "html", "tex"):
        if fmt in formats:
            write_file(out / f"report.{fmt}", render(doc, fmt).encode())
    if "csv" in formats:
        tables = {"summary": parts["summary"], "versus_study": parts["versus"], "cost": parts["cost"]}
        tables["deployment"] = parts["deployment"]
        tables.update({f"table_{_slug(title)}": frame for title, frame in parts["tables"].items()})
        for name, frame in tables.items():
            write_file(out / f"{name}.csv", frame.to_csv(index=False).encode())
    return out
