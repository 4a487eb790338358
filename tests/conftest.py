"""Quiet, deterministic tests: fixed Keras backend (TensorFlow unless KERAS_BACKEND says otherwise), no GPU
probing, Ray without usage stats, and every cache in a per-session temporary folder."""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_DEDUP_LOGS"] = "0"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # local Ray: node 127.0.0.1, servers bound to loopback
os.environ["PYTHONHASHSEED"] = "0"
os.environ["SWEEP_CACHE_DIR"] = tempfile.mkdtemp(prefix="sweep-test-cache-")

import random

import numpy as np
import pytest

from data_pipeline import synth

TINY_COUNTS = (6, 9, 8, 7)  # the real imbalance's shape, tiny


# The session's sweeps, made once per test process: under `make test`'s two pytest-xdist workers, every file that
# uses one runs in the same worker (one group); every other file is a group of its own, so that its module fixtures
# (a sweep each, often) are made once too.
SESSION_SWEEPS = {"classification_experiment", "segmentation_experiment", "onnx_export"}
SHARED_GROUP = "session-sweeps"

# Rough seconds of each long group on CI's 2 cores (from the suite's runs of 2026-12-04; a group's time depends on
# what runs beside it): the scheduler hands out the longest group left first, so that no long file starts last while
# the other worker idles. A file not listed counts 1 s a test; the numbers need only keep the long groups in about
# this order (with these, the two workers' sums differed by 5 s in a run of 1,448 s).
GROUP_SECONDS = {
    SHARED_GROUP: 800,
    "test_sweep_e2e.py": 520,
    "test_speed.py": 280,
    "test_faults.py": 240,
    "test_brain_studies.py": 160,
    "test_models.py": 150,
    "test_axes_and_quickstart.py": 140,
    "test_data_formats.py": 90,
    "test_trust_sweep.py": 80,
    "test_cluster.py": 65,
    "test_brain_parts.py": 30,
    "test_search_and_sockets.py": 25,
    "test_checkpoints.py": 20,
    "test_report.py": 15,
}


def _group_of_file(path: str) -> str:
    """A test file's group, from its text: the shared group when it names one of the session's sweeps."""
    import re

    text = (Path(__file__).parent.parent / path).read_text()
    return SHARED_GROUP if re.search(rf"\b({'|'.join(SESSION_SWEEPS)})\b", text) else Path(path).name


def pytest_collection_modifyitems(config, items):
    shared = {item.path for item in items if SESSION_SWEEPS & set(item.fixturenames)}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(SHARED_GROUP if item.path in shared else item.path.name))


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist's own; optional: xdist may be absent
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` by this file's groups, longest first. xdist 3.8 reads a test's group from a suffix it adds
    to the test's id, which pytest 9 no longer lets it add: every test was its own group, so the session's sweeps,
    the servers and every module's sweep were made on both workers. Here the controller finds each test's group from
    its file (the same groups the marks above give)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from functools import cache

    from xdist.scheduler import LoadGroupScheduling

    group_of_file = cache(_group_of_file)

    class FileGroups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):  # an xdist that could add the mark's group to the id
                return nodeid.split("@")[-1]
            return group_of_file(nodeid.split("::", 1)[0])

        def _assign_work_unit(self, node) -> None:
            def seconds(scope: str) -> float:
                return GROUP_SECONDS.get(scope, len(self.workqueue[scope]))

            self.workqueue.move_to_end(max(self.workqueue, key=seconds), last=False)
            super()._assign_work_unit(node)

    return FileGroups(config, log)


@pytest.fixture(autouse=True)
def _seeded():
    random.seed(0)
    np.random.seed(0)
    if "keras" in sys.modules:  # seed Keras too, without importing a backend into tests that need none
        sys.modules["keras"].utils.set_random_seed(0)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A tiny synthetic dataset on disk (PNG, 64 px), shared read-only by the whole session."""
    return synth.write_dataset(tmp_path_factory.mktemp("data") / "smears", TINY_COUNTS, size=64, seed=3)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


def save_legacy_h5(model, path):
    """Write weights in the legacy HDF5 layout of Keras's ImageNet files (what keras.applications loads)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def tree_state(root) -> dict:
    """Every file under root with its size and mtime: to assert a user's folder was left untouched."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(root).rglob("*"))}


ROOT = Path(__file__).parent.parent
FAULTY_SWEEP = ROOT / "tests" / "scripts" / "faulty_sweep.py"  # `sweep` with test-only faults around the trainable


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+), where the ports Ray's own processes take by binding port 0
    land: a port picked from that range can be taken by one of them before the process meant to get it binds it.
    Drawn from the system's entropy, not ``random``: every test reseeds that, so the two xdist workers would draw
    the same ports in the same order."""
    import secrets
    import socket

    while True:
        port = 20000 + secrets.randbelow(12001)  # above Ray's worker ports (10002-19999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def ray_head_command(port: int, agent: int, temp: str, *flags: str) -> list[str]:
    """A plain `ray start --head` in the foreground on 127.0.0.1, as a user starts one on their own machine, with its
    GCS port, its agent's HTTP port (Ray's default, 52365, may be another Ray instance's on this machine: then the head
    never takes a job) and its own temp folder (short: Ray's socket paths must fit in 107 bytes)."""
    return [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--dashboard-agent-listen-port={agent}",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
        *flags,
    ]


def stop_node(proc) -> None:
    """Stop a `ray start --block` node: SIGTERM to it alone, which drains the node through the GCS, stops the node's
    processes and exits (SIGTERM to its whole group would kill the GCS too, and the drain would wait 30 s for it)."""
    import signal
    import subprocess

    proc.send_signal(signal.SIGTERM)  # nothing when it has exited
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def cli(capsys, *args) -> tuple[int, str, str]:
    """The command line in this process (bad requests fail fast: no need to pay a fresh interpreter each time); its
    exit code, stdout and stderr."""
    from search.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_sweep(*args, env=None, timeout=600, faults: dict | None = None):
    """`python -m search ARGS` in a fresh process, from the repository root; the CompletedProcess. With ``faults``,
    the same command line with those test-only faults around the trainable (tests/scripts/faulty_sweep.py)."""
    import json
    import subprocess

    env = env or {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    if faults is None:
        command = [sys.executable, "-m", "search"]
    else:
        command, env = [sys.executable, str(FAULTY_SWEEP)], {**env, "SWEEP_TEST_FAULTS": json.dumps(faults)}
    return subprocess.run(
        [*command, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def evaluated_metrics(model_dir) -> dict[str, float]:
    """`sweep evaluate MODEL_DIR` in a fresh process: the exported model's test metrics, recomputed."""
    proc = run_sweep("evaluate", model_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {line.split()[0]: float(line.split()[1]) for line in proc.stdout.splitlines()[1:]}


def export_best(experiment, model_dir, *extra) -> dict:
    """`sweep export EXPERIMENT --to MODEL_DIR EXTRA...` in a fresh process; the export.json it wrote."""
    import json

    proc = run_sweep("export", experiment, "--to", model_dir, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((Path(model_dir) / "export.json").read_text())


def assert_reproduces_test_metrics(model_dir, best, metrics) -> None:
    """The exported model, re-evaluated in a fresh process, gives the sweep's test metrics to within 1e-4."""
    import pytest

    now = evaluated_metrics(model_dir)
    for metric in metrics:
        assert now[metric] == pytest.approx(best[f"test_{metric}"], abs=1e-4), metric


FAULTS_LOG = "faults"  # classification_experiment's fault log, beside its storage


@pytest.fixture(scope="session")
def classification_experiment(tmp_path_factory):
    """A finished classification sweep (2 trials, fine-tuning stage, stored through a file:// URI as cloud storage
    is), shared by the export and the serving tests. EfficientNetV2-B0 at 32 px: the same classifier code and head
    as the study's InceptionResNetV2 (stepped in test_models, its head checked against the whole model in test_speed,
    its smoke sweep under `make test-slow`) at a fraction of its build and prediction time in every test that serves
    or predicts with the export. The lr 0.01 trial crashes once in its fine-tuning stage, after training epoch 3 and
    before its checkpoint (a test-only fault, logged in ``FAULTS_LOG`` beside ``runs``): Ray retries it from epoch 2's
    checkpoint (test_export checks what it resumed with)."""
    import yaml

    tmp = tmp_path_factory.mktemp("cls")
    spec = {
        "task": "classification",
        "space": {"model": ["efficientnetv2_b0"], "option": [2], "lr": [0.01, 0.001], "dropout": [0.2]},
        # epoch 1 trains the head, epochs 2 and 3 also the top 20 backbone layers (the fine-tuning stage)
        "train": {
            "batch_size": 16,
            "epochs": 3,
            "weights": None,
            "fine_tune_layers": 20,
            "fine_tune_after": 1,
            "calibrate": True,  # temperature scaling on validation: stored in the export, applied by predict
        },
        "data": {"image_size": 32, "synthetic_counts": [8, 10, 9, 8], "synthetic_size": 32, "balance_to": None},
        "scheduler": {"grace_period": 3, "reduction_factor": 2},  # no early stopping: both trials reach epoch 3
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    }
    (tmp / "cls.yaml").write_text(yaml.safe_dump(spec))
    (tmp / FAULTS_LOG).mkdir()
    faults = {"log": str(tmp / FAULTS_LOG), "interrupt": {"0.01": 3}}
    out = run_sweep("run", str(tmp / "cls.yaml"), "--storage", f"file://{tmp}/runs", "--name", "cls", faults=faults)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"experiment: file://{tmp}/runs/cls" in out.stdout
    return tmp / "runs" / "cls"


@pytest.fixture(scope="session")
def segmentation_experiment(tmp_path_factory):
    """A finished segmentation sweep (one tiny U-Net trial of one epoch), shared by the serving and deployment tests."""
    import yaml

    tmp = tmp_path_factory.mktemp("seg")
    spec = {
        "task": "segmentation",
        "space": {"model": ["unet"], "lr": [0.01], "dropout": [0.0]},
        "train": {"batch_size": 8, "epochs": 1, "base_filters": 4},
        "data": {"image_size": 32, "synthetic_counts": [6, 6, 6, 6], "synthetic_size": 64, "balance_to": None},
        "scheduler": {"grace_period": 1, "reduction_factor": 2},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    }
    (tmp / "seg.yaml").write_text(yaml.safe_dump(spec))
    out = run_sweep("run", str(tmp / "seg.yaml"), "--storage", str(tmp / "runs"), "--name", "seg")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp / "runs" / "seg"


@pytest.fixture(scope="session")
def onnx_export(request, tmp_path_factory):
    """task -> (folder, what the command printed) of `sweep export --format onnx --quantize int8` of that task's
    experiment, made once per session in this process: the deployment and the serving tests read the same folders."""
    import contextlib
    import io

    from search.cli import main

    made = {}

    def export(task: str) -> tuple[Path, str]:
        if task not in made:
            experiment = request.getfixturevalue(f"{task}_experiment")
            folder = tmp_path_factory.mktemp(f"onnx-{task}") / "model"
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["export", str(experiment), "--to", str(folder), "--format", "onnx", "--quantize", "int8"])
            assert code == 0, err.getvalue()
            made[task] = (folder, out.getvalue())
        return made[task]

    return export


@pytest.fixture(scope="session")
def images(synth_root, tmp_path_factory) -> Path:
    """A few smears as a user would bring them: PNGs, a JPEG, a non-square crop, and a larger image."""
    import shutil

    import cv2

    folder = tmp_path_factory.mktemp("smears")
    for cls in ("Benign", "Early", "Pre", "Pro"):
        shutil.copy(sorted((synth_root / "Original" / cls).iterdir())[0], folder / f"{cls.lower()}.png")
    rgb = cv2.imread(str(folder / "pre.png"))
    cv2.imwrite(str(folder / "pre_photo.jpg"), rgb, [cv2.IMWRITE_JPEG_QUALITY, 85])
    cv2.imwrite(str(folder / "pro_crop.png"), cv2.imread(str(folder / "pro.png"))[5:60, 0:40])
    cv2.imwrite(str(folder / "early_large.png"), cv2.resize(cv2.imread(str(folder / "early.png")), (300, 300)))
    return folder


def read_hparams(trial_dir) -> dict:
    """A trial's HParams as TensorBoard's own reader finds them in its event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(trial_dir))
    acc.Reload()
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            return dict(data.session_start_info.hparams)
    raise AssertionError(f"no HParams in {trial_dir}")
