"""The real sweep, end to end: `sweep run` / `sweep resume` / `sweep ls` as subprocesses, a real Ray cluster on
127.0.0.1, real files; TensorBoard event files read back with TensorBoard's own reader; checkpoints loaded in a
fresh process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_sweep

ROOT = Path(__file__).parent.parent


def _spec(tmp_path, lrs, epochs=3, grace=1, name="study.yaml"):
    spec = {
        "task": "segmentation",
        "space": {"model": ["unet"], "lr": lrs, "dropout": [0.1]},
        "train": {"batch_size": 8, "epochs": epochs, "base_filters": 4},
        "data": {"image_size": 32, "synthetic_counts": [6, 8, 8, 6], "synthetic_size": 32, "balance_to": None},
        "scheduler": {"grace_period": grace, "reduction_factor": 2},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


def _sweep(*args, env=None, timeout=600):
    return run_sweep(*args, env=env or _env(), timeout=timeout)


def _event_scalars(trial_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(trial_dir.glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file in {trial_dir}"
    acc = EventAccumulator(str(trial_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _hparams(trial_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(trial_dir))
    acc.Reload()
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            return dict(data.session_start_info.hparams)
    raise AssertionError(f"no HParams in {trial_dir}")


def test_sweep_retries_marks_divergence_logs_and_evaluates(tmp_path):
    # lr 0.01: normal; 0.005: raises once, retried, finishes; 0.002: raises twice, failed; 0.0001: NaN loss at epoch 2
    faults = "raise:0.005:1,raise:0.002:2,nan:0.0001:1"
    storage = tmp_path / "runs"
    # grace 2: the NaN (epoch 2) comes before ASHA's first rung could stop that trial
    proc = _sweep(
        "run",
        _spec(tmp_path, [0.01, 0.005, 0.002, 0.0001], grace=2),
        "--storage",
        str(storage),
        "--name",
        "e2e",
        env=_env(SWEEP_TEST_FAULTS=faults),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = storage / "e2e"
    assert f"experiment: {exp}" in proc.stdout and "best trial per model family" in proc.stdout

    frame = pd.read_csv(exp / "results.csv")
    assert sorted(frame["trial"]) == sorted(f"unet-lr{lr:g}-do0.1" for lr in (0.01, 0.005, 0.002, 0.0001))
    status = dict(zip(frame["lr"], frame["status"]))
    assert status[0.002] == "failed" and "injected failure 2 of 2" in frame.set_index("lr").loc[0.002, "error"]
    assert status[0.0001] == "diverged"
    assert status[0.01] in ("completed", "stopped") and status[0.005] in ("completed", "stopped")
    ok = frame[frame["status"].isin(["completed", "stopped", "diverged"])]
    for col in ("val_dice", "test_dice", "test_iou", "test_study_dice", "test_dice_per_image", "test_accuracy"):
        assert ok[col].map(np.isfinite).all(), col
    assert (frame.loc[frame["lr"] == 0.0001, "best_epoch"] == 1).all()  # the last finite epoch, not the NaN one

    sweep = json.loads((exp / "sweep.json").read_text())
    assert sweep["cluster"]["nodes"] == ["127.0.0.1"]  # a real local Ray cluster, on loopback only
    assert sweep["study"]["train"]["epochs"] == 3 and sweep["versions"]["ray"].startswith("2.60")
    assert sweep["data"]["2"]["leakage_audit"] == {"val": 0, "test": 0} and sweep["data"]["2"]["fingerprint"]

    trial_dirs = {p.name.rsplit("-", 1)[0]: p for p in exp.iterdir() if (p / "result.json").is_file()}
    scalars = _event_scalars(trial_dirs["unet-lr0.01-do0.1"])
    epochs = int(frame.set_index("lr").loc[0.01, "epochs"])
    for tag in ("ray/tune/val_dice", "ray/tune/train_loss", "ray/tune/val_study_dice"):
        assert len(scalars[tag]) == epochs, tag
    assert all(0.0 <= v <= 1.0 for v in scalars["ray/tune/val_dice"])
    hparams = _hparams(trial_dirs["unet-lr0.01-do0.1"])  # TensorBoard's HParams table view
    assert hparams["model"].string_value == "unet" and hparams["lr"].number_value == pytest.approx(0.01)

    # the report, written at the end of the run: the study's table with the choice, divergence and failure marked
    report = exp / "report"
    assert f"report: {report}/report.html" in proc.stdout
    table = pd.read_csv(report / "table_unet.csv")
    assert list(table["lr"]) == [0.01, 0.005, 0.002, 0.0001]  # the study's order: lr descending
    notes = dict(zip(table["lr"], table["note"].fillna("")))
    assert notes[0.002] == "failed (error)" and notes[0.0001].startswith("diverged")
    best_lr = frame.loc[frame["val_dice"].idxmax(), "lr"]
    assert notes[best_lr] == "◀ chosen on validation"
    html = (report / "report.html").read_text()
    row = list(table["lr"]).index(best_lr)  # the chosen row, every cell of it (and only it) highlighted in HTML:
    highlighted = html.split("<h2>unet</h2>", 1)[1].split("background: #fff3b0")[0]
    assert highlighted.count(f"_row{row}_col") == len(table.columns) and highlighted.count("_row") == len(table.columns)
    assert html.count("data:image/png;base64,") == 4 and "\\begin{tabular}" in (report / "report.tex").read_text()
    for name in ("learning_curves", "heatmap", "asha_epochs", "best_segmenter"):
        assert (report / "figures" / f"{name}.png").stat().st_size > 5000, name
    with np.load(exp / "predictions.npz") as preds:
        assert preds["images"].shape[1:] == (32, 32, 3) and preds["truth"].shape == preds["images"].shape[:3]
        assert preds[f"unet-lr{best_lr:g}-do0.1/masks"].shape == preds["truth"].shape

    # a checkpoint is a real .keras file: load it in a fresh process and segment an image
    ckpt = frame.set_index("lr").loc[0.01, "checkpoint"]
    code = (
        "import keras, numpy as np, sys; m = keras.saving.load_model(sys.argv[1] + '/model.keras', "
        "compile=False); print(m.predict(np.zeros((1, 32, 32, 3), 'float32'), verbose=0).shape)"
    )
    out = subprocess.run([sys.executable, "-c", code, ckpt], env=_env(), capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().endswith("(1, 32, 32, 1)"), out.stderr[-2000:]

    listing = _sweep("ls", "--storage", str(storage))
    assert listing.returncode == 0 and "e2e" in listing.stdout and "finished" in listing.stdout


def _finished_trials(exp: Path, epochs: int) -> dict[str, int]:
    """Trial folder -> number of result lines, for trials whose last result is their final epoch."""
    out = {}
    for d in exp.iterdir():
        lines = (d / "result.json").read_text().splitlines() if (d / "result.json").is_file() else []
        if lines and json.loads(lines[-1]).get("epoch") == epochs:
            out[d.name] = len(lines)
    return out


def test_killed_driver_resumes_without_losing_or_recomputing(tmp_path):
    epochs, storage = 4, tmp_path / "runs"
    spec = _spec(tmp_path, [0.01, 0.003, 0.001, 0.0003], epochs=epochs, grace=epochs)  # no early stopping
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "search",
            "run",
            spec,
            "--storage",
            str(storage),
            "--name",
            "k",
            "--cpus-per-trial",
            "1",
        ],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    exp = storage / "k"
    deadline = time.time() + 400
    while time.time() < deadline and not _finished_trials(exp, epochs) if exp.exists() else time.time() < deadline:
        assert driver.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.5)
    time.sleep(3)  # Ray Tune copies its state to storage in the background: let the copy settle, then re-read it
    finished = _finished_trials(exp, epochs)
    assert finished, "no trial finished in time"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray cluster it started, as in a crash
    driver.wait()
    assert not (exp / "results.csv").exists()
    listing = _sweep("ls", "--storage", str(storage))
    assert "unfinished" in listing.stdout and f"sweep resume {exp}" in listing.stdout

    proc = _sweep("resume", str(exp))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    frame = pd.read_csv(exp / "results.csv")
    assert len(frame) == 4 and frame["trial"].is_unique and (frame["status"] == "completed").all()
    for name, n_lines in finished.items():  # finished before the kill: not one more epoch was run
        assert len((exp / name / "result.json").read_text().splitlines()) == n_lines == epochs
    for d in exp.iterdir():  # every trial has each epoch exactly once in its TensorBoard-visible history
        if (d / "result.json").is_file():
            epochs_seen = [json.loads(x)["epoch"] for x in (d / "result.json").read_text().splitlines()]
            assert sorted(set(epochs_seen)) == list(range(1, epochs + 1))


def test_optuna_search_samples_distributions(tmp_path):
    spec = yaml.safe_load(Path(_spec(tmp_path, [0.01], epochs=1)).read_text())
    spec["search"] = {"algorithm": "optuna", "num_samples": 3, "seed": 1}
    spec["train"]["online_augmentation"] = True  # the trial re-augments the training split every epoch
    spec["space"] = {
        "model": ["unet", "unet_fpn_gelu"],
        "lr": {"loguniform": [1e-4, 1e-2]},
        "dropout": {"uniform": [0.0, 0.3]},
    }
    path = tmp_path / "optuna.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = _sweep("run", str(path), "--storage", str(tmp_path / "runs"), "--name", "tpe")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    frame = pd.read_csv(tmp_path / "runs" / "tpe" / "results.csv")
    assert len(frame) == 3 and frame["lr"].between(1e-4, 1e-2).all() and frame["dropout"].between(0, 0.3).all()
    assert frame["lr"].nunique() == 3  # sampled, not a grid
    assert frame["test_dice"].map(np.isfinite).all()


def test_bad_input_gets_a_clear_message_and_writes_nothing(tmp_path):
    storage = tmp_path / "runs"
    proc = _sweep(
        "run", "segmentation", "--preset", "smoke", "--data-dir", str(tmp_path / "nowhere"), "--storage", str(storage)
    )
    assert proc.returncode == 2 and "data.data_dir:" in proc.stderr and "Traceback" not in proc.stderr
    assert not storage.exists()
    proc = _sweep("resume", str(tmp_path))
    assert proc.returncode == 2 and "is not a sweep experiment" in proc.stderr
    proc = _sweep("report", str(tmp_path))
    assert proc.returncode == 2 and "is not a sweep experiment" in proc.stderr


@pytest.mark.slow
def test_classification_smoke_preset_runs():
    proc = _sweep("run", "classification", "--preset", "smoke", "--storage", "/tmp/sweep-slow-test")
    assert proc.returncode == 0, proc.stderr[-3000:]
