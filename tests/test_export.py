"""From a finished classification sweep (experiment stored through a file:// URI, as cloud storage is) to a shipped
model: TensorBoard logs and server, `sweep export`, `sweep evaluate` and `sweep predict` in fresh processes, and every
bad request refused with nothing written."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FAULTS_LOG, assert_reproduces_test_metrics, export_best, run_sweep, tree_state
from conftest import cli as _cli

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def experiment(classification_experiment):
    return classification_experiment


def test_event_files_hold_every_trials_per_epoch_metrics(experiment):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    frame = pd.read_csv(experiment / "results.csv").set_index("trial")
    trial_dirs = [p for p in experiment.iterdir() if (p / "result.json").is_file()]
    assert len(trial_dirs) == len(frame) == 2
    for trial_dir in trial_dirs:
        acc = EventAccumulator(str(trial_dir))
        acc.Reload()
        epochs = int(frame.loc[trial_dir.name.rsplit("-", 1)[0], "epochs"])
        for tag in ("ray/tune/train_accuracy", "ray/tune/train_loss", "ray/tune/val_accuracy", "ray/tune/val_loss"):
            assert [e.step for e in acc.Scalars(tag)] == list(range(1, epochs + 1)), (trial_dir.name, tag)
        # the fine-tuning stage: epoch 1 trains the study's head only (on EfficientNetV2-B0's 1,280 features: 1,280 ×
        # 256 + 256 + 256 × 4 + 4 weights), epochs 2 and 3 more of the backbone
        head = 1280 * 256 + 256 + 256 * 4 + 4
        trainable = [e.value for e in acc.Scalars("ray/tune/trainable_params")]
        assert trainable[0] == head and trainable[1] == trainable[2] > head, trainable


def test_a_trial_resumed_in_its_fine_tuning_stage_keeps_its_lower_learning_rate(experiment):
    """The lr 0.01 trial crashed after training epoch 3, before its checkpoint (conftest's test-only fault). Ray
    retried it from epoch 2's checkpoint, inside the fine-tuning stage, which does not start again there: it went on
    with the checkpoint's unfrozen layers and optimizer, at lr × fine_tune_lr_factor (0.01 × 0.1), its step count
    kept, and trained epoch 3 to the numbers the crashed attempt had reached."""
    frame = pd.read_csv(experiment / "results.csv").set_index("lr")
    trial = frame.loc[0.01]
    assert trial["status"] == "completed" and trial["epochs"] == 3 and trial["retries"] == 1, trial.to_dict()
    assert frame.loc[0.001, "retries"] == 0
    log = experiment.parent.parent / FAULTS_LOG
    attempts = [json.loads(line) for line in (log / "attempts.jsonl").read_text().splitlines()]
    assert [a["start_epoch"] for a in attempts if a["trial_id"] == trial["trial_id"]] == [0, 2]
    (crashed,) = [json.loads(line) for line in (log / "interrupted.jsonl").read_text().splitlines()]
    assert crashed["trial_id"] == trial["trial_id"] and crashed["metrics"]["epoch"] == 3
    (trial_dir,) = experiment.glob(f"*-{trial['trial_id']}")
    head, tuned, resumed = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    assert (head["epoch"], tuned["epoch"], resumed["epoch"]) == (1, 2, 3)  # each epoch reported once
    assert head["lr_now"] == pytest.approx(0.01, rel=1e-6)
    assert tuned["lr_now"] == pytest.approx(0.01 * 0.1, rel=1e-6) == resumed["lr_now"]
    assert resumed["trainable_params"] == tuned["trainable_params"] > head["trainable_params"]
    for key in ("lr_now", "trainable_params", "optimizer_steps", "train_loss", "val_loss", "val_accuracy"):
        assert resumed[key] == pytest.approx(crashed["metrics"][key], rel=1e-5, abs=1e-7), key


def test_report_of_a_classification_sweep_in_uri_storage(experiment, tmp_path, capsys):
    report = experiment / "report"  # built locally, uploaded next to the results through the file:// URI
    html = (report / "report.html").read_text()
    assert "Best classifier per class" in html and "efficientnetv2_b0 / option 2" in html
    assert (report / "figures" / "best_classifier.png").stat().st_size > 5000
    # trust: the winner against the runner-up on the same test images, and its calibration before and after
    assert "Is the winner really better? (test split)" in html and "McNemar p = " in html and "95% CI" in html
    assert "test ECE after temperature scaling" in html
    assert (report / "figures" / "reliability.png").stat().st_size > 5000
    versus = pd.read_csv(report / "versus_study.csv")
    assert set(versus["metric"]) >= {"test_accuracy", "test_f1"}
    assert versus["study"].isna().all()  # EfficientNetV2-B0 is not in the study's grid: no published number to set

    code, out, _ = _cli(capsys, "report", f"file://{experiment}", "--out", tmp_path / "r", "--format", "md,csv")
    assert code == 0 and f"report written to {tmp_path / 'r'}" in out
    assert {"cost.csv", "report.md", "summary.csv"} <= {p.name for p in (tmp_path / "r").iterdir()}
    assert not (tmp_path / "r" / "report.html").exists()
    code, listing, _ = _cli(capsys, "ls", "--storage", f"file://{experiment.parent}")  # `sweep ls` on a URI
    assert code == 0 and listing.splitlines()[1].split()[:2] == ["cls", "classification"] and "2 completed" in listing
    code, _, err = _cli(capsys, "report", experiment, "--out", tmp_path / "r2", "--format", "pdf")
    assert code == 2 and "--format pdf: unknown; choose from md,html,csv,tex" in err


def test_tensorboard_command_serves_the_experiment_on_localhost(experiment):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", "tensorboard", str(experiment), "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        deadline, runs = time.time() + 90, []
        while time.time() < deadline and len(runs) < 2:
            try:
                runs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2))
            except OSError:
                time.sleep(1)
        assert sorted(r.rsplit("-", 1)[0] for r in runs) == [
            "efficientnetv2_b0-opt2-lr0.001-do0.2",
            "efficientnetv2_b0-opt2-lr0.01-do0.2",
        ]
    finally:
        proc.terminate()
        proc.wait(30)


def test_export_then_evaluate_and_predict_in_fresh_processes(experiment, tmp_path, capsys):
    frame = pd.read_csv(experiment / "results.csv")
    best = frame.loc[frame["val_accuracy"].idxmax()]
    model_dir = tmp_path / "b0"
    manifest = export_best(experiment, model_dir, "--family", "efficientnetv2_b0")
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "MODEL_CARD.md",
        "README.md",
        "export.json",
        "model.keras",
        "model_card.json",
        "study.json",
    ]
    assert manifest["trial"] == best["trial"] and manifest["classes"] == ["Benign", "Early", "Pre", "Pro"]
    assert manifest["hyperparameters"] == {"lr": best["lr"], "dropout": 0.2, "option": 2}
    assert manifest["architecture"] == best["architecture"] and "dense_units=" in manifest["architecture"]  # as built
    assert manifest["test"]["accuracy"] == pytest.approx(best["test_accuracy"])
    assert manifest["preprocessing"]["input_size"] == 32 and "mean/std" in manifest["preprocessing"]["normalisation"]

    # the whole model, loaded with safe_mode=True in a fresh process, reproduces the sweep's test metrics
    metrics = ("accuracy", "loss", "precision", "recall", "f1", "ece", "ece_calibrated")
    assert_reproduces_test_metrics(model_dir, best, metrics)
    temperature = manifest["calibration"]["temperature"]
    assert 0.05 <= temperature <= 20 and manifest["calibration"]["fitted_on"] == "validation"

    from data_pipeline import synth

    images = synth.write_dataset(tmp_path / "new", (1, 2, 1, 1), size=224, seed=5) / "Original"
    predicted = run_sweep("predict", str(model_dir), str(images), "--out", str(tmp_path / "pred"))
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(table) == 5 and set(table["label"]) <= set(manifest["classes"])
    probs = table[[f"p_{c}" for c in manifest["classes"]]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert (np.array(manifest["classes"])[probs.argmax(1)] == table["label"]).all()
    # the probabilities are the model's, calibrated by the export's temperature
    import keras

    from data_pipeline.io import read_rgb, resize
    from models.evaluation import predict
    from models.stats import apply_temperature

    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True, compile=False)
    raw = predict(model, np.stack([resize(read_rgb(p), 32) for p in table["image"]]))
    np.testing.assert_allclose(probs, apply_temperature(raw, temperature), atol=1e-5)

    # `sweep evaluate --data-dir` of other data with other classes: refused in one line, the folder untouched
    wrong = synth.write_dataset(tmp_path / "wrong", (2, 2, 2, 2), size=32, seed=6)
    (wrong / "Original" / "Pro").rename(wrong / "Original" / "Other")
    before = tree_state(wrong)
    code, _, err = _cli(capsys, "evaluate", str(model_dir), "--data-dir", str(wrong))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "not in the model: Other; missing: Pro" in err and "trained on Benign, Early, Pre, Pro" in err, err
    assert tree_state(wrong) == before


def test_bad_requests_say_what_is_wrong_and_write_nothing(experiment, tmp_path, capsys):
    refused = _cli(capsys, "export", str(experiment), "--to", str(tmp_path / "m"), "--metric", "test_accuracy")
    assert refused[0] == 2 and "validation metrics only" in refused[2]
    family = _cli(capsys, "export", str(experiment), "--to", str(tmp_path / "m"), "--family", "unet")
    assert family[0] == 2 and "no trial of model family 'unet'" in family[2]
    assert not (tmp_path / "m").exists()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    busy = _cli(capsys, "export", str(experiment), "--to", str(occupied))
    assert busy[0] == 2 and "not empty" in busy[2]
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(experiment / "sweep.json", unfinished)
    early = _cli(capsys, "export", str(unfinished), "--to", str(tmp_path / "m"))
    assert early[0] == 2 and "no finished trials yet" in early[2] and "sweep resume" in early[2]
    nowhere = _cli(capsys, "export", str(tmp_path), "--to", str(tmp_path / "m"))
    assert nowhere[0] == 2 and "is not a sweep experiment" in nowhere[2]
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".sweep-tmp-*"))

    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "export.json").write_text("{}")
    (incomplete / "study.json").write_text("{}")
    missing = _cli(capsys, "predict", str(incomplete), str(experiment / "sweep.json"))
    assert missing[0] == 2 and "missing model.keras" in missing[2]


def test_predict_names_a_corrupt_image_and_writes_nothing(experiment, tmp_path, capsys):
    model_dir = tmp_path / "m"
    assert _cli(capsys, "export", str(experiment), "--to", str(model_dir))[0] == 0
    images = tmp_path / "images"
    images.mkdir()
    from data_pipeline import synth

    good = synth.write_dataset(tmp_path / "d", (1, 1, 1, 1), size=64, seed=2) / "Original" / "Benign"
    shutil.copy(next(good.iterdir()), images / "a.png")
    (images / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = _cli(capsys, "predict", str(model_dir), str(images), "--out", str(tmp_path / "pred"))
    assert out[0] == 2 and "b.jpg" in out[2]
    assert not (tmp_path / "pred").exists()


def _digest(root) -> dict:
    """Every file under root with a hash of its bytes: to assert a folder is byte-identical after a refused run."""
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_outputs_never_land_in_data_folders_nor_over_files_and_never_collide(experiment, tmp_path, capsys):
    from data_pipeline import synth

    data = synth.write_dataset(tmp_path / "data", (1, 1, 1, 1), size=64, seed=2)
    (tmp_path / "link").symlink_to(data)
    model_dir = tmp_path / "m"
    assert _cli(capsys, "export", str(experiment), "--to", str(model_dir))[0] == 0
    record = json.loads((model_dir / "study.json").read_text())  # as if the study had trained on the user's folder
    (model_dir / "study.json").write_text(json.dumps({**record, "data": {**record["data"], "data_dir": str(data)}}))
    for folder, image in (("d1", "Benign"), ("d2", "Pro")):  # two images both named a.png
        (tmp_path / folder).mkdir()
        shutil.copy(next((data / "Original" / image).iterdir()), tmp_path / folder / "a.png")
    inputs = [tmp_path / "d1" / "a.png", tmp_path / "d2" / "a.png"]
    before = {p: _digest(p) for p in (data, tmp_path / "d1", model_dir)}

    for out, why in (
        (tmp_path / "d1" / "pred", "inside a folder holding input images"),
        (tmp_path / "link" / "Original" / "pred", "inside the study's data folder"),
    ):
        code, _, err = _cli(capsys, "predict", model_dir, *inputs, "--out", out, "--gradcam")
        assert code == 2 and why in err and len(err.strip().splitlines()) == 1, err
    predicted = _cli(capsys, "predict", model_dir, *inputs, "--out", tmp_path / "pred", "--gradcam")
    assert predicted[0] == 0, predicted[2]
    heatmaps = [tmp_path / "pred" / d / "a_gradcam.png" for d in ("d1", "d2")]
    assert all(p.stat().st_size > 500 for p in heatmaps) and heatmaps[0].read_bytes() != heatmaps[1].read_bytes()
    written = _digest(tmp_path / "pred")
    again = _cli(capsys, "predict", model_dir, *inputs, "--out", tmp_path / "pred", "--gradcam")
    assert again[0] == 2 and "exists" in again[2] and "never overwrite" in again[2]
    assert _digest(tmp_path / "pred") == written

    # export --to and report --out: refused inside the study's data folder (the sweep's record says where it is)
    copy = tmp_path / "exp"
    copy.mkdir()
    for record_file in ("sweep.json", "results.csv"):  # what both commands read before writing anything
        shutil.copy(experiment / record_file, copy)
    sweep = json.loads((copy / "sweep.json").read_text())
    sweep["study"]["data"]["data_dir"] = str(data)
    (copy / "sweep.json").write_text(json.dumps(sweep))
    for cmd, flag in (("export", "--to"), ("report", "--out")):
        code, _, err = _cli(capsys, cmd, copy, flag, tmp_path / "link" / "Segmented" / "x")
        assert code == 2 and "inside the study's data folder" in err and len(err.strip().splitlines()) == 1, err
    assert {p: _digest(p) for p in before} == before
