"""`sweep export --format onnx`: model.onnx checked against Keras on the test split, and a bundle whose predict.py
gives `sweep predict`'s answers in a fresh virtual environment holding only onnxruntime, numpy and OpenCV."""

import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import cli, run_sweep

from models.tasks import task_info
from search.outputs.deploy import BUNDLE_FILES, BUNDLE_REQUIREMENTS, ONNX_TOLERANCE, parity_problem
from search.outputs.export import predict_images

FRAMEWORKS = ("tensorflow", "keras", "jax", "torch", "search", "data_pipeline", "models")
BARE = {"PATH": "/usr/bin:/bin", "HOME": os.environ["HOME"]}  # a clinic's shell: no PYTHONPATH, no project variable


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A fresh virtual environment (no system site-packages) with predict.py's three packages only, at the
    versions installed here."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    pins = [f"{p}=={importlib.metadata.version(p)}" for p in BUNDLE_REQUIREMENTS]
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins],
        capture_output=True,
        text=True,
        timeout=900,
        env=BARE,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    probe = "import importlib.util, sys; print([m for m in sys.argv[1:] if importlib.util.find_spec(m)])"
    found = subprocess.run([str(python), "-c", probe, *FRAMEWORKS], capture_output=True, text=True, cwd=venv, env=BARE)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr  # nothing of ours, no framework
    return python


def _bundle(python: Path, model_dir: Path, *args) -> subprocess.CompletedProcess:
    """predict.py of a bundle copied elsewhere (no path of the export folder baked in), run by ``python``."""
    elsewhere = model_dir.parent / f"{model_dir.name}-copied"
    if not elsewhere.exists():
        shutil.copytree(model_dir, elsewhere)
    return subprocess.run(
        [str(python), str(elsewhere / "predict.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=elsewhere.parent,
        env=BARE,
    )


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_onnx_bundle_predicts_as_sweep_predict_without_a_framework(
    task, onnx_export, bare_python, images, tmp_path, capsys
):
    model_dir, out = onnx_export(task)
    assert "model.onnx" in out and "predict.py" in out
    assert all((model_dir / f).is_file() for f in (*BUNDLE_FILES, "model.keras", "export.json", "MODEL_CARD.md"))
    manifest = json.loads((model_dir / "export.json").read_text())
    assert manifest["masks"] is task_info(task).masks  # what predict.py, without the task table, decides by
    onnx = manifest["onnx"]
    assert onnx["images"] == manifest["data"]["splits"]["test"]["n"] > 0  # checked on the whole test split
    assert 0 <= onnx["max_abs_difference"] <= ONNX_TOLERANCE
    assert onnx["opset"] >= 13 and onnx["converter"].startswith("tf2onnx")
    for threads in ("one_thread", "all_threads"):  # batch-1 latency measured here, 30 runs
        timed = onnx["latency_ms"][threads]
        assert 0 < timed["median"] <= timed["p95"] and timed["runs"] == 30
    assert "ms median" in out
    assert "python predict.py" in (model_dir / "README.md").read_text()
    _int8_is_recorded_as_measured(model_dir, manifest, out)

    if task == "classification":
        assert manifest["calibration"]["temperature"] != 1.0  # predict.py must apply it to match
        code, _, err = cli(capsys, "predict", model_dir, images, "--out", tmp_path / "pred")
        assert code == 0, err
        want = pd.read_csv(tmp_path / "pred" / "predictions.csv")
        done = _bundle(bare_python, model_dir, images, "--out", tmp_path / "bundle.csv")
        assert done.returncode == 0, done.stderr[-3000:]
        got = pd.read_csv(tmp_path / "bundle.csv")
        assert list(got.columns) == list(want.columns)
        assert [Path(p).name for p in got["image"]] == [Path(p).name for p in want["image"]]
        assert list(got["label"]) == list(want["label"])
        probs = [c for c in want.columns if c.startswith("p_")]
        assert np.abs(got[probs].to_numpy() - want[probs].to_numpy()).max() <= ONNX_TOLERANCE
        _an_export_before_masks_gives_the_same(bare_python, model_dir, manifest, images, tmp_path)
        done = _bundle(bare_python, model_dir, images, "--int8", "--out", tmp_path / "int8.csv")
        assert done.returncode == 0, done.stderr[-3000:]
        int8 = pd.read_csv(tmp_path / "int8.csv")  # the quantized model's own answers: a distribution per image
        assert list(int8.columns) == list(want.columns) and len(int8) == len(want)
        np.testing.assert_allclose(int8[probs].sum(axis=1), 1, atol=1e-4)
    else:
        code, _, err = cli(capsys, "predict", model_dir, images, "--out", tmp_path / "pred")
        assert code == 0, err
        done = _bundle(bare_python, model_dir, images, "--masks", tmp_path / "masks")
        assert done.returncode == 0, done.stderr[-3000:]
        got = pd.read_csv(io.StringIO(done.stdout))
        size = manifest["preprocessing"]["input_size"]
        foreground = predict_images(model_dir, [images])["foreground"]  # sweep predict's, at size × size
        assert np.abs(got["foreground"] - foreground).max() <= 2 / size**2  # at most two pixels at the threshold
        for path in sorted(images.iterdir()):
            want = cv2.imread(str(tmp_path / "pred" / f"{path.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
            mask = cv2.imread(str(tmp_path / "masks" / f"{path.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
            assert mask.shape == want.shape == cv2.imread(str(path)).shape[:2]
            assert (mask == want).mean() >= 0.995  # a pixel at 0.5 ± 1e-4 may fall either side
        _an_export_before_masks_gives_the_same(bare_python, model_dir, manifest, images, tmp_path)


def _an_export_before_masks_gives_the_same(bare_python, model_dir, manifest, images, tmp_path) -> None:
    """predict.py on a copy of the export without the manifest's ``masks`` (as made before it existed): it tells a
    mask from class probabilities by the threshold, and answers as it does with the key."""
    old = Path(shutil.copytree(model_dir, tmp_path / "before-masks"))
    (old / "export.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "masks"}))
    now, before = _bundle(bare_python, model_dir, images), _bundle(bare_python, old, images)
    assert now.returncode == before.returncode == 0, before.stderr[-3000:]
    assert now.stdout == before.stdout and now.stdout.count("\n") == 1 + len(list(images.iterdir()))  # the CSV


def _int8_is_recorded_as_measured(model_dir: Path, manifest: dict, out: str) -> None:
    """--quantize int8: model.int8.onnx beside model.onnx, calibrated on training images; the test metrics recorded
    for both are what ONNX Runtime gives on the test split now (the float one the sweep's own), the change their
    difference; printed; predict.py --int8 runs it."""
    from models.evaluation import report_from_probs
    from models.tasks import task_info
    from search.outputs.deploy import CALIBRATION_IMAGES, INT8_FILE, onnx_outputs
    from search.outputs.export import _option, study_data
    from search.study.spec import study_from_record

    q = manifest["onnx"]["int8"]
    assert q["file"] == INT8_FILE and (model_dir / INT8_FILE).is_file()
    assert q["size_mb"] < manifest["onnx"]["size_mb"]  # int8 weights
    study = study_from_record(json.loads((model_dir / "study.json").read_text()))
    data = study_data(study, _option(manifest, study))
    assert q["calibration"] == {
        "split": "train",
        "images": min(CALIBRATION_IMAGES, len(data.train.images)),
        "method": "min/max",
    }
    headline = task_info(manifest["task"]).headline
    for which, file in (("float32", "model.onnx"), ("int8", INT8_FILE)):
        probs = onnx_outputs(model_dir / file, data.test.images)
        report = report_from_probs(data.test, probs, manifest["task"], tuple(manifest.get("classes") or ()))
        for metric in headline:
            assert q["test"][which][metric] == pytest.approx(report[metric], abs=1e-6), (which, metric)
    first = headline[0]
    assert q["test"]["float32"][first] == pytest.approx(manifest["test"][first], abs=1e-4)  # the sweep's own score
    assert q["test_change"][first] == pytest.approx(q["test"]["int8"][first] - q["test"]["float32"][first], abs=1e-6)
    assert "model.int8.onnx" in out and f"{first} " in out
    assert "predict.py --int8" in (model_dir / "README.md").read_text()


def test_an_unfaithful_conversion_fails_the_export_and_writes_nothing(
    classification_experiment, tmp_path, capsys, monkeypatch
):
    from search.outputs import deploy

    real = deploy.onnx_outputs
    monkeypatch.setattr(deploy, "onnx_outputs", lambda *a, **k: real(*a, **k) + 1e-3)  # off by 1e-3 everywhere
    code, _, err = cli(capsys, "export", classification_experiment, "--to", tmp_path / "model", "--format", "onnx")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "differ from Keras's by up to 1.00e-03" in err, err
    assert not (tmp_path / "model").exists()


def test_parity_problem_names_shape_size_and_nan():
    a = np.zeros((3, 4), np.float32)
    assert parity_problem(a, a + ONNX_TOLERANCE / 2, 3) is None
    assert "by up to 2.00e-04" in parity_problem(a, a + 2e-4, 3)
    assert "shape (3, 2)" in parity_problem(a, a[:, :2], 3)
    nan = a.copy()
    nan[0, 0] = np.nan
    assert parity_problem(a, nan, 3) is not None


def test_sweep_costs_times_the_best_then_export_chooses_within_a_budget(segmentation_experiment, tmp_path, capsys):
    """`sweep costs` on a finished sweep (a copy: the session's experiment stays as it was): its best trial timed on
    this machine, results.csv and the report's Deployment section updated; `sweep export --max-latency-ms` exports
    the best that fits with its cost in export.json, and a budget nothing fits exits 2 naming the fastest."""
    experiment = tmp_path / "seg"
    shutil.copytree(segmentation_experiment, experiment)
    done = run_sweep("costs", experiment)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    frame = pd.read_csv(experiment / "results.csv")
    (timed,) = frame[frame["latency_ms"].notna()].to_dict("records")  # one trial, one architecture
    assert timed["trial"] in done.stdout and timed["latency_p95_ms"] >= timed["latency_ms"] > 0
    assert timed["params"] > 0 and timed["size_mb"] > 0
    report = (experiment / "report" / "report.md").read_text()
    assert "## Deployment: validation metric against CPU latency" in report and timed["trial"] in report

    code, out, err = cli(capsys, "export", experiment, "--to", tmp_path / "fits", "--max-latency-ms", 1e6)
    assert code == 0, err
    manifest = json.loads((tmp_path / "fits" / "export.json").read_text())
    assert manifest["trial"] == timed["trial"] and manifest["selected_by"]["budget"]["max_latency_ms"] == 1e6
    assert manifest["cost"]["latency_ms"] == timed["latency_ms"] and manifest["cost"]["params"] == timed["params"]
    assert f"{timed['latency_ms']:g} ms median" in out

    code, out, err = cli(capsys, "export", experiment, "--to", tmp_path / "none", "--max-latency-ms", 1e-6)
    assert code == 2 and not (tmp_path / "none").exists()
    assert err.count("\n") == 1 and f"the fastest candidate is {timed['trial']} at {timed['latency_ms']:g} ms" in err


def test_a_search_for_accuracy_and_latency_measures_each_architecture_once_and_reports_the_front(tmp_path):
    """search.objectives [val_accuracy, latency_ms]: Optuna's multi-objective search through Ray Tune; every trial
    measures its architecture's ONNX cost as it builds (once per architecture: the trials of one share the figures),
    runs all its epochs (ASHA, set in the study, would stop half of them at its rung), and Optuna is told both values;
    the report's Deployment section shows the front of the two."""
    import optuna
    import yaml

    import search.study.results as res
    from data_pipeline.cache import default_cache_dir
    from search.outputs.export import select_within_budget

    epochs = 2
    spec = {
        "task": "classification",
        "search": {"algorithm": "optuna", "num_samples": 4, "seed": 0, "objectives": ["val_accuracy", "latency_ms"]},
        "space": {"model": ["custom_cnn"], "lr": {"loguniform": [0.001, 0.01]}, "blocks": [1, 3], "dropout": [0.2]},
        "train": {"epochs": epochs, "weights": None, "freeze_backbone": False, "base_filters": 8, "dense_units": 32},
        "data": {"image_size": 32, "balance_to": None, "synthetic_counts": [30, 30, 30, 30], "synthetic_size": 48},
        "scheduler": {"grace_period": 1, "reduction_factor": 2},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    }
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(spec))
    proc = run_sweep("run", tmp_path / "two.yaml", "--storage", tmp_path / "runs", "--name", "two")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no trial stops early" in proc.stdout and "ASHA stopped" not in proc.stdout
    assert "front of val_accuracy against latency_ms (" in proc.stdout  # the sweep's last lines: the trade-off
    exp = tmp_path / "runs" / "two"
    frame = pd.read_csv(exp / "results.csv")
    assert len(frame) == 4 and (frame["epochs"] == epochs).all() and (frame["status"] == "completed").all()
    assert (frame["latency_ms"] > 0).all() and (frame["size_mb"] > 0).all()
    per_arch = frame.groupby("blocks")[list(res.COST_COLUMNS)].nunique()
    assert (per_arch == 1).all().all(), per_arch  # one measurement per architecture, read by its other trials
    assert frame.groupby("blocks")["params"].first().is_monotonic_increasing  # 3 blocks: more weights
    entries = [json.loads(p.read_text())["key"] for p in (default_cache_dir() / "costs").glob("*.json")]
    mine = [k for k in entries if k["model"] == "custom_cnn" and k["image_size"] == 32 and k["base_filters"] == 8]
    assert sorted(k["blocks"] for k in mine) == [1, 3]  # this node measured each architecture once
    told = optuna.load_study(study_name="two", storage=f"sqlite:///{exp / 'optuna.db'}")
    assert len(told.directions) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in told.trials)
    # Optuna was told each trial's best epoch (the results table's) and its architecture's latency
    told_values = sorted(tuple(round(v, 9) for v in (t.params["lr"], *t.values)) for t in told.trials)
    table = frame[["lr", "val_accuracy", "latency_ms"]].round(9)
    assert told_values == sorted(table.itertuples(index=False, name=None))
    deployment = pd.read_csv(exp / "report" / "deployment.csv")
    assert len(deployment) == frame["blocks"].nunique()  # one candidate per architecture
    assert set(deployment["trial"]) == set(res.measured_candidates(frame, "val_accuracy")["trial"])
    front = deployment[deployment["pareto_front"] == "yes"]  # the report's front is Optuna's own
    assert set(zip(front["val_accuracy"], front["latency_ms"])) == {tuple(t.values) for t in told.best_trials}
    report = (exp / "report" / "report.md").read_text()
    assert "The search optimized two objectives, val_accuracy (max), latency_ms (min)" in report
    assert (exp / "report" / "figures" / "deployment_pareto.png").stat().st_size > 5000
    # the costs measured while searching are what a budget is checked against: a size only the 1-block CNN fits
    small, large = frame.groupby("blocks")["size_mb"].first()
    chosen = select_within_budget(frame, "val_accuracy", "max", None, None, (small + large) / 2)["trial"]
    assert chosen == res.best_row(res.with_checkpoint(frame[frame["blocks"] == 1]), "val_accuracy")["trial"]
