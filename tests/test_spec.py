"""Study specs: built-ins load, presets merge, every problem is named with its field, param_space is Ray's."""

import pytest
import yaml

from search.study.spec import SpecError, builtin_studies, load_study, param_space


def test_builtin_studies_are_the_papers_grids():
    assert builtin_studies() == ["brain_mri", "brain_mri_segmentation", "classification", "segmentation"]
    seg = load_study("segmentation")
    n = 1
    for axis in ("model", "lr", "dropout"):
        n *= len(seg.space[axis])
    assert n == 36 and seg.metric == "val_dice" and seg.loss == "bce_dice"
    assert seg.train.batch_size == 32 and seg.train.epochs == 60


def test_classification_grid_is_48_and_demands_weights_up_front(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(SpecError, match="ImageNet weights for inception_resnet_v2 are not on this machine"):
        load_study("classification")
    study = load_study("classification", overrides={"train": {"weights": None}})
    space = param_space(study)
    sizes = [len(space[a]["grid_search"]) for a in ("model", "option", "lr", "dropout")]
    assert sizes == [2, 2, 4, 3] and sizes[0] * sizes[1] * sizes[2] * sizes[3] == 48


def test_smoke_preset_merges_over_the_study():
    smoke = load_study("classification", "smoke")
    assert smoke.name == "classification-smoke" and smoke.train.weights is None and smoke.train.epochs == 3
    assert smoke.train.batch_size == 16 and smoke.data.protocol == "leak_free"  # untouched keys survive


def test_setting_one_axis_keeps_the_others():
    """`--set space.dropout=[0.2]` narrows one axis of the 36-trial grid to 12 trials; a preset's space (smoke) still
    replaces the study's whole."""
    study = load_study("segmentation", overrides={"space": {"dropout": [0.2]}})
    assert study.space == {**load_study("segmentation").space, "dropout": [0.2]}
    assert len(study.space["model"]) * len(study.space["lr"]) * len(study.space["dropout"]) == 12
    assert load_study("segmentation", "smoke", {"space": {"dropout": [0.2]}}).space["lr"] == [0.01, 0.001]


def test_features_are_standardized_by_default_only_on_a_frozen_random_backbone(tmp_path):
    """auto: on with weights: null and a backbone frozen for the whole trial, off with a weights file (the study's
    head) or a backbone that trains or fine-tunes; an explicit value is kept; anything else is refused."""
    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"")  # a weights file the study names: its existence is what validation checks

    def standardized(**train):
        return load_study("classification", "smoke", {"train": train}).train.standardize_features

    assert standardized() is True
    assert standardized(weights=str(weights)) is False and standardized(freeze_backbone=False) is False
    assert standardized(fine_tune_layers=2, fine_tune_after=1) is False  # the features drift once it fine-tunes
    assert standardized(weights=str(weights), standardize_features=True) is True
    assert standardized(standardize_features=False) is False
    with pytest.raises(SpecError, match=r"train\.standardize_features: 'yes' must be true, false or auto"):
        standardized(standardize_features="yes")


def _write(tmp_path, spec):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_every_problem_named_with_its_field(tmp_path):
    spec = {
        "task": "segmentation",
        "space": {"model": ["unet", "resnet"], "lr": [0.0], "dropout": [1.5], "color": [1]},
        "train": {
            "epochs": 0,
            "batch_size": "big",
            "loss": "categorical_crossentropy",
            "typo": 1,
            "freeze_backbone": 1,
        },
        "data": {"image_size": 50, "data_dir": str(tmp_path / "missing")},
        "scheduler": {"grace_period": 3, "reduction_factor": 1},
        "extra": 1,
    }
    with pytest.raises(SpecError) as err:
        load_study(_write(tmp_path, spec))
    text = str(err.value)
    for expected in (
        "extra: unknown key",
        "space.color: unknown axis",
        "space.model: 'resnet' is not a registered segmentation model; one of deeplabv3_plus, fcn8, unet, unet_fpn, "
        "unet_fpn_gelu, unet_xception",
        "space.lr: 0.0 must be a number in (0, 10]",
        "space.dropout: 1.5 must be a number in [0, 1)",
        "train.epochs: 0 must be an integer >= 1",
        "train.batch_size: 'big' must be an integer >= 1",
        "train.freeze_backbone: 1 must be true or false",  # strict: a number never passes for true
        "train.typo: unknown key",
        "train.loss: 'categorical_crossentropy' is not one of binary_crossentropy, bce, dice, focal, bce_dice",
        "data.data_dir:",
        "needs input_size divisible by 16",
        "scheduler.reduction_factor: 1 must be a number > 1",
    ):
        assert expected in text, expected
    assert "scheduler.grace_period" not in text  # 3 epochs is within the 60 of train.epochs's default, 0 refused


def test_distributions_for_random_and_optuna(tmp_path):
    from ray.tune.search.sample import Categorical, Float

    spec = {
        "task": "segmentation",
        "search": {"algorithm": "optuna", "num_samples": 5},
        "space": {"model": ["unet"], "lr": {"loguniform": [1e-4, 1e-1]}, "dropout": {"uniform": [0, 0.5]}},
    }
    study = load_study(_write(tmp_path, spec))
    space = param_space(study)
    assert isinstance(space["model"], Categorical) and isinstance(space["lr"], Float)
    bad = {**spec, "space": {"model": ["unet"], "lr": {"loguniform": [0, 1]}}}
    with pytest.raises(SpecError, match="bounds must be > 0"):
        load_study(_write(tmp_path, bad))


def test_unknown_study_and_preset():
    studies = "brain_mri, brain_mri_segmentation, classification, segmentation"
    with pytest.raises(SpecError, match=rf"use a built-in study \({studies}\)"):
        load_study("classifcation")
    with pytest.raises(SpecError, match="no preset 'tiny'; presets: smoke"):
        load_study("segmentation", "tiny")


def test_repeats_run_each_configuration_with_more_seeds(tmp_path):
    study = load_study("segmentation", "smoke", {"search": {"repeats": 3}})
    space = param_space(study)
    assert space["repeat"] == {"grid_search": [0, 1, 2]}
    with pytest.raises(SpecError, match=r"search.repeats: 0 must be an integer >= 1"):
        load_study("segmentation", "smoke", {"search": {"repeats": 0}})
    with pytest.raises(SpecError, match=r"search.repeats: repeats need grid or random search"):
        load_study("segmentation", "smoke", {"search": {"repeats": 2, "algorithm": "optuna", "num_samples": 4}})
    assert "repeat" not in param_space(load_study("segmentation", "smoke"))


def test_fine_tuning_stage_is_validated_and_starts_once():
    from search.sweep.trial import fine_tune_starts

    study = load_study("classification", "smoke", {"train": {"fine_tune_layers": 20, "fine_tune_after": 2}})
    assert [e for e in range(study.train.epochs) if fine_tune_starts(e, study.train)] == [2]
    assert not any(fine_tune_starts(e, load_study("classification", "smoke").train) for e in range(3))
    with pytest.raises(SpecError) as err:
        load_study("classification", "smoke", {"train": {"fine_tune_layers": 20, "fine_tune_after": 3}})
    assert "train.fine_tune_after: must be in [1, train.epochs - 1] = [1, 2]" in str(err.value)
    with pytest.raises(SpecError, match="classification only"):
        load_study("segmentation", "smoke", {"train": {"fine_tune_layers": 5, "fine_tune_after": 1}})
    with pytest.raises(SpecError, match=r"fine_tune_lr_factor: 2.0 must be a number in \(0, 1\]"):
        load_study(
            "classification",
            "smoke",
            {"train": {"fine_tune_layers": 5, "fine_tune_after": 1, "fine_tune_lr_factor": 2.0}},
        )


def test_a_backend_that_is_not_installed_is_refused_before_anything_starts(tmp_path, capsys):
    """`--backend` against what this machine has: an installed one loads, a missing one is one line and exit 2
    (before Ray starts: every trial would fail on its own otherwise)."""
    import importlib.util

    from search.cli import main
    from search.study.spec import BACKENDS

    for backend in BACKENDS:
        if importlib.util.find_spec(backend) is not None:
            assert load_study("classification", "smoke", {"train": {"backend": backend}}).train.backend == backend
            continue
        storage = tmp_path / backend
        code = main(["run", "classification", "--preset", "smoke", "--backend", backend, "--storage", str(storage)])
        err = capsys.readouterr().err
        assert code == 2 and f"train.backend: {backend} is not installed here" in err and "Traceback" not in err
        assert not storage.exists()


def test_two_objectives_are_the_metric_and_a_cost_searched_by_optuna_without_early_stopping():
    from search.sweep.runner import _scheduler

    optuna = {"algorithm": "optuna", "num_samples": 4}
    study = load_study("segmentation", "smoke", {"search": {**optuna, "objectives": ["val_dice", "latency_ms"]}})
    assert study.objectives == [("val_dice", "max"), ("latency_ms", "min")] and study.cost_objective == "latency_ms"
    assert not study.early_stopping and _scheduler(study) is None  # every trial runs to its last epoch
    one = load_study("segmentation", "smoke")
    assert one.objectives == [("val_dice", "max")] and one.cost_objective is None and one.early_stopping
    from ray.tune.schedulers import ASHAScheduler

    assert isinstance(_scheduler(one), ASHAScheduler)
    bad = {
        "['val_dice']": {**optuna, "objectives": ["val_dice"]},
        "['val_loss', 'latency_ms']": {**optuna, "objectives": ["val_loss", "latency_ms"]},  # not the chosen metric
        "['val_dice', 'params'] must be [val_dice, one of latency_ms, size_mb]": {
            **optuna,
            "objectives": ["val_dice", "params"],
        },
        "['latency_ms', 'val_dice']": {**optuna, "objectives": ["latency_ms", "val_dice"]},  # the metric comes first
        "['val_dice', 'latency_ms', 'size_mb']": {**optuna, "objectives": ["val_dice", "latency_ms", "size_mb"]},
        "need search.algorithm optuna, not grid": {"objectives": ["val_dice", "size_mb"]},
        "use search.folds 1": {**optuna, "folds": 3, "objectives": ["val_dice", "size_mb"]},
    }
    for message, search in bad.items():
        with pytest.raises(SpecError, match=r"search\.objectives: .*" + message.replace("[", r"\[")):
            load_study("segmentation", "smoke", {"search": search, "data": {"protocol": "leak_free"}})
    # A model whose ONNX conversion is known to fail cannot have its cost measured: refused before anything runs
    space = {"model": ["custom_cnn", "convnext_tiny"], "lr": [0.01]}
    with pytest.raises(SpecError, match=r"search\.objectives: convnext_tiny's cost cannot be measured: it cannot be"):
        load_study(
            "classification",
            "smoke",
            {"search": {**optuna, "objectives": ["val_accuracy", "latency_ms"]}, "space": space},
        )


def test_a_model_takes_its_own_hyperparameter_defaults_where_the_study_sets_none():
    """A segmenter's width defaults to its own (DeepLabV3+ 256, FCN-8s 512, the U-Nets 32), not one value for all;
    a width the study sets wins for every model."""
    import models

    study = load_study("brain_mri_segmentation", "smoke", {"train": {"base_filters": None}})
    widths = {
        name: study.trial({"model": name, "lr": 0.01}).hyperparameters(models.get(name))
        for name in ("deeplabv3_plus", "fcn8", "unet_xception", "unet")
    }
    assert {n: hp["base_filters"] for n, hp in widths.items()} == {
        "deeplabv3_plus": 256,
        "fcn8": 512,
        "unet_xception": 32,
        "unet": 32,
    }
    assert widths["fcn8"] == {"base_filters": 512, "dropout": 0.0}
    set_by_study = load_study("brain_mri_segmentation", "smoke", {"train": {"base_filters": 8}})
    trial = set_by_study.trial({"model": "fcn8", "lr": 0.01, "dropout": 0.2, "base_filters": 4})
    assert trial.hyperparameters(models.get("fcn8")) == {"base_filters": 4, "dropout": 0.2}  # the axis
    trial = set_by_study.trial({"model": "fcn8", "lr": 0.01})
    assert trial.hyperparameters(models.get("fcn8"))["base_filters"] == 8
    # models.build fills in the same defaults: a U-Net built without base_filters has 32 filters in its first block
    unet = models.build("unet", num_classes=1, input_shape=(32, 32, 3))
    assert unet.get_layer("enc0_conv1").filters == 32
