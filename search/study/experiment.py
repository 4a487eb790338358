"""The experiment folder (``STORAGE/NAME``, a local folder or a cloud URI): what is in it, and reading and writing it.

- ``sweep.json``: the resolved study, the data's fingerprints and leakage audit, resources, package versions;
- one folder per trial (``trial_dirname``): TensorBoard event files, progress.csv, result.json, checkpoints;
- ``backbones/<digest>.weights.h5``: each frozen backbone the trials' heads were trained on, once (a trial on a
  frozen backbone checkpoints its head alone; export and Grad-CAM put the two together);
- ``results.csv`` / ``results.json``: one row per trial, test metrics included (written last: it marks the sweep
  finished), and each trial's test report; ``predictions.npz``: what the report's paired statistics and figures need;
- ``timings.json``: where the driver that finished the sweep spent its time, seconds per phase (``runner.Phases``),
  written just after results.csv, whose writing it times;
- Ray Tune's own state, for ``sweep resume``.

Imports neither Ray nor the image stack, so ``sweep report``, ``sweep ls`` and ``sweep export`` stay light.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import socket
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from search import storage as store
from search.errors import SweepError
from search.study.results import best_row, in_study_order, trial_dirname
from search.study.spec import Study, study_from_record

SWEEP_FILE = "sweep.json"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
BASELINES_JSON = "baselines.json"  # segmentation: the classical baselines scored on the test split (no training)
TIMINGS_JSON = "timings.json"
OPTUNA_DB = "optuna.db"  # search.algorithm optuna, local experiments: the Optuna study (SQLite), `optuna-dashboard`'s
BACKBONES = "backbones"  # frozen backbones by weights digest: ``backbone_file``
PREDICTIONS = "predictions.npz"  # per trial: test probabilities, or per-image Dice and a few predicted masks
PACKAGES = (
    "ray",
    "keras",
    "tensorflow",
    "jax",
    "optuna",
    "albumentations",
    "opencv-python-headless",
    "numpy",
    "pandas",
    "scikit-learn",
)


def check_name(name: str) -> str:
    """``name`` as an experiment's folder name: one path component, so the experiment stays inside its storage (a
    ``--name`` of ``../x``, ``/tmp/x`` or ``a/b`` would write elsewhere). Raises SweepError with what to pick."""
    bad = (
        not name
        or name.startswith(".")  # also "." and ".."
        or any(c in name for c in "/\\:")
        or not name.isprintable()
        or len(name) > 200
    )
    if bad:
        raise SweepError(
            f"--name {name!r} is not a folder name: use one name of letters, digits, '-', '_' or '.' (no '/', '\\' "
            "or ':', not starting with '.'); the experiment goes under --storage"
        )
    return name


DRIVER_LOCK = "driver.lock"


@contextlib.contextmanager
def new_experiment(experiment: str) -> Iterator[None]:
    """Make the experiment's folder when its name is checked, so two `sweep run --name X` cannot both go on (local
    storage: mkdir fails for the second; cloud storage has no such step: checked, then made), and hold its
    driver_lock inside. When the block fails before sweep.json is written, the folder is removed again: a refused
    study leaves nothing behind."""
    taken = SweepError(f"{experiment} exists already: pick another --name, or `sweep resume {experiment}`")
    made: list[Path] = []  # storage folders this made: removed again on refusal while empty
    if store.is_uri(experiment):
        if store.exists(experiment):
            raise taken
        store.makedirs(experiment)
    else:
        made = [p for p in Path(experiment).parents if not p.exists()]  # nearest first
        Path(experiment).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(experiment)
        except FileExistsError:
            raise taken from None
    try:
        with driver_lock(experiment):
            yield
    except BaseException:
        if not store.exists(store.join(experiment, SWEEP_FILE)):
            store.remove_tree(experiment)
            for folder in made:  # empty unless another run is starting in it now
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise


@contextlib.contextmanager
def driver_lock(experiment: str) -> Iterator[None]:
    """Held by the process driving a sweep (`run`, `resume`) while it runs: an OS lock (flock) on DRIVER_LOCK in a
    local experiment folder, released when the process ends however it ends. A second driver gets a SweepError naming
    the holder. Experiments in cloud storage are not locked."""
    if store.is_uri(experiment):
        yield
        return
    import fcntl

    with open(Path(experiment) / DRIVER_LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise SweepError(
                f"{experiment} is being run by {holder}; wait for it to finish or stop it, then `sweep resume` it"
            ) from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def trial_dir(experiment: str, row: dict[str, Any] | pd.Series) -> str | None:
    """A results row's trial folder, or None when the row has no trial id (a trial that never reported)."""
    trial_id = row.get("trial_id")
    return store.join(experiment, trial_dirname(row["trial"], trial_id)) if isinstance(trial_id, str) else None


def backbone_file(experiment: str, digest: str) -> str:
    """Where the experiment keeps the frozen backbone of weights digest ``digest``."""
    return store.join(experiment, BACKBONES, f"{digest}.weights.h5")


# ---- sweep.json -----------------------------------------------------------------------------------------------------


def save_sweep(experiment: str, sweep: dict[str, Any]) -> None:
    store.write_text(store.join(experiment, SWEEP_FILE), json.dumps(sweep, indent=2, default=str))


def load_sweep(experiment: str | Path) -> dict[str, Any]:
    experiment = store.normalize(experiment)
    path = store.join(experiment, SWEEP_FILE)
    if not store.exists(path):
        raise SweepError(f"{experiment} is not a sweep experiment (no {SWEEP_FILE}); `sweep ls` lists experiments")
    return json.loads(store.read_text(path))


def load_study(experiment: str | Path, *, here: bool = False) -> Study:
    """The study an experiment ran, validated again as a typed ``Study``. ``here``: also check what must exist on
    this machine to train (its data folder, its weights files), as resuming needs; reading results does not."""
    experiment = store.normalize(experiment)
    return study_from_record(load_sweep(experiment)["study"], where=f"{experiment}/{SWEEP_FILE}", here=here)


# ---- results --------------------------------------------------------------------------------------------------------


def save_results(experiment: str, frame: pd.DataFrame, details: dict[str, Any], arrays: dict[str, Any]) -> None:
    """The finished sweep's files; results.csv last, since it marks the sweep finished."""
    store.write_bytes(store.join(experiment, PREDICTIONS), _npz(arrays))
    store.write_text(store.join(experiment, RESULTS_JSON), json.dumps(details, indent=2, default=float))
    save_results_table(experiment, frame)


def save_results_table(experiment: str, frame: pd.DataFrame) -> None:
    """results.csv alone, in the study's order (``sweep costs`` adds its columns to a finished sweep's)."""
    store.write_text(store.join(experiment, RESULTS_CSV), in_study_order(frame).to_csv(index=False))


def save_timings(experiment: str, seconds: dict[str, float]) -> None:
    store.write_text(store.join(experiment, TIMINGS_JSON), json.dumps(seconds, indent=2))


def load_timings(experiment: str | Path) -> dict[str, float]:
    """Seconds per phase of the driver that finished the sweep (``save_timings``); {} when there are none."""
    path = store.join(store.normalize(experiment), TIMINGS_JSON)
    return json.loads(store.read_text(path)) if store.exists(path) else {}


def save_baselines(experiment: str, rows: list[dict[str, Any]]) -> None:
    store.write_text(store.join(experiment, BASELINES_JSON), json.dumps(rows, indent=2, default=float))


def load_baselines(experiment: str | Path) -> list[dict[str, Any]]:
    """The classical baselines' test rows (``scoring.score_baselines``); [] when the sweep has none."""
    path = store.join(store.normalize(experiment), BASELINES_JSON)
    return json.loads(store.read_text(path)) if store.exists(path) else []


def load_results(experiment: str | Path) -> pd.DataFrame:
    """The finished sweep's table (one row per trial); a clear error while the sweep has not finished."""
    experiment = store.normalize(experiment)
    path = store.join(experiment, RESULTS_CSV)
    if not store.exists(path):
        load_sweep(experiment)  # not an experiment at all: say that first
        raise SweepError(
            f"{experiment} has no finished trials yet (no {RESULTS_CSV}): let it finish, or `sweep resume {experiment}`"
        )
    return pd.read_csv(io.StringIO(store.read_text(path)))


def load_details(experiment: str | Path) -> dict[str, Any]:
    """Each trial's test report (results.json), by trial name; {} when there is none."""
    path = store.join(store.normalize(experiment), RESULTS_JSON)
    return json.loads(store.read_text(path)) if store.exists(path) else {}


def load_predictions(experiment: str | Path) -> dict[str, Any]:
    """predictions.npz as a dict of arrays ({} when there is none)."""
    import numpy as np

    path = store.join(store.normalize(experiment), PREDICTIONS)
    if not store.exists(path):
        return {}
    with np.load(io.BytesIO(store.read_bytes(path))) as z:
        return {k: z[k] for k in z.files}


def load_history(experiment: str, row: dict[str, Any] | pd.Series) -> pd.DataFrame | None:
    """A trial's per-epoch records (its progress.csv), or None."""
    folder = trial_dir(experiment, row)
    path = store.join(folder, "progress.csv") if folder else None
    if path is None or not store.exists(path):
        return None
    return pd.read_csv(io.StringIO(store.read_text(path)))


def _npz(arrays: dict) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


# ---- every experiment of a storage ----------------------------------------------------------------------------------


def list_experiments(storage: str | Path) -> pd.DataFrame:
    """Experiments under ``storage`` (a folder or a URI) with status, trial counts and best validation metric."""
    from models.tasks import task_info

    storage = store.normalize(storage)
    rows = []
    for name in store.subfolders(storage):
        exp = store.join(storage, name)
        if not store.exists(store.join(exp, SWEEP_FILE)):
            continue
        sweep = load_sweep(exp)
        task = task_info(sweep["study"]["task"])
        row = {"experiment": name, "task": task.name, "started": sweep.get("started", "")}
        best = f"best {task.metric}"
        if store.exists(store.join(exp, RESULTS_CSV)):
            frame = load_results(exp)
            counts = frame["status"].value_counts().to_dict()
            winner = best_row(frame, task.metric, task.mode)  # chosen as the report chooses: never an unscored trial
            row |= {
                "status": "finished",
                "trials": len(frame),
                "detail": ", ".join(f"{v} {k}" for k, v in counts.items()),
                best: None if winner is None else winner[task.metric],
            }
        else:
            trials = sum(store.exists(store.join(exp, d, "result.json")) for d in store.subfolders(exp))
            row |= {"status": "unfinished", "trials": trials, "detail": f"sweep resume {exp}", best: None}
        rows.append(row)
    return pd.DataFrame(rows)


def started_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
