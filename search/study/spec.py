"""A study is data: a YAML file loaded into a frozen, validated ``Study``; ``param_space`` turns it into Ray Tune's.

Schema (every key optional unless marked):
  task        classification | segmentation                                       (required)
  search      {algorithm: grid | random | optuna, num_samples: int, seed: int, repeats: int, folds: int, tta: bool,
              costs: bool, objectives: [the validation metric, latency_ms | size_mb] (optuna only)}
  space       axis -> list (a grid; random/optuna sample it) | {loguniform: [lo, hi]} | {uniform: [lo, hi]}
              | {choice: [...]}. Axes: model (required), lr (required), dropout, option (classification), and
              the task table's train_axes (optimizer, weight_decay, batch_size, lr_schedule, ...; loss for
              segmentation, one of the task table's losses)
  train       batch_size, epochs, loss, weights, freeze_backbone, base_filters, blocks, dense_units,
              standardize_features, optimizer, weight_decay, lr_schedule, mixed_precision, backend,
              online_augmentation, fine_tune_*, feature_cache, compile_cache, trial_threads, calibrate
  data        the fields of data_pipeline.DataConfig (option and seed come from space/search)
  scheduler   ASHA: {grace_period: int, reduction_factor: number}
  resources   {cpus_per_trial: number, gpus_per_trial: number | auto, max_concurrent_trials: int}
  presets     name -> a partial study merged over this one (e.g. smoke)
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from data_pipeline.config import DataConfig
from models.tasks import TASKS, TaskInfo, task_info, tasks_with
from search.study.axes import DISCRETE_AXES, EXTRA_AXES, MODEL_HYPERPARAMETERS

ALGORITHMS = ("grid", "random", "optuna")
# What a second search objective can be: a deployment cost measured as each architecture is built, minimized
# (``results.COST_COLUMNS``): its axis label, its words in a caption, and the `sweep export` budget that reads it.
COST_OBJECTIVES = {
    "latency_ms": ("latency at batch 1, one CPU thread (ms, median)", "CPU latency", "--max-latency-ms"),
    "size_mb": ("ONNX file size (MiB)", "the ONNX file's size", "--max-size-mb"),
}
DISTRIBUTIONS = ("loguniform", "uniform", "choice")
BACKENDS = ("tensorflow", "jax", "torch")
TOP_KEYS = ("task", "search", "space", "train", "data", "scheduler", "resources", "presets")


class SpecError(ValueError):
    """A study spec that cannot run; the message lists every problem with its field."""

    exit_code = 2


@dataclass(frozen=True)
class Train:
    batch_size: int = 32
    epochs: int = 60
    loss: str = ""  # empty: the task's default
    weights: str | None = None
    freeze_backbone: bool = True
    # Taken by some models only (MODEL_HYPERPARAMETERS); null: each model's own default (its registry entry).
    base_filters: int | None = None  # U-Nets, custom_cnn, ...: filters of the first stage (doubling at each stage)
    blocks: int | None = None  # custom_cnn: conv-BN-ReLU-pool blocks
    dense_units: int | None = None  # classifiers: the head's dense layer
    # Classifiers: standardize the pooled backbone features (a fixed Normalization layer fitted on the training
    # split) before the head's dense layer. auto: on where the backbone is random (weights: null) and frozen for the
    # whole trial (no fine-tuning stage), whose features vary too little between images for the head to learn from
    # them as they are; off with pretrained weights (the study's head).
    standardize_features: bool | str = "auto"
    optimizer: str = "adam"  # adam | rmsprop | sgd (momentum 0.9) | adamw
    weight_decay: float = 0.0  # decoupled weight decay, any optimizer
    lr_schedule: str = "constant"  # constant | cosine | exponential (× 0.9 per epoch)
    mixed_precision: str | None = (
        None  # null (float32), mixed_bfloat16, mixed_float16, or auto (bf16 where the GPU has it)
    )
    backend: str = "tensorflow"
    online_augmentation: bool = False
    # Speed levers, exact (results do not change beyond run-to-run noise); see search.sweep.features and
    # search.sweep.compile_cache.
    feature_cache: bool = True  # frozen backbone: compute its features once, train the heads on them
    compile_cache: bool = True  # JAX backend: share compiled programs between the trials of a node
    # CPU-only trials: TensorFlow's thread pools sized to the trial's CPUs (resources.cpus_per_trial), as Ray sizes
    # OpenMP's (PyTorch's); off: each trial's pools span the whole machine and side-by-side trials contend.
    trial_threads: bool = True
    # Optional fine-tuning stage (classification, off by default): after `fine_tune_after` epochs on the head, the
    # top `fine_tune_layers` backbone layers train too, at the trial's lr × `fine_tune_lr_factor`.
    fine_tune_layers: int = 0
    fine_tune_after: int = 0
    fine_tune_lr_factor: float = 0.1
    # Temperature scaling (classification): one scalar fitted on the validation split after training; applied by
    # `sweep predict`, ECE before and after in the report (see models.stats).
    calibrate: bool = False


@dataclass(frozen=True)
class Search:
    algorithm: str = "grid"
    num_samples: int = 1
    seed: int = 0
    repeats: int = 1  # run every configuration with this many seeds (seed, seed+1, ...): tables show mean ± std
    # k-fold cross-validation: the non-test images in k folds; a trial trains its k fold models in lockstep and
    # reports their mean validation metric; its test metrics are those of the k models' ensemble.
    folds: int = 1
    tta: bool = False  # also score every trial's checkpoint with test-time augmentation (flips, 90° turns)
    # time each architecture's best trial for deployment when the sweep ends (search.outputs.deploy.measure_costs;
    # minutes for large models): `sweep costs EXPERIMENT` does the same later, on the machine it runs on
    costs: bool = False
    # Optuna's multi-objective search: [the validation metric, a cost of COST_OBJECTIVES]. Each trial's cost is
    # measured when its model is built (once per architecture and node); trials are not stopped early (ASHA ranks
    # trials by one metric: it would stop fast models on the front before their last epoch).
    objectives: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scheduler:
    grace_period: int = 5
    reduction_factor: float = 3


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1
    gpus_per_trial: float | str = "auto"
    max_concurrent_trials: int = 0  # 0: as many as the resources allow; 1: one after another (the study's way)


@dataclass(frozen=True)
class Study:
    name: str
    task: str
    space: dict[str, Any]
    search: Search = field(default_factory=Search)
    train: Train = field(default_factory=Train)
    data: DataConfig = field(default_factory=DataConfig)
    scheduler: Scheduler = field(default_factory=Scheduler)
    resources: Resources = field(default_factory=Resources)

    @property
    def metric(self) -> str:
        """The validation metric trials are ranked and chosen by (the task table's)."""
        return self.facts.metric

    @property
    def mode(self) -> str:
        return self.facts.mode

    @property
    def facts(self) -> TaskInfo:
        """The task table's facts about this study's task (models.tasks)."""
        return task_info(self.task)

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """What the search optimizes: (metric, mode) pairs, the validation metric first; a cost is minimized."""
        names = self.search.objectives or (self.metric,)
        return [(n, self.mode if n == self.metric else "min") for n in names]

    @property
    def cost_objective(self) -> str | None:
        """The cost the search minimizes beside the validation metric, or None (one objective)."""
        return self.search.objectives[1] if len(self.search.objectives) == 2 else None

    @property
    def front_cost(self) -> str:
        """The cost the report's front is drawn against: the one searched for, else latency."""
        return self.cost_objective or "latency_ms"

    @property
    def early_stopping(self) -> bool:
        """ASHA stops trials on one metric: a search for two objectives runs every trial to its last epoch."""
        return self.cost_objective is None

    @property
    def loss(self) -> str:
        return self.train.loss or self.facts.default_loss

    def trial_train(self, config: dict[str, Any]) -> Train:
        """The train settings of one trial: a search axis that names a train setting (optimizer, batch_size, ...)
        overrides the train section's value."""
        names = {f.name for f in dataclasses.fields(Train)}
        return dataclasses.replace(self.train, **{k: v for k, v in config.items() if k in names})

    def trial(self, config: dict[str, Any]) -> TrialConfig:
        """One trial's configuration (what Ray Tune made of ``param_space``), typed over this study's settings."""
        return TrialConfig(
            model=config["model"],
            lr=float(config["lr"]),
            dropout=float(config.get("dropout", 0.0)),
            option=int(config.get("option", self.data.option)),
            seed=int(config.get("seed", self.search.seed)) + int(config.get("repeat", 0)),  # repeats: the seed only
            train=self.trial_train(config),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrialConfig:
    """One trial's configuration: its model, learning rate, dropout and loading option, its seed, and its train
    settings (the train section, with the values of any train setting the study searches over)."""

    model: str
    lr: float
    dropout: float
    option: int
    seed: int
    train: Train

    def hyperparameters(self, taken: Mapping[str, Any]) -> dict[str, Any]:
        """The values of the hyperparameters a model takes (``taken``: its registry entry's, with their defaults):
        this trial's where it sets one, the model's own default where it leaves one null."""
        own = {k: getattr(self.train, k) for k in taken if k != "dropout"}
        return {k: taken[k] if v is None else v for k, v in own.items()} | {"dropout": self.dropout}


def builtin_studies() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("search.study.studies").iterdir() if p.name.endswith(".yaml"))


def _read(name_or_path: str) -> tuple[str, dict]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise SpecError(f"study file {path} does not exist")
        text, name = path.read_text(), path.stem
    elif name_or_path in builtin_studies():
        text, name = resources.files("search.study.studies").joinpath(f"{name_or_path}.yaml").read_text(), name_or_path
    else:
        raise SpecError(
            f"unknown study {name_or_path!r}: use a built-in study ({', '.join(builtin_studies())}) or a .yaml file"
        )
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise SpecError(f"{name_or_path}: not valid YAML{where} ({problem}): fix the file") from None
    if not isinstance(raw, dict):
        raise SpecError(
            f"{name_or_path}: a study is a mapping (key: value lines) of {', '.join(TOP_KEYS)}, "
            f"not a {type(raw).__name__}: see `Writing a study` in the README"
        )
    return name, raw


def merge(base: dict, over: dict) -> dict:
    """Deep-merge study overrides (section -> {key: value}); a space is replaced whole, never merged."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "space" else v
    return out


def _section(cls, raw: Any, where: str, problems: list[str]):
    """Build dataclass ``cls`` from a mapping, recording unknown keys and wrong types as problems."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping, got {type(raw).__name__}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            problems.append(f"{where}.{key}: unknown key; allowed: {', '.join(fields)}")
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            continue
        default = fields[key].default
        if isinstance(value, list) and isinstance(default, tuple):
            value = tuple(value)
        ok_types = {type(default)} | ({int, float} if isinstance(default, float) else set())
        mistyped = default is not None and value is not None and not isinstance(value, tuple(ok_types))
        if mistyped and key not in ("gpus_per_trial", "standardize_features"):  # a value or "auto", checked later
            problems.append(f"{where}.{key}: expected {type(default).__name__}, got {value!r}")
            continue
        kwargs[key] = value
    return cls(**kwargs)


def _hp_problem(key: str, v: Any) -> str | None:
    """What is wrong with value ``v`` of a train setting that can also be an axis, or None."""
    from models.optimizers import LR_SCHEDULES, OPTIMIZERS
    from models.registry import CUSTOM_CNN_MAX_BLOCKS

    def positive_int(x):
        return isinstance(x, int) and not isinstance(x, bool) and x >= 1

    checks = {
        "optimizer": (lambda x: x in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
        "lr_schedule": (lambda x: x in LR_SCHEDULES, f"one of {', '.join(LR_SCHEDULES)}"),
        "weight_decay": (lambda x: isinstance(x, (int, float)) and 0 <= x < 1, "a number in [0, 1)"),
        "batch_size": (positive_int, "an integer >= 1"),
        "dense_units": (positive_int, "an integer >= 1"),
        "base_filters": (positive_int, "an integer >= 1"),
        "blocks": (
            lambda x: positive_int(x) and x <= CUSTOM_CNN_MAX_BLOCKS,
            f"an integer in [1, {CUSTOM_CNN_MAX_BLOCKS}]",
        ),
    }
    ok, allowed = checks[key]
    return None if ok(v) else f"{v!r} must be {allowed}"


def _check_axis(task: str, axis: str, values: Any, problems: list[str], here: bool = True) -> None:
    import models

    where = f"space.{axis}"
    if isinstance(values, dict):
        if len(values) != 1 or next(iter(values)) not in DISTRIBUTIONS:
            problems.append(f"{where}: a distribution is one of {', '.join(DISTRIBUTIONS)}, got {values}")
            return
        kind, arg = next(iter(values.items()))
        if kind != "choice":
            if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(a, (int, float)) for a in arg)):
                problems.append(f"{where}.{kind}: needs [low, high], got {arg!r}")
                return
            if axis in DISCRETE_AXES:
                problems.append(f"{where}: {axis} takes a list or choice, not {kind}")
                return
            values = arg
            if kind == "loguniform" and min(arg) <= 0:
                problems.append(f"{where}.loguniform: bounds must be > 0, got {arg}")
                return
            if not arg[0] < arg[1]:
                problems.append(f"{where}.{kind}: low must be < high, got {arg}")
                return
        else:
            values = arg
    if not isinstance(values, list) or not values:
        problems.append(f"{where}: must be a non-empty list or a distribution, got {values!r}")
        return
    for v in values:
        if axis == "model" and here and v not in models.list_models(task):
            valid = ", ".join(models.list_models(task))
            problems.append(f"{where}: {v!r} is not a registered {task} model; one of {valid}")
        elif axis == "lr" and not (isinstance(v, (int, float)) and 0 < v <= 10):
            problems.append(f"{where}: learning rate {v!r} must be in (0, 10]")
        elif axis == "dropout" and not (isinstance(v, (int, float)) and 0 <= v < 1):
            problems.append(f"{where}: dropout {v!r} must be in [0, 1)")
        elif axis == "option" and v not in (1, 2):
            problems.append(f"{where}: loading option {v!r} must be 1 or 2")
        elif axis == "loss" and v not in task_info(task).losses:
            problems.append(f"{where}: {v!r} is not one of {', '.join(task_info(task).losses)} for {task}")
        elif axis in task_info(task).train_axes and axis != "loss" and (p := _hp_problem(axis, v)):
            problems.append(f"{where}: {p}")


def _validate(study: Study, problems: list[str], here: bool = True) -> None:
    """Every problem of ``study``; ``here``: also what it takes to train it on this machine: its data folder, its
    weights files, and models registered here that take its input size and axes (the model registry loads Keras, so
    reading a finished sweep's results skips these)."""
    problems += _search_problems(study) + _train_problems(study) + _run_problems(study)
    problems += [
        f"data.{p}" for p in (study.data if here else dataclasses.replace(study.data, data_dir=None)).problems()
    ]
    problems += (_model_problems(study) + _backend_problems(study)) if here else []


def _backend_problems(study: Study) -> list[str]:
    """A Keras backend that is not installed here would fail every trial on its own: refuse it before anything starts.
    Asked of the import system, without importing the framework."""
    backend = study.train.backend
    if backend not in BACKENDS or importlib.util.find_spec(backend) is not None:
        return []
    installed = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
    return [f"train.backend: {backend} is not installed here; install it, or use one of {', '.join(installed)}"]


def _search_problems(study: Study) -> list[str]:
    problems, s = [], study.search
    if s.algorithm not in ALGORITHMS:
        problems.append(f"search.algorithm: {s.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    if s.num_samples < 1:
        problems.append(f"search.num_samples: must be >= 1, got {s.num_samples}")
    if s.repeats < 1:
        problems.append(f"search.repeats: must be >= 1, got {s.repeats}")
    elif s.repeats > 1 and s.algorithm == "optuna":
        problems.append("search.repeats: repeats need grid or random search (Optuna proposes each trial itself)")
    problems += _objective_problems(study)
    if s.folds < 1:
        problems.append(f"search.folds: must be >= 1 (1 = one train/validation split), got {s.folds}")
    elif s.folds > 1:
        if s.repeats > 1:
            problems.append("search.folds: choose folds or repeats (folds already give each configuration k scores)")
        if study.data.protocol != "leak_free":
            problems.append("search.folds: cross-validation needs data.protocol leak_free (study leaks across folds)")
    return problems


def _objective_problems(study: Study) -> list[str]:
    """``search.objectives``: none, or the validation metric and one cost, searched by Optuna."""
    names = study.search.objectives
    if not names:
        return []
    shape = f"[{study.metric}, one of {', '.join(COST_OBJECTIVES)}]"
    if len(names) != 2 or names[0] != study.metric or names[1] not in COST_OBJECTIVES:
        return [f"search.objectives: {list(names)!r} must be {shape} (the metric trials are chosen by, then a cost)"]
    if study.search.algorithm != "optuna":
        return [f"search.objectives: two objectives need search.algorithm optuna, not {study.search.algorithm}"]
    if study.search.folds > 1:
        return ["search.objectives: a cost is measured on one model, and cross-validation exports the ensemble of "
                "its folds' models: use search.folds 1 with two objectives"]  # fmt: skip
    return []


def _train_problems(study: Study) -> list[str]:
    import models

    problems, t = [], study.train
    for key in (k for k in EXTRA_AXES if k != "loss"):  # the loss: against the task table's, below
        value = getattr(t, key)
        if value is None and key in MODEL_HYPERPARAMETERS:
            continue  # each model's own default
        if p := _hp_problem(key, value):
            problems.append(f"train.{key}: {p}")
    if t.epochs < 1:
        problems.append(f"train.epochs: must be >= 1, got {t.epochs}")
    if t.fine_tune_layers < 0:
        problems.append(f"train.fine_tune_layers: must be >= 0 (0 = no fine-tuning), got {t.fine_tune_layers}")
    elif t.fine_tune_layers > 0:
        if not task_info(study.task).fine_tunes:
            only = tasks_with("fine_tunes")
            problems.append(f"train.fine_tune_layers: fine-tuning unfreezes a pretrained backbone: {only} only")
        if not 1 <= t.fine_tune_after < t.epochs:
            problems.append(
                f"train.fine_tune_after: must be in [1, train.epochs - 1] = [1, {t.epochs - 1}] so the head trains "
                f"first and the fine-tuning stage gets epochs, got {t.fine_tune_after}"
            )
        if not 0 < t.fine_tune_lr_factor <= 1:
            problems.append(f"train.fine_tune_lr_factor: must be in (0, 1], got {t.fine_tune_lr_factor}")
    if t.calibrate and not task_info(study.task).class_scores:
        only = tasks_with("class_scores")
        problems.append(f"train.calibrate: temperature scaling calibrates class probabilities: {only} only")
    if t.backend not in BACKENDS:
        problems.append(f"train.backend: {t.backend!r} is not one of {', '.join(BACKENDS)}")
    if t.standardize_features not in (True, False, "auto"):
        problems.append(f"train.standardize_features: {t.standardize_features!r} is not true, false or auto")
    if t.mixed_precision not in (None, "auto", *models.MIXED_PRECISION):
        allowed = ", ".join(("auto", *models.MIXED_PRECISION))
        problems.append(f"train.mixed_precision: {t.mixed_precision!r} is not null or one of {allowed}")
    allowed = task_info(study.task).losses
    if study.loss not in allowed:
        problems.append(f"train.loss: {study.loss!r} is not one of {', '.join(allowed)} for {study.task}")
    return problems


def _run_problems(study: Study) -> list[str]:
    """The scheduler's and the resources' problems."""
    problems, r = [], study.resources
    if study.scheduler.grace_period < 1 or study.scheduler.reduction_factor <= 1:
        problems.append("scheduler: grace_period must be >= 1 and reduction_factor > 1")
    if study.scheduler.grace_period > study.train.epochs:
        problems.append(
            f"scheduler.grace_period: {study.scheduler.grace_period} exceeds train.epochs {study.train.epochs}"
        )
    if not (r.gpus_per_trial == "auto" or (isinstance(r.gpus_per_trial, (int, float)) and r.gpus_per_trial >= 0)):
        problems.append(f"resources.gpus_per_trial: must be 'auto' or a number >= 0, got {r.gpus_per_trial!r}")
    if r.cpus_per_trial <= 0:
        problems.append(f"resources.cpus_per_trial: must be > 0, got {r.cpus_per_trial}")
    if r.max_concurrent_trials < 0:
        problems.append(f"resources.max_concurrent_trials: must be >= 0 (0 = no limit), got {r.max_concurrent_trials}")
    return problems


def _model_problems(study: Study) -> list[str]:
    """What the study's models say about its input size, axes and weights (their registry entries)."""
    import models

    problems, t, d = [], study.train, study.data
    model_axis = study.space.get("model")
    names = model_axis if isinstance(model_axis, list) else (model_axis or {}).get("choice", [])
    known = [n for n in (names if isinstance(names, list) else []) if n in models.list_models(study.task)]
    for name in known:
        for p in models.get(name).input_size_problems(d.image_size, t.weights):
            problems.append(f"data.image_size / train.weights: {p}")
        if study.cost_objective and (why := models.get(name).onnx_problem):
            problems.append(
                f"search.objectives: {name}'s cost cannot be measured: it cannot be converted to ONNX ({why}); "
                "take it out of space.model or search for one objective"
            )
    for axis in MODEL_HYPERPARAMETERS:
        if axis in study.space and known and not any(axis in models.get(n).hyperparameters for n in known):
            takers = [n for n in models.list_models(study.task) if axis in models.get(n).hyperparameters]
            problems.append(f"space.{axis}: none of the study's models takes {axis}; {', '.join(takers)} do")
    own = t.blocks or models.get("custom_cnn").hyperparameters["blocks"] if "custom_cnn" in known else 0
    blocks = study.space.get("blocks", [own])
    deepest = max((b for b in blocks if isinstance(b, int)), default=own) if isinstance(blocks, list) else 0
    if "custom_cnn" in known and d.image_size < 2**deepest:
        problems.append(f"data.image_size: custom_cnn with blocks={deepest} needs >= {2**deepest}, got {d.image_size}")
    for name in known if t.weights is not None else []:
        try:  # fail at load, not hours into a sweep; never downloads
            models.registry.resolve_weights(models.get(name), t.weights)
        except models.ModelError as exc:
            problems.append(f"train.weights: {exc}")
    return problems


def load_study(name_or_path: str, preset: str | None = None, overrides: dict[str, Any] | None = None) -> Study:
    """Load, merge the preset and overrides (section -> {key: value}), validate; SpecError lists every problem."""
    name, raw = _read(name_or_path)
    presets = raw.pop("presets", {}) or {}
    if preset is not None:
        if preset not in presets:
            raise SpecError(f"{name} has no preset {preset!r}; presets: {', '.join(presets) or 'none'}")
        raw = merge(raw, presets[preset])
        name = f"{name}-{preset}"
    return _study(name, merge(raw, overrides or {}))


def study_from_record(record: dict[str, Any], where: str = "the recorded study", here: bool = False) -> Study:
    """The ``Study`` a sweep recorded (``Study.to_dict``: sweep.json, an export's study.json), validated again by the
    same schema as a study file. ``here``: also check what training it here needs (data folder, weights files, the
    model registry), as resuming does; reading its results does not."""
    if not isinstance(record, dict) or "name" not in record:
        raise SpecError(f"{where}: not a recorded study (a mapping with name, task, space, ...): re-export the sweep")
    raw = {k: v for k, v in record.items() if k != "name"}
    data = dict(raw.get("data") or {})
    if "mask_threshold" in data:  # sweeps recorded before data.mask_rule: the same grey-level threshold
        data["mask_rule"] = f"threshold:{data.pop('mask_threshold')}"
    data.pop("online_augmentation", None)  # recorded before it was dropped from data: it was never read there
    # Derived when the study loaded: the task (the study's), the seed (search.seed), the option (space.option).
    for key in ("task", "seed", *(("option",) if "option" in (raw.get("space") or {}) else ())):
        data.pop(key, None)
    try:
        return _study(record["name"], {**raw, "data": data}, here=here)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _study(name: str, raw: dict[str, Any], here: bool = True) -> Study:
    """A validated ``Study`` from its raw sections (presets and overrides merged already)."""
    problems: list[str] = []
    for key in raw:
        if key not in TOP_KEYS:
            problems.append(f"{key}: unknown key; allowed: {', '.join(TOP_KEYS)}")
    task = raw.get("task")
    if task not in TASKS:
        raise SpecError(f"{name}: task: {task!r} must be one of {', '.join(TASKS)}")
    space = raw.get("space") or {}
    if not isinstance(space, dict):
        raise SpecError(f"{name}: space must be a mapping of axes")
    allowed = task_info(task).axes
    for axis in space:
        if axis not in allowed:
            problems.append(f"space.{axis}: unknown axis for {task}; allowed: {', '.join(allowed)}")
        else:
            _check_axis(task, axis, space[axis], problems, here)
    for axis in ("model", "lr"):
        if axis not in space:
            problems.append(f"space.{axis}: required")
    data_raw = dict(raw.get("data") or {})
    for key in ("seed",) + (("option",) if "option" in space else ()):
        if key in data_raw:
            problems.append(f"data.{key}: set by {'search.seed' if key == 'seed' else 'space.option'}, not here")
    search = _section(Search, raw.get("search"), "search", problems)
    data = _section(DataConfig, {**data_raw, "task": task}, "data", problems)
    data = dataclasses.replace(data, seed=search.seed)
    study = Study(
        name=name,
        task=task,
        space=space,
        search=search,
        train=_section(Train, raw.get("train"), "train", problems),
        data=data,
        scheduler=_section(Scheduler, raw.get("scheduler"), "scheduler", problems),
        resources=_section(Resources, raw.get("resources"), "resources", problems),
    )
    _validate(study, problems, here)
    if problems:
        raise SpecError(f"study {name} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return dataclasses.replace(study, train=resolve_standardize(study.train))


def resolve_standardize(train: Train) -> Train:
    """``standardize_features: auto`` decided: on for a random backbone (weights: null) that stays frozen the whole
    trial, off otherwise. A fine-tuning stage changes the features the statistics were fitted on, and their tiny
    spread, scaled up, turned that drift into a divergence."""
    if train.standardize_features != "auto":
        return train
    frozen = train.freeze_backbone and train.fine_tune_layers == 0
    return dataclasses.replace(train, standardize_features=train.weights is None and frozen)


def param_space(study: Study) -> dict[str, Any]:
    """Ray Tune's param_space: lists become grid_search (grid) or choice (random/optuna)."""
    from ray import tune

    out: dict[str, Any] = {}
    for axis, values in study.space.items():
        if isinstance(values, dict):
            kind, arg = next(iter(values.items()))
            out[axis] = (
                {"loguniform": tune.loguniform, "uniform": tune.uniform}[kind](*arg)
                if kind != "choice"
                else (tune.choice(arg))
            )
        elif study.search.algorithm == "grid":
            out[axis] = tune.grid_search(values)
        else:
            out[axis] = tune.choice(values)
    if "option" in task_info(study.task).axes and "option" not in out:
        out["option"] = study.data.option
    out["dropout"] = out.get("dropout", 0.0)
    if study.search.repeats > 1:
        out["repeat"] = tune.grid_search(list(range(study.search.repeats)))
    return out
