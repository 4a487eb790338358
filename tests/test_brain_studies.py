"""The brain-MRI studies wired into the service: the built-in studies and their presets, the segmentation loss axis,
the positive class and binary metrics of a two-class classifier, and one smoke sweep per study through the real
pipeline (real Ray on 127.0.0.1, real files, the report read back)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_sweep

from search.study.spec import SpecError, load_study

# ---- the studies, pure ----------------------------------------------------------------------------------------------


def test_brain_mri_study_is_seed_003s_space_searched_at_random():
    study = load_study("brain_mri", overrides={"train": {"weights": None}})  # no ImageNet weights on CI
    assert study.task == "classification" and study.data.synthetic == "brain_mri"
    assert study.search.algorithm == "random" and study.search.num_samples == 40
    assert study.space["model"] == ["resnet50", "efficientnetv2_l", "convnext_base"]
    assert study.space["lr"] == [1e-5, 1e-4, 1e-3, 1e-2]
    assert study.space["optimizer"] == ["adam", "rmsprop", "sgd"]
    assert study.space["dropout"] == [0.2, 0.3, 0.4, 0.5]
    assert study.space["dense_units"] == [128, 256, 512] and study.space["batch_size"] == [16, 32, 64]
    assert [s if isinstance(s, str) else next(iter(s)) for s in study.data.preprocess] == ["crop", "musica"]
    assert study.train.online_augmentation


def test_brain_mri_segmentation_study_searches_models_lr_and_loss():
    study = load_study("brain_mri_segmentation")
    assert study.space["model"] == ["deeplabv3_plus", "unet_xception", "fcn8"]
    assert study.space["loss"] == ["bce", "dice", "focal", "bce_dice"]
    for preset in ("smoke", "quickstart"):
        small = load_study("brain_mri_segmentation", preset)
        assert small.train.weights is None and small.data.image_size <= 64


def test_loss_axis_is_validated_against_the_task_table(tmp_path):
    with pytest.raises(SpecError, match=r"space\.loss: 'hinge' is not one of .*bce_dice for segmentation"):
        load_study("brain_mri_segmentation", "smoke", overrides={"space": {"model": ["unet"], "lr": [0.1],
                                                                           "loss": ["dice", "hinge"]}})  # fmt: skip
    with pytest.raises(SpecError, match=r"space\.loss: unknown axis for classification"):
        load_study("brain_mri", "smoke", overrides={"space": {"model": ["custom_cnn"], "lr": [0.1], "loss": ["dice"]}})
    with pytest.raises(SpecError, match=r"space\.loss: loss takes a list or choice, not uniform"):
        load_study("segmentation", "smoke", overrides={"space": {"model": ["unet"], "lr": [0.1],
                                                                 "loss": {"uniform": [0, 1]}}})  # fmt: skip


def test_a_trial_trains_with_its_own_loss():
    from search.study.results import trial_name

    study = load_study("brain_mri_segmentation", "smoke")
    config = {"model": "unet_xception", "lr": 0.001, "dropout": 0.0, "loss": "dice"}
    assert study.trial_train(config).loss == "dice"
    assert study.trial_train({k: v for k, v in config.items() if k != "loss"}).loss is None  # the task's default
    assert trial_name(config).endswith("-dice")


# ---- the positive class and binary metrics, pure --------------------------------------------------------------------


def test_positive_class_defaults_to_the_second_sorted_class_and_is_validated():
    from data_pipeline import DataConfig
    from data_pipeline.config import positive_index
    from data_pipeline.errors import DataError

    assert positive_index(("no", "yes")) == 1
    assert positive_index(("tumour", "healthy"), None) == 0  # sorted: healthy, tumour
    assert positive_index(("no", "yes"), "no") == 0
    assert positive_index(("a", "b", "c")) is None
    with pytest.raises(DataError, match=r"data\.positive_class: 'maybe' is not one of the classes no, yes"):
        positive_index(("no", "yes"), "maybe")
    bad = DataConfig(synthetic="brain_mri", positive_class="tumour").problems()
    assert bad == ["positive_class: 'tumour' is not one of the classes no, yes"]
    assert DataConfig(synthetic="brain_mri", positive_class="no").problems() == []
    with pytest.raises(SpecError, match=r"data\.positive_class: 'Pre' needs two classes; this data has 4"):
        load_study("classification", "smoke", overrides={"data": {"positive_class": "Pre"}})


def test_binary_columns_and_table_from_a_known_case():
    from models.evaluation import binary_report
    from search.outputs.report.tables import binary_table
    from search.sweep.scoring import binary_columns

    # Validation: positives score 0.3-0.4, negatives 0.1-0.2, so Youden's J picks 0.3 (both rates perfect).
    val_labels, val_probs = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])
    test_labels, test_probs = np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.35, 0.32, 0.6, 0.9])
    binary = binary_report(val_labels, val_probs, test_labels, test_probs, 1, "yes")
    cols = binary_columns(binary)
    assert cols["youden_threshold"] == pytest.approx(0.3)
    assert cols["sensitivity"] == pytest.approx(2 / 3) and cols["specificity"] == 1.0  # at 0.5: 0.32 missed
    assert cols["youden_sensitivity"] == 1.0 and cols["youden_specificity"] == 0.5  # at 0.3: 0.35 a false alarm
    assert cols["youden_precision"] == pytest.approx(3 / 4) and cols["roc_auc"] == pytest.approx(5 / 6)
    assert all(isinstance(v, float) for v in cols.values())  # each becomes a test_* results column
    table = binary_table(binary)
    assert list(table["threshold"]) == pytest.approx([0.5, 0.3])
    assert list(table["sensitivity"]) == pytest.approx([2 / 3, 1.0])


# ---- one smoke sweep per study, through the real pipeline -----------------------------------------------------------


def _run(tmp, study: str) -> object:
    out = run_sweep("run", study, "--preset", "smoke", "--storage", tmp / "runs", "--name", study)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp / "runs" / study


@pytest.fixture(scope="module")
def brain_classification(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("brain"), "brain_mri")


@pytest.fixture(scope="module")
def brain_segmentation(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("brain_seg"), "brain_mri_segmentation")


def test_brain_mri_smoke_sweep_scores_the_positive_class(brain_classification):
    exp = brain_classification
    sweep = json.loads((exp / "sweep.json").read_text())
    data = next(iter(sweep["data"].values()))
    assert data["classes"] == ["no", "yes"]
    assert [s if isinstance(s, str) else next(iter(s)) for s in data["config"]["preprocess"]] == ["crop", "musica"]
    frame = pd.read_csv(exp / "results.csv")
    assert len(frame) == 2 and set(frame["model"]) == {"resnet50"}
    for col in ("roc_auc", "sensitivity", "specificity", "youden_threshold", "youden_sensitivity", "youden_f1"):
        assert frame[f"test_{col}"].notna().all(), col
    assert frame["test_youden_threshold"].between(0, 1).all()
    assert frame["test_sensitivity"].between(0, 1).all() and frame["test_specificity"].between(0, 1).all()
    report = (exp / "report" / "report.md").read_text()
    assert "positive class 'yes' (test split)" in report and "Youden's J on validation" in report
    # Grad-CAM of the best classifier: up to two test images per class, heatmaps in [0, 1] of the image's size
    with np.load(exp / "predictions.npz") as z:
        images, heat, labels = z["gradcam_images"], z["gradcam_heatmaps"], z["gradcam_labels"]
    assert list(labels) == sorted(labels) and set(labels) == {0, 1} and np.bincount(labels).max() <= 2
    assert heat.shape == images.shape[:3] == (len(labels), 32, 32)
    assert heat.min() >= 0 and heat.max() <= 1
    assert (exp / "report" / "figures" / "gradcam.png").is_file() and "Grad-CAM of the best classifier" in report


def test_brain_mri_segmentation_smoke_sweep_searches_the_loss(brain_segmentation):
    exp = brain_segmentation
    frame = pd.read_csv(exp / "results.csv")
    assert sorted(frame["loss"]) == ["bce_dice", "dice"] and set(frame["model"]) == {"unet_xception"}
    assert frame["test_dice"].between(0, 1).all()
    for trial_dir in (d for d in exp.iterdir() if d.is_dir() and d.name.startswith("unet_xception")):
        config = json.loads((trial_dir / "params.json").read_text())
        assert f"-{config['loss']}-" in trial_dir.name
    table = pd.read_csv(exp / "report" / "table_unet_xception.csv")
    assert sorted(table["loss function"]) == ["bce_dice", "dice"] and "loss" in table  # the axis and test loss
    baselines = json.loads((exp / "baselines.json").read_text())
    assert [b["model"] for b in baselines] == ["hsv_threshold", "kmeans"]
    assert all(0 <= b["dice"] <= 1 and 0 <= b["boundary_f1"] <= 1 for b in baselines)
    report = (exp / "report" / "report.md").read_text()
    assert "What training adds: classical baselines" in report and report.count("baseline (no training)") == 2


def test_baselines_table_puts_baselines_beside_each_models_best():
    from search.outputs.report.tables import BASELINE_COLUMNS, baselines_table

    baselines = [{"model": "kmeans", "dice": 0.25, "iou": 0.1}]
    best = pd.DataFrame([{"trial": "unet-lr0.01-do0", **{f"test_{c}": 0.5 for c in BASELINE_COLUMNS}}])
    table = baselines_table(baselines, best)
    assert list(table["model"]) == ["kmeans", "unet-lr0.01-do0"]
    assert list(table["kind"]) == ["baseline (no training)", "trained, chosen on validation"]
    assert table.loc[0, "dice"] == 0.25 and np.isnan(table.loc[0, "recall"]) and table.loc[1, "dice"] == 0.5


def test_predict_gradcam_writes_heatmaps_for_a_users_images(brain_classification, tmp_path):
    import cv2
    from conftest import export_best

    from data_pipeline import synth_mri

    manifest = export_best(brain_classification, tmp_path / "model")
    assert [next(iter(s)) for s in manifest["preprocessing"]["steps"]] == ["crop", "musica"]  # applied by predict
    image, _ = synth_mri.render("yes", 0, 96, seed=7)  # a user's slice, at another size than the model's input
    (tmp_path / "mine").mkdir()
    cv2.imwrite(str(tmp_path / "mine" / "slice.png"), image)
    slice_png = tmp_path / "mine" / "slice.png"
    out = run_sweep("predict", tmp_path / "model", slice_png, "--out", tmp_path / "out", "--gradcam")
    assert out.returncode == 0, out.stderr[-3000:]
    heat = cv2.imread(str(tmp_path / "out" / "slice_gradcam.png"))
    assert heat.shape == (32, 32, 3)  # the overlay on the image as the model saw it
    assert "slice_gradcam.png" in (tmp_path / "out" / "predictions.csv").read_text()
    refused = run_sweep("predict", tmp_path / "model", slice_png, "--gradcam")
    assert refused.returncode == 2 and "--gradcam writes heatmap PNGs: give --out DIR" in refused.stderr
