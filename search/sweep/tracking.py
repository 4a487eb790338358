"""``sweep run --mlflow URI``: every trial logged to an MLflow tracking store through Ray Tune's own
``MLflowLoggerCallback`` (its configuration as parameters, every reported epoch's numbers as metrics, FINISHED or
FAILED), one MLflow run per trial in an MLflow experiment named after the sweep's; then the best trial's export
(``sweep export``'s folder) as that trial's artifacts under ``model/``.

MLflow's client (``mlflow-skinny``) is an optional dependency: ``pip install 'leukemia-sweep[mlflow]'``. A SQLite
store (``sqlite:///PATH/mlflow.db``) keeps its artifacts in ``PATH/mlflow-artifacts`` beside the database; a tracking
server (``http://...``) keeps them where the server says."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from search.errors import SweepError

if TYPE_CHECKING:
    from ray.tune import Callback

INSTALL = "pip install 'leukemia-sweep[mlflow]' (MLflow's client, mlflow-skinny)"
ARTIFACTS = "mlflow-artifacts"  # beside a SQLite store's database
MODEL_PATH = "model"  # the best trial's export, under its run's artifacts


def check(uri: str) -> None:
    """Before anything runs: MLflow's client is installed and ``uri`` is a tracking store it can open (SweepError
    naming what to do otherwise)."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise SweepError(f"--mlflow {uri}: MLflow's client is not installed; {INSTALL}") from None
    if "://" not in uri:
        raise SweepError(
            f"--mlflow {uri}: give a tracking URI, e.g. sqlite:///{Path(uri).resolve()}/mlflow.db or http://HOST:5000"
        )


def callback(uri: str, experiment_name: str) -> Callback:
    """Ray Tune's MLflow callback for ``experiment_name``; the MLflow experiment is made first where it does not
    exist, a SQLite store's with its artifacts beside the database (MLflow's default would be ./mlruns, wherever the
    command ran)."""
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    check(uri)
    client = MlflowClient(uri)
    try:
        if client.get_experiment_by_name(experiment_name) is None:
            client.create_experiment(experiment_name, artifact_location=_artifact_location(uri, experiment_name))
    except Exception as exc:  # a server that does not answer, a database that cannot be opened
        raise SweepError(f"--mlflow {uri}: the tracking store cannot be used ({exc})") from None
    return MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment_name, tags={"sweep": experiment_name})


def _artifact_location(uri: str, experiment_name: str) -> str | None:
    if not uri.startswith("sqlite:///"):
        return None  # a server's or a file store's own place
    return (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS / experiment_name).resolve().as_uri()


def log_best_model(uri: str, experiment_dir: str) -> str | None:
    """The best trial's export as artifacts of its MLflow run (``model/``); the run's id, or None when the sweep has
    no winner. Ray's callback names each run after Ray's trial (``..._<trial id>``)."""
    from mlflow.tracking import MlflowClient

    from search.outputs.export import export_best
    from search.study.experiment import load_results, load_study
    from search.study.results import best_row

    study = load_study(experiment_dir)
    row = best_row(load_results(experiment_dir), study.metric, study.mode)
    if row is None:
        return None
    client = MlflowClient(uri)
    name = Path(str(experiment_dir).rstrip("/")).name
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.sweep = '{name}'")
    run = next((r for r in runs if r.info.run_name.endswith(f"_{row['trial_id']}")), None)
    if run is None:
        raise SweepError(f"--mlflow {uri}: no MLflow run of the best trial {row['trial']} ({row['trial_id']})")
    with tempfile.TemporaryDirectory() as tmp:
        export_best(experiment_dir, Path(tmp) / MODEL_PATH)
        client.log_artifacts(run.info.run_id, str(Path(tmp) / MODEL_PATH), MODEL_PATH)
        client.set_tag(run.info.run_id, "best_trial", row["trial"])
    return run.info.run_id
