"""Run a study as a Ray Tune sweep, resume it, and finalize it: each trial's best checkpoint scored on the test
split, and the results table written (the experiment folder's layout: ``search.study.experiment``)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import Callback

from data_pipeline import folds_summary, prepare, prepare_folds
from search import storage as store
from search.cluster.connect import init_ray
from search.errors import SweepError, SweepInterrupted
from search.outputs.deploy import measure_costs
from search.study import experiment as exp
from search.study.axes import CONFIG_KEYS
from search.study.checkpoints import SCORE
from search.study.results import (
    COST_COLUMNS,
    TRIAL_PHASES,
    UNSCORED,
    best_epoch,
    best_row,
    best_so_far,
    error_line,
    first_epoch_overhead,
    trial_dirname,
    trial_name,
    trial_status,
)
from search.study.spec import Study, param_space
from search.sweep import tracking
from search.sweep.scoring import SHOWN_MASKS, evaluate_all, score_baselines, start_gradcam
from search.sweep.trial import TrialContext, train_trial


def option_values(study: Study) -> list[int]:
    """The loading options this study's trials use: each is prepared once per sweep."""
    axis = study.space.get("option")
    if axis is None:
        return [study.data.option]
    return sorted(axis if isinstance(axis, list) else axis["choice"])


def _gpus_per_trial(study: Study, override: float | None) -> float:
    import ray

    value = override if override is not None else study.resources.gpus_per_trial
    if value == "auto":
        return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return float(value)


def _trainable(study: Study, datasets: Mapping, gpus: float, cpus: float, experiment_dir: str, cache_dir: str | None):
    from ray import tune

    context = TrialContext(study, gpus_per_trial=gpus, experiment_dir=str(experiment_dir), cache_dir=cache_dir)
    fn = tune.with_parameters(train_trial, datasets=datasets, context=context)
    return tune.with_resources(fn, {"cpu": cpus, "gpu": gpus})


def prepare_all(study: Study) -> dict:
    """Loading option -> PreparedData, or with ``search.folds: k`` a tuple of k (one per fold, one test split)."""
    k = study.search.folds
    cfgs = {opt: dataclasses.replace(study.data, option=opt) for opt in option_values(study)}
    return {opt: prepare(cfg) if k == 1 else prepare_folds(cfg, k) for opt, cfg in cfgs.items()}


def _data_summary(data) -> dict:
    return folds_summary(data) if isinstance(data, tuple) else data.summary()


def _sweep_record(study: Study, datasets: dict, gpus: float, cpus: float, cache_dir: str | None) -> dict:
    """What sweep.json records: the cluster, the resolved study, resources, data summaries, package versions."""
    import ray

    return {
        "cluster": {
            "nodes": sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]),
            "resources": ray.cluster_resources(),
        },
        "study": study.to_dict(),
        "resources": {"gpus_per_trial": gpus, "cpus_per_trial": cpus, "cache_dir": cache_dir},
        "data": {str(opt): _data_summary(d) for opt, d in datasets.items()},
        "versions": exp.versions(),
        "started": exp.started_now(),
    }


def _search_alg(study: Study, experiment_dir: str):
    """Who proposes the trials. Grid and random: Ray Tune's own variant generator, seeded by ``search.seed`` (the
    same seed samples the same configurations), at most ``max_concurrent_trials`` at a time. Optuna: its TPE
    searcher; the Optuna study lives in SQLite inside a local experiment folder (``optuna.db``, study named after the
    experiment): every finished trial is written there as it is told, ``optuna-dashboard`` reads it live, and
    ``sweep resume`` continues the same study (Ray Tune restores the searcher, which reconnects to the file). In
    cloud storage it stays in memory, saved with Ray Tune's state."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if study.search.algorithm != "optuna":
        return BasicVariantGenerator(max_concurrent=_max_concurrent(study) or 0, random_state=study.search.seed)
    from ray.tune.search.optuna import OptunaSearch

    storage = None
    if not store.is_uri(experiment_dir):
        from optuna.storages import RDBStorage

        storage = RDBStorage(f"sqlite:///{Path(experiment_dir).resolve() / exp.OPTUNA_DB}")
    metrics, modes = (list(x) for x in zip(*study.objectives, strict=True))  # two objectives: Optuna's front
    metrics[0] = best_so_far(metrics[0]) if len(metrics) > 1 else metrics[0]  # each trial's best epoch, as reported
    searcher = OptunaSearch(
        metric=metrics if len(metrics) > 1 else None,  # one: the Tuner's metric, set below
        mode=modes if len(modes) > 1 else None,
        seed=study.search.seed,
        storage=storage,
        study_name=os.path.basename(experiment_dir),
    )
    # Optuna learns from finished trials: a few at a time unless the study sets its own limit.
    return ConcurrencyLimiter(searcher, max_concurrent=_max_concurrent(study) or 4)


def _scheduler(study: Study):
    """ASHA on the validation metric; None (Ray Tune's FIFO: every trial to its last epoch) for two objectives."""
    if not study.early_stopping:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        max_t=study.train.epochs,
        grace_period=study.scheduler.grace_period,
        reduction_factor=study.scheduler.reduction_factor,
    )


def _max_concurrent(study: Study) -> int | None:
    return study.resources.max_concurrent_trials or None


STATE_PERIOD_S = "1"  # the experiment's own state (which trial ran how far) is written to storage every second


def checkpoint_config():
    """Each trial's best checkpoint (ranked by ``SCORE``) and always its latest. With ``num_to_keep=1`` Ray also
    snapshots the experiment's state at every trial checkpoint, so a resumed trial starts from its last epoch."""
    from ray import tune

    return tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SCORE, checkpoint_score_order="max")


def _record_state_often() -> None:
    """Before the Tuner exists: Ray reads these when its controller starts (the driver's process)."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", STATE_PERIOD_S)
    # A snapshot per trial checkpoint is intended here: silence Ray's "snapshotting is frequent" warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def run_study(
    study: Study,
    *,
    storage: str | Path,
    name: str | None = None,
    address: str | None = None,
    gpus_per_trial: float | None = None,
    cpus_per_trial: float | None = None,
    cache_dir: str | None = None,
    verbose: int = 1,
    trial_datasets: Mapping | None = None,
    mlflow: str | None = None,
) -> str:
    """Run every trial of ``study``; return the experiment folder or URI (results.csv written).
    ``storage``: a local folder or a cloud URI (s3://, gs://, file://). ``cache_dir``: where trials keep cached
    features and compiled programs (default: each node's SWEEP_CACHE_DIR). ``trial_datasets``: what trials read
    their data from instead of the arrays prepared here (``sweep bench``'s hand-written rival reads files itself).
    ``mlflow``: an MLflow tracking URI every trial is logged to, and the best trial's export
    (``search.sweep.tracking``)."""
    from ray import tune

    phases = Phases()
    storage = store.normalize(storage)
    name = exp.check_name(name or f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    experiment_dir = store.join(storage, name)
    logged = [tracking.callback(mlflow, name)] if mlflow is not None else []  # a bad store stops here, nothing written
    with exp.new_experiment(experiment_dir):  # claimed now (a second run of this name stops here), and locked
        _warn_if_open(cache_dir, storage)
        datasets = prepare_all(study)
        init_ray(address, study.train.backend)
        gpus = _gpus_per_trial(study, gpus_per_trial)
        cpus = cpus_per_trial if cpus_per_trial is not None else study.resources.cpus_per_trial
        exp.save_sweep(experiment_dir, _sweep_record(study, datasets, gpus, cpus, cache_dir))
        _record_state_often()
        if not study.early_stopping and verbose:
            names = " and ".join(n for n, _ in study.objectives)
            print(f"searching for {names}: no trial stops early (ASHA ranks trials by one metric)", flush=True)
        for_trials = datasets if trial_datasets is None else trial_datasets
        tuner = tune.Tuner(
            _trainable(study, for_trials, gpus, cpus, experiment_dir, cache_dir),
            param_space={**param_space(study), "seed": study.search.seed},
            tune_config=tune.TuneConfig(
                # Two objectives: the searcher holds both (a metric here would replace them) and no trial stops early
                metric=study.metric if study.early_stopping else None,
                mode=study.mode if study.early_stopping else None,
                scheduler=_scheduler(study),
                search_alg=_search_alg(study, experiment_dir),
                num_samples=study.search.num_samples,
                trial_dirname_creator=lambda trial: trial_dirname(trial_name(trial.config), trial.trial_id),
                reuse_actors=True,  # a worker imports its framework once, not once per trial
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=1),
                checkpoint_config=checkpoint_config(),
                callbacks=[RetryCounter(experiment_dir), *logged],
                verbose=verbose,
            ),
        )
        phases.end("start_up")
        grid = tuner.fit()
        phases.end("trials")
        check_ended(grid, experiment_dir)
        finalize(experiment_dir, grid, study, datasets, phases)
    if mlflow is not None:  # after the driver's lock: the export reads the finished experiment
        _extra(f"logging the best model to MLflow ({mlflow})", tracking.log_best_model, mlflow, experiment_dir)
    return experiment_dir


def resume_study(experiment_dir: str | Path, *, address: str | None = None) -> str:
    """Continue an interrupted sweep: finished trials are kept, unfinished ones continue from their checkpoint,
    errored ones are retried."""
    from ray import tune

    phases = Phases()
    experiment_dir = store.normalize(experiment_dir)
    sweep = exp.load_sweep(experiment_dir)  # an experiment folder, checked before anything is written into it
    study = exp.load_study(experiment_dir, here=True)
    if not tune.Tuner.can_restore(experiment_dir):
        raise SweepError(
            f"{experiment_dir} has no Ray Tune state to resume from (it stopped before the first trial): "
            f"run the study again with `sweep run`"
        )
    with exp.driver_lock(experiment_dir):  # one driver per experiment: a second resume stops here
        res = sweep["resources"]
        _warn_if_open(res.get("cache_dir"), os.path.dirname(experiment_dir), experiment_dir)
        datasets = prepare_all(study)
        init_ray(address, study.train.backend)
        _record_state_often()
        tuner = tune.Tuner.restore(
            experiment_dir,
            trainable=_trainable(
                study, datasets, res["gpus_per_trial"], res["cpus_per_trial"], experiment_dir, res.get("cache_dir")
            ),
            resume_unfinished=True,
            resume_errored=True,
        )  # the RunConfig comes back with the Tuner's saved state, its RetryCounter included
        phases.end("start_up")
        grid = tuner.fit()
        phases.end("trials")
        check_ended(grid, experiment_dir)
        return finalize(experiment_dir, grid, study, datasets, phases)


STORAGE_WHY = "`sweep resume` unpickles Ray Tune's state from it"


def _warn_if_open(cache_dir: str | None, *storage: str) -> None:
    """One line on stderr for each folder that must stay private and that other users can write in: the cache
    folder and the storage (local folders only; a bucket's permissions are its own)."""
    from data_pipeline.cache import cache_warning, shared_warning

    lines = [cache_warning(cache_dir)]
    lines += [shared_warning(f, "the storage folder", STORAGE_WHY) for f in storage if not store.is_uri(f)]
    for line in filter(None, lines):
        print(line, file=sys.stderr)


SPEED_COLUMNS = (
    "backend",
    "mixed_precision",
    "cpu_threads",
    "feature_cache_hits",
    "features_computed",
    "compile_cache_hits",
    "compile_cache_misses",
    *TRIAL_PHASES,
)


def _last_values(history: pd.DataFrame | None, columns: tuple[str, ...]) -> dict[str, Any]:
    """Each column's last recorded value (a diverged trial's final report carries none of them)."""
    if history is None:
        return {}
    return {c: history[c].dropna().iloc[-1] for c in columns if c in history and history[c].notna().any()}


def checkpoint_location(checkpoint_path: str, experiment_dir: str) -> str:
    """A checkpoint's path as a URI when the experiment lives in cloud storage (Ray gives it without its scheme)."""
    if not store.is_uri(experiment_dir) or store.is_uri(checkpoint_path):
        return checkpoint_path
    scheme = experiment_dir.split("://", 1)[0]
    return f"{scheme}://{checkpoint_path}"


def best_checkpoint(result, best: dict[str, Any]):
    """The checkpoint of the best epoch (a whole model): Ray also keeps the latest, which may tie with it."""
    if not best:
        return None
    for checkpoint, metrics in result.best_checkpoints:
        if metrics.get("epoch") == best["epoch"]:
            return checkpoint
    return None


class RetryCounter(Callback):
    """How often Ray restarted each trial after a failure (a lost node, a crashed worker), kept in the experiment
    folder (``retries.json``) so that it survives a resumed driver. A Ray Tune callback (public API)."""

    FILE = "retries.json"

    def __init__(self, experiment_dir: str):
        self.path = store.join(experiment_dir, self.FILE)

    def counts(self) -> dict[str, int]:
        return json.loads(store.read_text(self.path)) if store.exists(self.path) else {}

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        counts = self.counts()
        counts[trial.trial_id] = counts.get(trial.trial_id, 0) + 1
        store.write_text(self.path, json.dumps(counts))


class Phases:
    """Where a sweep's driver spent its time: seconds per phase, in order (``end`` closes the phase that ran since
    the previous one), kept as the experiment's timings.json. Phases: ``start_up`` (data, Ray, the record, up to the
    first trial), ``trials`` (Ray Tune's run of every trial), ``test_scoring``, ``extras`` (Grad-CAM or the
    baselines), ``costs`` (with ``search.costs``: each architecture's best trial timed for deployment), ``results``
    (writing them)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def end(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._since
        self._since = now


ENDED = ("TERMINATED", "ERROR")  # Ray Tune's statuses of a trial that will not run again in this sweep


def unended(statuses: list[str]) -> int:
    """How many trials of a sweep's saved state have not ended (pending, running, paused)."""
    return sum(status not in ENDED for status in statuses)


def check_ended(grid, experiment_dir: str) -> None:
    """Ray Tune returns from a run it was told to stop (Ctrl-C, SIGINT) as from a finished one, every trial marked
    terminated, after saving its state with the trials as they were: pending or running. Read from that state,
    such a run has nothing to score yet (finalizing read trials that never started and stopped on a traceback), so
    the driver stops with what to do. (Were Ray Tune's last save of a finished run to fail, which it only logs, the
    run would read as interrupted, and `sweep resume` would finish it.)"""
    from ray.tune import ExperimentAnalysis

    statuses = [t.status for t in ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem).trials]
    if left := unended(statuses):
        raise SweepInterrupted(
            f"interrupted with {len(statuses) - left} of {len(statuses)} trials ended (Ray Tune kept its state): "
            f"`sweep resume {experiment_dir}` continues the sweep"
        )


def finalize(experiment_dir: str, grid, study: Study, datasets: dict, phases: Phases) -> str:
    """Evaluate each trial's best checkpoint on the test split; write results.csv/json and the driver's phase
    timings (timings.json); return the folder."""
    sweep = exp.load_sweep(experiment_dir)
    retries = RetryCounter(experiment_dir).counts()
    rows, jobs = [], []
    for result in grid:
        config = {k: result.config[k] for k in CONFIG_KEYS if k in result.config}
        history = result.metrics_dataframe
        last = result.metrics or {}
        best = best_epoch(history, study.metric, study.mode)
        row = {
            "trial": trial_name(result.config),
            "trial_id": last.get("trial_id"),
            **config,
            "status": trial_status(result.error is not None, last, study.train.epochs),
            "epochs": int(last.get("epoch", 0) or 0),
            "best_epoch": int(best["epoch"]) if best else None,
            "wall_seconds": float(history["epoch_seconds"].sum())
            if history is not None and "epoch_seconds" in history
            else 0.0,
            "error": error_line(result.error),
            "retries": retries.get(last.get("trial_id"), 0),
            "first_epoch_overhead_seconds": first_epoch_overhead(
                [] if history is None or "epoch_seconds" not in history else history["epoch_seconds"].dropna().tolist()
            ),
            **_last_values(history, SPEED_COLUMNS),
            **_last_values(history, ("architecture", *COST_COLUMNS)),  # costs: measured as the model was built
        }
        row |= {k: v for k, v in best.items() if k.startswith(("train_", "val_"))}
        checkpoint = best_checkpoint(result, best)
        row["checkpoint"] = checkpoint_location(checkpoint.path, experiment_dir) if checkpoint is not None else ""
        if checkpoint is not None:
            jobs.append((len(rows), row["checkpoint"], study.trial(result.config).option))
        rows.append(row)
    gradcam = None
    if study.facts.class_scores:  # the best classifier's Grad-CAM heatmaps on a few test images per class
        gradcam = _extra("Grad-CAM of the best trial", start_gradcam, rows, study, datasets, sweep["resources"],
                         experiment_dir)  # fmt: skip
    first = next(iter(datasets.values()))
    first = first[0] if isinstance(first, tuple) else first
    beside = ThreadPoolExecutor(1)  # the driver only waits on the scoring tasks: the baselines fit meanwhile
    baselines = beside.submit(_extra, "the classical baselines", score_baselines, first) if study.facts.masks else None
    reports = evaluate_all([(p, o) for _, p, o in jobs], study, datasets, sweep["resources"], experiment_dir)
    phases.end("test_scoring")  # Grad-CAM and the baselines run beside it: "extras" is what they take beyond
    details, arrays = {}, {}
    for (i, _, _), outcome in zip(jobs, reports, strict=True):
        if isinstance(outcome, Exception):  # this trial alone goes without test metrics; it is never the best
            rows[i] |= {"status": UNSCORED, "error": error_line(outcome)}
            continue
        report, extra = outcome
        rows[i] |= {f"test_{k}": v for k, v in report.items() if isinstance(v, float)}
        details[rows[i]["trial"]] = report
        arrays |= {f"{rows[i]['trial']}/{k}": v for k, v in extra.items()}
    if study.facts.masks:  # the test images those masks belong to (one loading option for segmentation)
        arrays |= {"images": first.test.images[:SHOWN_MASKS], "truth": first.test.masks[:SHOWN_MASKS]}
        if baselines.result() is not None:
            exp.save_baselines(experiment_dir, baselines.result())
    elif gradcam is not None:  # kept while its trial is still the best once scored (a trial left unscored is not)
        best = best_row(pd.DataFrame(rows), study.metric, study.mode)
        if best is not None and best["trial"] == gradcam[0]:
            arrays |= _extra("Grad-CAM of the best trial", _ray_get, gradcam[1]) or {}
    beside.shutdown()
    phases.end("extras")
    if study.search.costs:
        costs = _extra("the deployment costs", measure_costs, pd.DataFrame(rows), study.metric, study.mode,
                       study.data.image_size, experiment_dir)  # fmt: skip
        for i, cost in (costs or {}).items():
            rows[i] |= cost
        phases.end("costs")
    exp.save_results(experiment_dir, pd.DataFrame(rows), details, arrays)
    phases.end("results")
    exp.save_timings(experiment_dir, phases.seconds)
    return experiment_dir


def _ray_get(ref):
    import ray

    return ray.get(ref)


def _extra(what: str, make, *args):
    """One of the report's extras, or None with a warning: it must not cost the results table."""
    try:
        return make(*args)
    except Exception as exc:
        print(f"warning: {what} failed ({error_line(exc)}); the results and the report go without it", file=sys.stderr)
        return None
