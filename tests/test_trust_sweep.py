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


@pytest.fixture(scope="module")
def folds(experiment):
    """The sweep's two folds, split again here from its recorded study (one test split, each fold's validation)."""
    from data_pipeline import prepare_folds
    from search.study.experiment import load_study

    return prepare_folds(load_study(experiment).data, 2)


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


def _dice(masks: np.ndarray, probs: np.ndarray) -> float:
    """Dataset-level Dice of masks thresholded at 0.5: TP, FP and FN summed over every pixel of every image."""
    y, y_hat = masks.astype(bool), probs >= 0.5
    tp, fp, fn = (y & y_hat).sum(), (~y & y_hat).sum(), (y & ~y_hat).sum()
    return 1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _keras_model(path):
    """A saved model loaded with Keras alone (no code of the sweep's between the file and its outputs)."""
    import keras

    import models  # noqa: F401  (registers the models' custom layers with Keras)

    model = keras.saving.load_model(path, compile=False)
    return lambda x: keras.ops.convert_to_numpy(model(np.ascontiguousarray(x, np.float32), training=False))


def test_each_trials_score_and_spread_are_its_fold_models_mean_and_std_on_their_validation_splits(experiment, folds):
    """Each trial's fold models, loaded from its checkpoint and scored here on their own fold's validation images
    (Dice in NumPy): the mean of the two is the trial's val_dice and their sample standard deviation (ddof=1, as
    the trial computes it) its val_dice_std."""
    for _, row in pd.read_csv(experiment / "results.csv").iterrows():
        scores = []
        for i, fold in enumerate(folds):
            probs = _keras_model(Path(row["checkpoint"]) / f"fold{i}.keras")(fold.val.images)
            scores.append(_dice(fold.val.masks, probs[..., 0]))
        assert row["val_dice"] == pytest.approx(np.mean(scores), abs=1e-5), (row["trial"], scores)
        assert row["val_dice_std"] == pytest.approx(np.std(scores, ddof=1), abs=1e-5), (row["trial"], scores)


def test_ensemble_export_reproduces_test_metrics_with_and_without_tta_in_fresh_processes(experiment, folds, tmp_path):
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

    # TTA by hand: the exported ensemble (Keras alone) on the 8 symmetries of each test image, each mask turned back,
    # then averaged. The plain pass gives the sweep's test Dice, the average its TTA Dice, and the two differ.
    test = folds[0].test  # every fold's test split is the sweep's one
    model, outputs = _keras_model(model_dir / "model.keras"), []
    for turns in range(4):
        for flip in (False, True):
            view = np.rot90(test.images, turns, axes=(1, 2))
            out = model(view[:, :, ::-1] if flip else view)[..., 0]
            outputs.append(np.rot90(out[:, :, ::-1] if flip else out, -turns, axes=(1, 2)))
    plain, averaged = outputs[0], np.mean(outputs, axis=0)
    assert _dice(test.masks, plain) == pytest.approx(best["test_dice"], abs=1e-4)
    assert _dice(test.masks, averaged) == pytest.approx(best["test_tta_dice"], abs=1e-4)
    assert np.abs(averaged - plain).max() > 1e-3  # a model that is not symmetric: TTA changes what it says


def test_report_says_whether_the_winner_is_really_better(experiment):
    """The report's sentence on the winner against the runner-up, recomputed here from the two trials' per-image Dice:
    scipy's Wilcoxon p and paired percentile bootstrap interval (10,000 resamples, seed 0, as the report draws them),
    and the verdict they decide (a real difference needs p < 0.05 and an interval without 0)."""
    from scipy.stats import bootstrap, wilcoxon

    from search.study.experiment import load_predictions

    md = (experiment / "report" / "report.md").read_text()
    assert "## Is the winner really better? (test split)" in md
    frame = pd.read_csv(experiment / "results.csv").sort_values("val_dice", ascending=False, kind="stable")
    winner, runner_up = frame["trial"]
    preds = load_predictions(experiment)
    a, b = preds[f"{winner}/dice"], preds[f"{runner_up}/dice"]
    p = 1.0 if np.allclose(a, b) else float(wilcoxon(a, b).pvalue)
    interval = bootstrap(
        (a, b),
        lambda x, y, axis=-1: (x - y).mean(axis),
        paired=True,
        n_resamples=10_000,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    low, high = float(interval.low), float(interval.high)
    name = f"runner-up {runner_up}"
    if p < 0.05 and low > 0:
        lead = f"better than {name}"
    elif p < 0.05 and high < 0:
        lead = f"worse than {name}"
    else:
        lead = f"not distinguishable from {name} on this test set"
    span = f"{low:.3f}{' to ' if low < 0 else '–'}{high:.3f}"
    detail = f"per-image Dice difference {(a - b).mean():+.3f}, 95% CI {span}, Wilcoxon p = {p:.3g}, n = {len(a)}"
    assert f"The winner {winner} is {lead} ({detail})." in md
    assert "## Test-time augmentation" in md and "Cross-validation: 2 folds" in md
    assert "std across 2 folds" in md
