"""Trust end to end: a real 2-fold cross-validated segmentation sweep at smoke scale with test-time augmentation;
its export (the fold models' ensemble) reproduces the sweep's test metrics, with and without TTA, in fresh
processes; the report says whether the winner is really better."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import assert_reproduces_test_metrics, export_best, run_sweep

COUNTS = [6, 8, 8, 6]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cv")
    spec = {
        "task": "segmentation",
        "search": {"folds": 2, "tta": True},
        "space": {"model": ["unet"], "lr": [0.01, 0.001], "dropout": [0.1]},
        "train": {"batch_size": 8, "epochs": 2, "base_filters": 4},
        "data": {"image_size": 32, "synthetic_counts": COUNTS, "synthetic_size": 32, "balance_to": 8},
        "scheduler": {"grace_period": 2, "reduction_factor": 2},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    }
    (tmp / "cv.yaml").write_text(yaml.safe_dump(spec))
    out = run_sweep("run", tmp / "cv.yaml", "--storage", tmp / "runs", "--name", "cv")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp / "runs" / "cv"


def test_folds_are_leak_free_and_each_trial_keeps_one_model_per_fold(experiment):
    data = json.loads((experiment / "sweep.json").read_text())["data"]["2"]
    assert len(data["folds"]) == 2 and data["leakage_audit"] == {"val": 0, "test": 0, "duplicates_crossing": 0}
    val_sizes = [f["splits"]["val"]["n"] for f in data["folds"]]
    assert sum(val_sizes) == sum(COUNTS) - data["splits"]["test"]["n"]  # the non-test originals, validated once
    for fold in data["folds"]:  # validation holds untouched originals, none derived from the fold's training images
        assert fold["splits"]["val"]["augmented"] == 0
        assert fold["leakage_audit"] == {"val": 0, "test": 0, "duplicates_crossing": 0}
        assert fold["splits"]["test"] == data["splits"]["test"]  # one fixed test split
    frame = pd.read_csv(experiment / "results.csv")
    assert len(frame) == 2 and frame["val_dice_std"].between(0, 1).all()  # the fold-mean score and its spread
    assert frame["val_dice_std"].gt(0).any()  # two folds' validation sets give two scores: a spread, not a copy
    for checkpoint in frame["checkpoint"]:
        assert sorted(p.name for p in Path(checkpoint).glob("*.keras")) == ["fold0.keras", "fold1.keras"]
    for column in ("test_dice", "test_tta_dice", "test_tta_iou"):
        assert frame[column].between(0, 1).all(), column


def test_ensemble_export_reproduces_test_metrics_with_and_without_tta_in_fresh_processes(experiment, tmp_path):
    frame = pd.read_csv(experiment / "results.csv")
    best = frame.loc[frame["val_dice"].idxmax()]
    model_dir = tmp_path / "ensemble"
    manifest = export_best(experiment, model_dir)
    assert manifest["ensemble"] == {"folds": 2, "combine": "mean of outputs"} and manifest["trial"] == best["trial"]
    assert_reproduces_test_metrics(model_dir, best, ["dice", "iou", "dice_per_image", "loss"])
    from search.outputs.export import evaluate_export  # `sweep evaluate --tta`, here: one fresh interpreter is enough

    now, recorded = evaluate_export(model_dir, tta=True)
    for metric in ("dice", "iou", "loss"):
        assert now[metric] == pytest.approx(best[f"test_tta_{metric}"], abs=1e-4) == recorded[metric], metric
    assert abs(now["loss"] - best["test_loss"]) > 1e-6  # the eight symmetries really were averaged: not the plain pass


def test_report_says_whether_the_winner_is_really_better(experiment):
    """The report's verdict against scipy's Wilcoxon test run here on the two trials' per-image Dice."""
    from scipy.stats import wilcoxon

    from search.study.experiment import load_predictions

    md = (experiment / "report" / "report.md").read_text()
    assert "## Is the winner really better? (test split)" in md
    frame = pd.read_csv(experiment / "results.csv").sort_values("val_dice", ascending=False, kind="stable")
    winner, runner_up = frame["trial"]
    preds = load_predictions(experiment)
    a, b = preds[f"{winner}/dice"], preds[f"{runner_up}/dice"]
    p = 1.0 if np.allclose(a, b) else float(wilcoxon(a, b).pvalue)
    said = f"The winner {winner} is "
    assert f"runner-up {runner_up}" in md and f"(per-image Dice difference {(a - b).mean():+.3f}, " in md
    assert f"Wilcoxon p = {p:.3g}, n = {len(a)}" in md
    if p >= 0.05:  # the rule: a real difference needs p < 0.05 and a bootstrap interval without 0
        assert f"{said}not distinguishable from runner-up {runner_up}" in md
    else:
        side = "better than" if (a - b).mean() > 0 else "worse than"
        assert f"{said}{side} runner-up" in md or f"{said}not distinguishable from runner-up" in md
    assert "## Test-time augmentation" in md and "Cross-validation: 2 folds" in md
    assert "std across 2 folds" in md
