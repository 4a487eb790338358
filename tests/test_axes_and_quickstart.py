"""Issue 15: the search axes (optimizer, weight_decay, lr_schedule, batch_size, dense_units, base_filters, blocks),
their validation, optimizers and schedules that survive a checkpoint, a CNN that learns from scratch, the quickstart
presets, and a real sweep whose axis values reach the trial."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import read_hparams, run_sweep

from search.study.spec import SpecError, load_study


def _write(tmp_path, spec, name="study.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


# ---- the spec ---------------------------------------------------------------------------------------------------


def test_quickstart_presets_are_small_searches_that_train_from_scratch():
    cls = load_study("classification", "quickstart")
    assert cls.space["model"] == ["custom_cnn"] and cls.train.weights is None and not cls.train.freeze_backbone
    trials = math.prod(len(v) for v in cls.space.values())
    assert trials >= 6 and set(cls.space["optimizer"]) == {"adam", "sgd"} and cls.data.image_size <= 64
    assert cls.scheduler.grace_period < cls.train.epochs  # ASHA has room to stop the poor ones
    seg = load_study("segmentation", "quickstart")
    assert set(seg.space["model"]) <= {"unet", "unet_fpn", "unet_fpn_gelu"} and seg.data.image_size <= 64


def test_new_axes_are_validated_with_their_field(tmp_path):
    spec = {
        "task": "classification",
        "space": {
            "model": ["custom_cnn"],
            "lr": [0.01],
            "optimizer": ["adam", "nadam"],
            "batch_size": {"uniform": [8, 64]},
            "weight_decay": [-0.1],
            "lr_schedule": ["cosine", "step"],
            "blocks": [9],
        },
        "train": {"optimizer": "lbfgs", "dense_units": 0, "weights": None},
        "data": {"image_size": 48},
    }
    with pytest.raises(SpecError) as err:
        load_study(_write(tmp_path, spec))
    text = str(err.value)
    assert "space.optimizer: 'nadam' must be one of adam, rmsprop, sgd, adamw" in text
    assert "space.batch_size: batch_size takes a list or choice, not uniform" in text
    assert "space.weight_decay: -0.1 must be a number in [0, 1)" in text
    assert "space.lr_schedule: 'step' must be one of constant, cosine, exponential" in text
    assert "space.blocks: 9 must be an integer in [1, 6]" in text
    assert "train.optimizer: 'lbfgs' must be one of" in text and "train.dense_units: 0 must be an integer >= 1" in text


def test_a_model_hyperparameter_axis_needs_a_model_that_takes_it(tmp_path):
    spec = {"task": "segmentation", "space": {"model": ["unet"], "lr": [0.01], "blocks": [2]}}
    with pytest.raises(SpecError, match=re.escape("space.blocks: unknown axis for segmentation")):
        load_study(_write(tmp_path, spec))
    spec = {
        "task": "classification",
        "space": {"model": ["resnet50"], "lr": [0.01], "blocks": [2, 3]},
        "train": {"weights": None},
        "data": {"image_size": 32},
    }
    with pytest.raises(
        SpecError, match=re.escape("space.blocks: none of the study's models takes blocks; custom_cnn do")
    ):
        load_study(_write(tmp_path, spec))


def test_new_axes_become_grid_axes_and_trial_names():
    from search.study.results import trial_name
    from search.study.spec import param_space

    study = load_study("classification", "quickstart")
    space = param_space(study)
    assert space["optimizer"] == {"grid_search": ["adam", "sgd"]}
    names = {
        trial_name({"model": "custom_cnn", "lr": lr, "dropout": 0.2, "optimizer": opt, "batch_size": 16})
        for lr in (0.01, 0.001)
        for opt in ("adam", "sgd")
    }
    assert len(names) == 4 and "custom_cnn-lr0.01-do0.2-adam-bs16" in names


# ---- optimizers and schedules -----------------------------------------------------------------------------------


def test_optimizers_by_name():
    import keras

    from models.optimizers import build_optimizer

    sgd = build_optimizer("sgd", 0.1, weight_decay=1e-4)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9 and sgd.weight_decay == 1e-4
    assert isinstance(build_optimizer("adamw", 0.1, weight_decay=0.01), keras.optimizers.AdamW)
    assert isinstance(build_optimizer("rmsprop", 0.1), keras.optimizers.RMSprop)
    assert build_optimizer("adam", 0.1).weight_decay is None
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer("nadam", 0.1)


@pytest.mark.parametrize("schedule", ["cosine", "exponential"])
def test_schedule_step_lives_in_the_checkpoint(tmp_path, schedule):
    """A resumed trial continues its schedule: the step counter and the schedule are saved in the .keras file."""
    import keras

    import models
    from models.metrics import get_loss
    from models.optimizers import build_optimizer

    model = models.build("custom_cnn", num_classes=2, input_shape=(16, 16, 3), base_filters=2, blocks=1)
    model.compile(
        optimizer=build_optimizer("adam", 0.1, schedule=schedule, steps_per_epoch=2, epochs=4),
        loss=get_loss("categorical_crossentropy"),
    )
    x, y = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32"), np.arange(8) % 2
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)  # 4 steps: half the cosine, two exponential decays
    lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    expected = 0.1 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5))) if schedule == "cosine" else 0.1 * 0.9**2
    assert lr == pytest.approx(expected, rel=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=True)
    assert int(loaded.optimizer.iterations) == 4
    assert float(keras.ops.convert_to_numpy(loaded.optimizer.learning_rate)) == pytest.approx(lr, rel=1e-6)


# ---- a model that learns ----------------------------------------------------------------------------------------


def test_custom_cnn_learns_the_synthetic_classes_from_scratch():
    """Fixed seed, fixed epochs: validation accuracy far above chance (0.25). A model that cannot learn (frozen
    BatchNorm in inference mode, a broken head, wrong scaling) stays near chance."""
    import keras

    import models
    from data_pipeline import DataConfig, prepare
    from models.metrics import get_loss, training_metrics
    from models.optimizers import build_optimizer

    data = prepare(DataConfig(image_size=32, balance_to=None, synthetic_counts=(40, 40, 40, 40), synthetic_size=64))
    keras.utils.set_random_seed(0)
    model = models.build("custom_cnn", num_classes=4, input_shape=(32, 32, 3), base_filters=8, blocks=3, dense_units=32)
    epochs, batch = 12, 16
    steps = math.ceil(len(data.train) / batch)
    model.compile(
        optimizer=build_optimizer("adam", 0.01, schedule="cosine", steps_per_epoch=steps, epochs=epochs),
        loss=get_loss("categorical_crossentropy"),
        metrics=training_metrics("classification"),
    )
    model.fit(data.train.images, data.train.labels, batch_size=batch, epochs=epochs, verbose=0)
    val = model.evaluate(data.val.images, data.val.labels, verbose=0, return_dict=True)
    assert val["accuracy"] >= 0.6, val


# ---- a real sweep over optimizer × batch_size -------------------------------------------------------------------


def test_sweep_over_optimizer_and_batch_size_reaches_the_trial(tmp_path):
    spec = {
        "task": "classification",
        "space": {"model": ["custom_cnn"], "lr": [0.01], "optimizer": ["adam", "sgd"], "batch_size": [4, 16]},
        "train": {
            "epochs": 1,
            "weights": None,
            "freeze_backbone": False,
            "base_filters": 4,
            "blocks": 2,
            "dense_units": 8,
            "lr_schedule": "exponential",
        },
        "data": {"image_size": 32, "synthetic_counts": [6, 8, 8, 6], "synthetic_size": 32, "balance_to": None},
        "scheduler": {"grace_period": 1, "reduction_factor": 2},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    }
    storage = tmp_path / "runs"
    proc = run_sweep("run", _write(tmp_path, spec), "--storage", storage, "--name", "axes")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp = storage / "axes"
    frame = pd.read_csv(exp / "results.csv")
    assert sorted(zip(frame["optimizer"], frame["batch_size"])) == [("adam", 4), ("adam", 16), ("sgd", 4), ("sgd", 16)]
    n_train = json.loads((exp / "sweep.json").read_text())["data"]["2"]["splits"]["train"]["n"]
    for trial_dir in (d for d in exp.iterdir() if d.is_dir() and d.name.startswith("custom_cnn")):
        config = json.loads((trial_dir / "params.json").read_text())
        last = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()][-1]
        # What the trial itself reports: its optimizer's class, its steps (batch size) and its scheduled rate.
        assert last["optimizer_class"] == {"adam": "Adam", "sgd": "SGD"}[config["optimizer"]]
        assert last["batch_size"] == config["batch_size"]
        assert last["optimizer_steps"] == math.ceil(n_train / config["batch_size"])
        assert last["lr_now"] == pytest.approx(0.01 * 0.9, rel=1e-5)  # exponential: × 0.9 after one epoch
        assert f"-{config['optimizer']}-bs{config['batch_size']}-" in trial_dir.name
        hparams = read_hparams(trial_dir)
        assert hparams["optimizer"].string_value == config["optimizer"]
        assert hparams["batch_size"].number_value == config["batch_size"]
    table = pd.read_csv(exp / "report" / "table_custom_cnn_option_2.csv")
    assert {"optimizer", "batch_size"} <= set(table.columns)
    out = proc.stdout
    assert "winner (chosen on val_accuracy = " in out and "always the most frequent class" in out
    assert "ASHA stopped " in out and "report: " in out.splitlines()[-1]


def _quickstart(study: str, counts: str, tmp_path) -> tuple[Path, pd.DataFrame, list[str], pd.Series]:
    """`sweep run STUDY --preset quickstart` with 2 epochs (ASHA's rung after 1) on fewer built-in smears: its
    experiment, results, printed lines and winner, after checking what both quickstarts end with the same way (six
    trials completed or stopped at the rung, the winner chosen on validation, what ASHA stopped, the report)."""
    storage = tmp_path / "runs"
    short = ("train.epochs=2", "scheduler.grace_period=1", f"data.synthetic_counts={counts}")
    args = [a for s in short for a in ("--set", s)]
    proc = run_sweep("run", study, "--preset", "quickstart", *args, "--storage", storage, "--name", "demo")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp, metric = storage / "demo", load_study(study, "quickstart").metric
    frame = pd.read_csv(exp / "results.csv")
    status = frame["status"].value_counts()
    assert len(frame) == 6 and set(status.index) <= {"completed", "stopped"}, status
    assert frame.loc[frame["status"] == "completed", "epochs"].eq(2).all()
    assert frame.loc[frame["status"] == "stopped", "epochs"].eq(1).all()  # at ASHA's rung
    out = proc.stdout.splitlines()
    counted = next(line for line in out if line.startswith("6 trials: "))
    assert sorted(counted[len("6 trials: ") :].split(", ")) == sorted(f"{n} {s}" for s, n in status.items())
    winner = frame.loc[frame[metric].idxmax()]
    assert next(line for line in out if line.startswith("winner ")) == (
        f"winner (chosen on {metric} = {winner[metric]:.4f}): {winner['trial']}"
    )
    stopped = int(status.get("stopped", 0))
    asha = next(line for line in out if line.startswith("ASHA stopped "))
    assert re.fullmatch(rf"ASHA stopped {stopped} of 6 trials early, saving \d+ s of \d+ s of training \(\d+%\)", asha)
    assert out[-1] == f"report: {exp}/report/report.html"
    assert (exp / "report" / "report.html").stat().st_size > 10_000 and (exp / "report" / "report.md").is_file()
    return exp, frame, out, winner


def _test_line(out: list[str]) -> str:
    """The line after the winner's: its test metrics next to a model that learned nothing."""
    return out[next(i for i, line in enumerate(out) if line.startswith("winner ")) + 1]


def test_the_classification_quickstart_ends_as_the_readme_says(tmp_path):
    """`sweep run classification --preset quickstart` (what `make demo` runs) at a fraction of its time: the preset's
    six trials as they are (custom_cnn of 16 filters and 4 blocks at 48 px, lr × optimizer, cosine, ASHA keeping a
    third), with 2 epochs instead of 12 (ASHA's rung after 1 instead of 4) on 48 built-in smears instead of 812. It
    ends as the README shows: the trials by status, the winner chosen on validation, its test accuracy and macro F1
    next to always answering the most frequent class, what ASHA stopped and saved, and the report's path."""
    exp, _, out, winner = _quickstart("classification", "[10,14,13,11]", tmp_path)
    assert re.fullmatch(r"custom_cnn-opt2-lr0\.0\d+-do0\.2-(adam|sgd)", winner["trial"]), winner["trial"]
    test = json.loads((exp / "sweep.json").read_text())["data"]["2"]["splits"]["test"]["per_class"]
    majority = max(test) / sum(test)
    assert _test_line(out) == (
        f"  test: accuracy {winner['test_accuracy']:.4f}, f1 {winner['test_f1']:.4f}   (always the most frequent "
        f"class: accuracy {majority:.4f}, f1 {2 * majority / (1 + majority) / 4:.4f})"
    )
    table = pd.read_csv(exp / "report" / "table_custom_cnn_option_2.csv")
    assert len(table) == 6 and (table["note"] == "◀ chosen on validation").sum() == 1


def test_the_segmentation_quickstart_ends_as_the_readme_says(tmp_path):
    """`sweep run segmentation --preset quickstart` at a fraction of its time: the preset's six U-Nets (lr ×
    base_filters {4, 8} at 64 px, cosine, ASHA keeping a third) with 2 epochs instead of 8 (ASHA's rung after 1) on
    36 built-in smears. It ends as the README shows: the winner chosen on validation, its test Dice next to an
    all-background mask's (Dice 0, and the background's share of the test split's pixels, here counted from its
    masks, as pixel accuracy), what ASHA stopped, and the report's path."""
    from data_pipeline import prepare
    from search.study.experiment import load_study as recorded

    exp, _, out, winner = _quickstart("segmentation", "[8,10,10,8]", tmp_path)
    assert re.fullmatch(r"unet-lr0\.0\d+-do0-f[48]", winner["trial"]), winner["trial"]
    background = 1 - float(np.mean(prepare(recorded(exp).data).test.masks > 0))
    assert _test_line(out) == (
        f"  test: dice {winner['test_dice']:.4f}, iou {winner['test_iou']:.4f}, accuracy "
        f"{winner['test_accuracy']:.4f}   (an all-background mask: dice 0.0000, iou 0.0000, accuracy {background:.4f})"
    )


def test_custom_cnn_depth_must_fit_the_image(tmp_path):
    spec = {
        "task": "classification",
        "space": {"model": ["custom_cnn"], "lr": [0.01], "blocks": [2, 6]},
        "train": {"weights": None},
        "data": {"image_size": 48},
    }
    with pytest.raises(SpecError, match=re.escape("data.image_size: custom_cnn with blocks=6 needs >= 64, got 48")):
        load_study(_write(tmp_path, spec))
