"""Run a study as a Ray Tune sweep, resume it, and turn its trials into one results table.

Experiment folder (``STORAGE/NAME``): Ray Tune's own state and one folder per trial (TensorBoard event files,
progress.csv, result.json, the best checkpoint), plus ``sweep.json`` (the resolved study, data fingerprints and
leakage audit, package versions), ``results.csv`` / ``results.json`` (one row per trial, test metrics included).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from data_pipeline import DataConfig, folds_summary, prepare, prepare_folds
from search import storage as store
from search.checkpoints import SCORE
from search.errors import SweepError
from search.spec import METRIC, TRAIN_AXES, Resources, Scheduler, Search, Study, Train, param_space
from search.trial import checkpoint_model, fold_member, train_trial

SWEEP_FILE = "sweep.json"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
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


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def study_from_dict(d: dict[str, Any]) -> Study:
    data = dict(d["data"])
    if "mask_threshold" in data:  # sweeps recorded before data.mask_rule: the same grey-level threshold
        data["mask_rule"] = f"threshold:{data.pop('mask_threshold')}"
    data = DataConfig(
        **{**data, "fractions": tuple(data["fractions"]), "synthetic_counts": tuple(data["synthetic_counts"])}
    )
    return Study(
        name=d["name"],
        task=d["task"],
        space=d["space"],
        search=Search(**d["search"]),
        train=Train(**d["train"]),
        data=data,
        scheduler=Scheduler(**d["scheduler"]),
        resources=Resources(**d["resources"]),
    )


def option_values(study: Study) -> list[int]:
    """The loading options this study's trials use: each is prepared once per sweep."""
    axis = study.space.get("option")
    if axis is None:
        return [study.data.option]
    return sorted(axis if isinstance(axis, list) else axis["choice"])


# Search axes beyond the study's four, in table order, with their short label in trial names ("" = the value alone).
EXTRA_AXES = {
    "optimizer": "",
    "lr_schedule": "",
    "weight_decay": "wd",
    "batch_size": "bs",
    "dense_units": "du",
    "base_filters": "f",
    "blocks": "b",
}
assert set(EXTRA_AXES) == set(TRAIN_AXES["classification"]) | set(TRAIN_AXES["segmentation"])
CONFIG_KEYS = ("model", "option", "lr", "dropout", *EXTRA_AXES, "repeat")  # a results row's configuration


def trial_name(config: dict[str, Any]) -> str:
    """Run name in TensorBoard and on disk: model, option, lr, dropout and any other axis, readable."""
    option = f"-opt{config['option']}" if "option" in config else ""
    repeat = f"-r{config['repeat']}" if "repeat" in config else ""
    extra = "".join(
        f"-{label}{config[k]:g}" if isinstance(config[k], (int, float)) else f"-{label}{config[k]}"
        for k, label in EXTRA_AXES.items()
        if k in config
    )
    return f"{config['model']}{option}-lr{float(config['lr']):g}-do{float(config['dropout']):g}{extra}{repeat}"


def _trial_dirname(trial) -> str:
    return f"{trial_name(trial.config)}-{trial.trial_id}"


def init_ray(address: str | None, backend: str) -> None:
    import ray

    env = {
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:  # a fresh local cluster on the loopback address only
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            runtime_env={"env_vars": env},
            log_to_driver=False,
        )


def _gpus_per_trial(study: Study, override: float | None) -> float:
    import ray

    value = override if override is not None else study.resources.gpus_per_trial
    if value == "auto":
        return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return float(value)


def _settings(study: Study, gpus: float, experiment_dir: str, cache_dir: str | None) -> dict[str, Any]:
    return {
        "train": dataclasses.asdict(study.train),
        "task": study.task,
        "metric": study.metric,
        "loss": study.loss,
        "seed": study.search.seed,
        "option": study.data.option,  # the loading option of trials whose space has no option axis (segmentation)
        "gpus_per_trial": gpus,
        "experiment_dir": str(experiment_dir),
        "cache_dir": cache_dir,  # None: each node's own SWEEP_CACHE_DIR
    }


def _trainable(study: Study, datasets: Mapping, gpus: float, cpus: float, experiment_dir: str, cache_dir: str | None):
    from ray import tune

    settings = _settings(study, gpus, experiment_dir, cache_dir)
    fn = tune.with_parameters(train_trial, datasets=datasets, settings=settings)
    return tune.with_resources(fn, {"cpu": cpus, "gpu": gpus})


def prepare_all(study: Study) -> dict:
    """Loading option -> PreparedData, or with ``search.folds: k`` a tuple of k (one per fold, one test split)."""
    k = study.search.folds
    cfgs = {opt: dataclasses.replace(study.data, option=opt) for opt in option_values(study)}
    return {opt: prepare(cfg) if k == 1 else prepare_folds(cfg, k) for opt, cfg in cfgs.items()}


def _data_summary(data) -> dict:
    return folds_summary(data) if isinstance(data, tuple) else data.summary()


def _search_alg(study: Study):
    if study.search.algorithm != "optuna":
        return None
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    # Optuna learns from finished trials: a few at a time unless the study sets its own limit.
    return ConcurrencyLimiter(OptunaSearch(seed=study.search.seed), max_concurrent=_max_concurrent(study) or 4)


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
) -> str:
    """Run every trial of ``study``; return the experiment folder or URI (results.csv written).
    ``storage``: a local folder or a cloud URI (s3://, gs://, file://). ``cache_dir``: where trials keep cached
    features and compiled programs (default: each node's SWEEP_CACHE_DIR). ``trial_datasets``: what trials read
    their data from instead of the arrays prepared here (``sweep bench``'s hand-written rival reads files itself)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    storage = store.normalize(storage)
    name = name or f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment_dir = store.join(storage, name)
    if store.exists(experiment_dir):
        raise SweepError(f"{experiment_dir} exists already: pick another --name, or `sweep resume {experiment_dir}`")
    datasets = prepare_all(study)
    init_ray(address, study.train.backend)
    gpus = _gpus_per_trial(study, gpus_per_trial)
    cpus = cpus_per_trial if cpus_per_trial is not None else study.resources.cpus_per_trial
    import ray

    store.makedirs(experiment_dir)
    sweep = {
        "cluster": {
            "nodes": sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]),
            "resources": ray.cluster_resources(),
        },
        "study": study.to_dict(),
        "resources": {"gpus_per_trial": gpus, "cpus_per_trial": cpus, "cache_dir": cache_dir},
        "data": {str(opt): _data_summary(d) for opt, d in datasets.items()},
        "versions": versions(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    store.write_text(store.join(experiment_dir, SWEEP_FILE), json.dumps(sweep, indent=2, default=str))
    _record_state_often()
    for_trials = datasets if trial_datasets is None else trial_datasets
    tuner = tune.Tuner(
        _trainable(study, for_trials, gpus, cpus, experiment_dir, cache_dir),
        param_space={**param_space(study), "seed": study.search.seed},
        tune_config=tune.TuneConfig(
            metric=study.metric,
            mode="max",
            scheduler=ASHAScheduler(
                max_t=study.train.epochs,
                grace_period=study.scheduler.grace_period,
                reduction_factor=study.scheduler.reduction_factor,
            ),
            search_alg=_search_alg(study),
            max_concurrent_trials=None if study.search.algorithm == "optuna" else _max_concurrent(study),
            num_samples=study.search.num_samples,
            trial_dirname_creator=_trial_dirname,
            reuse_actors=True,  # a worker imports its framework once, not once per trial
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=checkpoint_config(),
            verbose=verbose,
        ),
    )
    grid = tuner.fit()
    return finalize(experiment_dir, grid, study, datasets)


def load_sweep(experiment_dir: str | Path) -> dict[str, Any]:
    experiment_dir = store.normalize(experiment_dir)
    path = store.join(experiment_dir, SWEEP_FILE)
    if not store.exists(path):
        raise SweepError(f"{experiment_dir} is not a sweep experiment (no {SWEEP_FILE}); `sweep ls` lists experiments")
    return json.loads(store.read_text(path))


def load_results(experiment_dir: str | Path) -> pd.DataFrame:
    """The finished sweep's table (one row per trial); a clear error while the sweep has not finished."""
    import io

    experiment_dir = store.normalize(experiment_dir)
    path = store.join(experiment_dir, RESULTS_CSV)
    if not store.exists(path):
        load_sweep(experiment_dir)  # not an experiment at all: say that first
        raise SweepError(
            f"{experiment_dir} has no finished trials yet (no {RESULTS_CSV}): "
            f"let it finish, or `sweep resume {experiment_dir}`"
        )
    return pd.read_csv(io.StringIO(store.read_text(path)))


def resume_study(experiment_dir: str | Path, *, address: str | None = None, verbose: int = 1) -> str:
    """Continue an interrupted sweep: finished trials are kept, unfinished ones continue from their checkpoint,
    errored ones are retried."""
    from ray import tune

    experiment_dir = store.normalize(experiment_dir)
    sweep = load_sweep(experiment_dir)
    study = study_from_dict(sweep["study"])
    if not tune.Tuner.can_restore(experiment_dir):
        raise SweepError(
            f"{experiment_dir} has no Ray Tune state to resume from (it stopped before the first trial): "
            f"run the study again with `sweep run`"
        )
    datasets = prepare_all(study)
    init_ray(address, study.train.backend)
    res = sweep["resources"]
    _record_state_often()
    tuner = tune.Tuner.restore(
        experiment_dir,
        trainable=_trainable(
            study, datasets, res["gpus_per_trial"], res["cpus_per_trial"], experiment_dir, res.get("cache_dir")
        ),
        resume_unfinished=True,
        resume_errored=True,
    )
    return finalize(experiment_dir, tuner.fit(), study, datasets)


def trial_status(error: bool, last: dict[str, Any], max_epochs: int) -> str:
    """completed | stopped (early, by ASHA) | diverged | failed."""
    if error:
        return "failed"
    if last.get("diverged"):
        return "diverged"
    return "completed" if int(last.get("epoch", 0)) >= max_epochs else "stopped"


def _error_line(error: BaseException | None) -> str:
    """The exception's own last line (Ray wraps it in a header and a remote traceback)."""
    lines = [line for line in str(error or "").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


SPEED_COLUMNS = (
    "backend",
    "mixed_precision",
    "feature_cache_hits",
    "feature_seconds",
    "compile_cache_hits",
    "compile_cache_misses",
)


def first_epoch_overhead(epoch_seconds: list[float]) -> float | None:
    """Seconds the first epoch took beyond a steady epoch (the median of the others): compilation, feature
    extraction and warm-up. None with a single epoch, where nothing tells the two apart."""
    import statistics

    if len(epoch_seconds) < 2:
        return None
    return max(0.0, epoch_seconds[0] - statistics.median(epoch_seconds[1:]))


def _last_values(history: pd.DataFrame | None, columns: tuple[str, ...]) -> dict[str, Any]:
    """Each column's last recorded value (a diverged trial's final report carries none of them)."""
    if history is None:
        return {}
    return {c: history[c].dropna().iloc[-1] for c in columns if c in history and history[c].notna().any()}


def _best_row(history: pd.DataFrame, metric: str) -> dict[str, Any]:
    """The epoch whose validation metric is highest among finite, non-diverged epochs (selection on validation)."""
    if history is None or history.empty or metric not in history:
        return {}
    ok = history[(history.get("diverged", False) != True) & history[metric].notna()]  # noqa: E712
    ok = ok[ok["train_loss"].map(math.isfinite)] if "train_loss" in ok else ok
    return {} if ok.empty else ok.loc[ok[metric].idxmax()].to_dict()


SHOWN_MASKS = 8  # test images whose predicted masks are kept for the report's figure


def evaluate_checkpoint(
    checkpoint_path: str,
    task: str,
    batch_size: int,
    data,
    compile_cache=None,
    *,
    tta: bool = False,
    calibrate: bool = False,
) -> tuple[dict, dict]:
    """Test-split metrics of one checkpoint (the only place the test split is used), and what the report needs:
    the test probabilities (classification) or the per-image Dice and the first predicted masks (segmentation).
    ``compile_cache``: (backend, wanted, cache_dir) as the trials had it: checkpoints of one model share a compiled
    program. ``tta``: also the metrics with test-time augmentation (``tta_*``). ``calibrate``: fit a temperature
    on the validation split, ECE before and after (``calibration``)."""
    import tempfile

    from search import compile_cache as jax_cache

    if compile_cache is not None:
        jax_cache.enable_for(*compile_cache)
    import numpy as np

    from models import stats
    from models.evaluation import per_image_dice, predict, report_from_probs

    with tempfile.TemporaryDirectory() as tmp:
        model = checkpoint_model(store.download(checkpoint_path, tmp))
    folds = data if isinstance(data, tuple) else (data,)
    data = folds[0]  # every fold has the same test split
    probs = predict(model, data.test.images, batch_size)
    report = report_from_probs(data.test, probs, task, data.classes)
    if tta:
        tta_probs = predict(model, data.test.images, batch_size, tta=True)
        with_tta = report_from_probs(data.test, tta_probs, task, data.classes)
        report |= {f"tta_{k}": v for k, v in with_tta.items() if isinstance(v, float)}
    if task == "classification" and calibrate:
        val_probs, val_labels = _validation_probs(model, folds, batch_size)
        temperature = stats.fit_temperature(val_probs, val_labels)
        report["ece_calibrated"] = stats.ece(stats.apply_temperature(probs, temperature), data.test.labels)
        fitted_on = "validation" if len(folds) == 1 else "out-of-fold validation (each fold model on its own fold)"
        report["calibration"] = {"temperature": temperature, "fitted_on": fitted_on}
    if task == "classification":
        return report, {"probs": probs, "labels": data.test.labels.astype(np.int32)}
    return report, {
        "dice": per_image_dice(data.test.masks, probs[..., 0]),
        "masks": (probs[:SHOWN_MASKS, ..., 0] >= 0.5).astype(np.uint8),
    }


def _validation_probs(model, folds: tuple, batch_size: int):
    """Validation probabilities to calibrate on: the model's own, or for an ensemble of fold models each fold
    model's on its own validation fold (out-of-fold: no image is scored by a model that trained on it)."""
    import numpy as np

    from models.evaluation import predict

    if len(folds) == 1:
        return predict(model, folds[0].val.images, batch_size), folds[0].val.labels
    probs = [predict(fold_member(model, i), f.val.images, batch_size) for i, f in enumerate(folds)]
    return np.concatenate(probs), np.concatenate([f.val.labels for f in folds])


def _evaluate_all(jobs: list[tuple[str, Any]], study: Study, datasets: dict, resources: dict) -> list:
    """Evaluate checkpoints as parallel Ray tasks (on the cluster's GPUs when trials had them)."""
    import ray

    refs = {opt: ray.put(d) for opt, d in datasets.items()}
    cpus, gpus = resources["cpus_per_trial"], resources["gpus_per_trial"]
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=1)(evaluate_checkpoint)
    cache = (study.train.backend, study.train.compile_cache, resources.get("cache_dir"))
    options = {"tta": study.search.tta, "calibrate": study.train.calibrate}
    return ray.get(
        [task.remote(path, study.task, study.train.batch_size, refs[opt], cache, **options) for path, opt in jobs]
    )


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


def finalize(experiment_dir: str, grid, study: Study, datasets: dict) -> str:
    """Evaluate each trial's best checkpoint on the test split; write results.csv/json; return the folder."""
    sweep = load_sweep(experiment_dir)
    rows, jobs = [], []
    # How often Ray restarted each trial after a failure (a lost node, a crashed worker): not in Result's public API
    failures = {t.trial_id: t.num_failures for t in grid._experiment_analysis.trials}
    for result in grid:
        config = {k: result.config[k] for k in CONFIG_KEYS if k in result.config}
        history = result.metrics_dataframe
        last = result.metrics or {}
        best = _best_row(history, study.metric)
        status = trial_status(result.error is not None, last, study.train.epochs)
        row = {
            "trial": trial_name(result.config),
            "trial_id": last.get("trial_id"),
            **config,
            "status": status,
            "epochs": int(last.get("epoch", 0) or 0),
            "best_epoch": int(best["epoch"]) if best else None,
            "wall_seconds": float(history["epoch_seconds"].sum())
            if history is not None and "epoch_seconds" in history
            else 0.0,
            "error": _error_line(result.error),
            "retries": max(0, failures.get(last.get("trial_id"), 0) - (result.error is not None)),
            "first_epoch_overhead_seconds": first_epoch_overhead(
                [] if history is None or "epoch_seconds" not in history else history["epoch_seconds"].dropna().tolist()
            ),
            **_last_values(history, SPEED_COLUMNS),
        }
        row |= {k: v for k, v in best.items() if k.startswith(("train_", "val_"))}
        checkpoint = best_checkpoint(result, best)
        row["checkpoint"] = checkpoint_location(checkpoint.path, experiment_dir) if checkpoint is not None else ""
        if checkpoint is not None:
            jobs.append((len(rows), row["checkpoint"], config.get("option", study.data.option)))
        rows.append(row)
    reports = _evaluate_all([(p, o) for _, p, o in jobs], study, datasets, sweep["resources"])
    details, arrays = {}, {}
    for (i, _, _), (report, extra) in zip(jobs, reports, strict=True):
        rows[i] |= {f"test_{k}": v for k, v in report.items() if isinstance(v, float)}
        details[rows[i]["trial"]] = report
        arrays |= {f"{rows[i]['trial']}/{k}": v for k, v in extra.items()}
    if study.task == "segmentation":  # the test images those masks belong to (one loading option for segmentation)
        first = next(iter(datasets.values()))
        test = (first[0] if isinstance(first, tuple) else first).test
        arrays |= {"images": test.images[:SHOWN_MASKS], "truth": test.masks[:SHOWN_MASKS]}
    store.write_bytes(store.join(experiment_dir, PREDICTIONS), _npz(arrays))
    frame = pd.DataFrame(rows)
    keys, ascending = study_order(frame)
    frame = frame.sort_values(keys, ascending=ascending)
    store.write_text(store.join(experiment_dir, RESULTS_JSON), json.dumps(details, indent=2, default=float))
    store.write_text(store.join(experiment_dir, RESULTS_CSV), frame.to_csv(index=False))  # last: marks it finished
    return experiment_dir


def _npz(arrays: dict) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def study_order(frame: pd.DataFrame) -> tuple[list[str], list[bool]]:
    """Sort keys of the study's tables: model, option, lr descending, dropout descending (0.4, 0.2, 0), any other
    axis, repeat."""
    keys = ["model", *(["option"] if "option" in frame else []), "lr", "dropout"]
    ascending = [True] * (len(keys) - 2) + [False, False]
    extra = [k for k in EXTRA_AXES if k in frame]
    keys, ascending = [*keys, *extra], [*ascending, *[True] * len(extra)]
    if "repeat" in frame:
        keys, ascending = [*keys, "repeat"], [*ascending, True]
    return keys, ascending


def best_per_family(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The trial with the highest validation metric per model (selection on validation only, never test)."""
    scored = frame[frame[metric].notna()] if metric in frame else frame.iloc[0:0]
    if scored.empty:
        return scored
    return scored.loc[scored.groupby("model")[metric].idxmax()].sort_values(metric, ascending=False)


def list_experiments(storage: str | Path) -> pd.DataFrame:
    """Experiments under ``storage`` (a folder or a URI) with status, trial counts and best validation metric."""
    storage = store.normalize(storage)
    rows = []
    for name in store.subfolders(storage):
        exp = store.join(storage, name)
        if not store.exists(store.join(exp, SWEEP_FILE)):
            continue
        sweep = load_sweep(exp)
        metric = METRIC[sweep["study"]["task"]]
        row = {"experiment": name, "task": sweep["study"]["task"], "started": sweep.get("started", "")}
        if store.exists(store.join(exp, RESULTS_CSV)):
            frame = load_results(exp)
            counts = frame["status"].value_counts().to_dict()
            row |= {
                "status": "finished",
                "trials": len(frame),
                "detail": ", ".join(f"{v} {k}" for k, v in counts.items()),
                f"best {metric}": frame[metric].max() if metric in frame else float("nan"),
            }
        else:
            trials = sum(store.exists(store.join(exp, d, "result.json")) for d in store.subfolders(exp))
            row |= {"status": "unfinished", "trials": trials, "detail": f"sweep resume {exp}", f"best {metric}": None}
        rows.append(row)
    return pd.DataFrame(rows)
