"""A study is data: a YAML file loaded into a frozen, validated ``Study``; ``param_space`` turns it into Ray Tune's.

A study file's keys: ``task`` (classification | segmentation, required); ``space`` (axis -> a list, a grid that
random and Optuna search sample, or {loguniform | uniform: [low, high]} or {choice: [...]}; model and lr required;
which axes a task may search: the task table's ``axes``); then one mapping per section of ``SECTIONS``, each declared
once below (``Search``, ``Train``, ``Scheduler``, ``Resources``) or in ``data_pipeline.config`` (``DataConfig``):
their field types are the schema (``data_pipeline.schema``); and ``presets``, name -> a partial study merged over
this one (e.g. smoke).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Le, Lt

from data_pipeline import schema
from data_pipeline.config import DataConfig
from data_pipeline.splits import OPTIONS
from models.optimizers import LR_SCHEDULES, OPTIMIZERS
from models.registry import CUSTOM_CNN_MAX_BLOCKS, MIXED_PRECISION
from models.tasks import TASKS, TaskInfo, task_info, tasks_with
from search.study.axes import DISCRETE_AXES, MODEL_HYPERPARAMETERS

if TYPE_CHECKING:
    from models.registry import ModelInfo

ALGORITHMS = ("grid", "random", "optuna")
# What a second search objective can be: a deployment cost measured as each architecture is built, minimized
# (``results.COST_COLUMNS``): its axis label, its words in a caption, and the `sweep export` budget that reads it.
COST_OBJECTIVES = {
    "latency_ms": ("latency at batch 1, one CPU thread (ms, median)", "CPU latency", "--max-latency-ms"),
    "size_mb": ("ONNX file size (MiB)", "the ONNX file's size", "--max-size-mb"),
}
DISTRIBUTIONS = ("loguniform", "uniform", "choice")
BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("auto", *MIXED_PRECISION)
TOP_KEYS = ("task", "search", "space", "train", "data", "scheduler", "resources", "presets")


class SpecError(ValueError):
    """A study spec that cannot run; the message lists every problem with its field."""

    exit_code = 2


# The sections' fields are the schema (data_pipeline.schema): their types, bounds and choices are what loading a study
# checks, and what its messages say is allowed. Semantics across fields (a fine-tuning stage inside the epochs, a loss
# of the task's) are checked after, in the ``_*_problems`` functions below.
PositiveInt = Annotated[int, Ge(1)]


@dataclass(frozen=True)
class Train:
    __pydantic_config__ = schema.STRICT

    batch_size: PositiveInt = 32
    epochs: PositiveInt = 60
    loss: str | None = None  # null (or empty): the task's default
    weights: str | None = None
    freeze_backbone: bool = True
    # Taken by some models only (MODEL_HYPERPARAMETERS); null: each model's own default (its registry entry).
    base_filters: PositiveInt | None = None  # U-Nets, custom_cnn, ...: filters of the first stage (doubling at each)
    blocks: Annotated[int, Ge(1), Le(CUSTOM_CNN_MAX_BLOCKS)] | None = None  # custom_cnn: conv-BN-ReLU-pool blocks
    dense_units: PositiveInt | None = None  # classifiers: the head's dense layer
    # Classifiers: standardize the pooled backbone features (a fixed Normalization layer fitted on the training
    # split) before the head's dense layer. auto: on where the backbone is random (weights: null) and frozen for the
    # whole trial (no fine-tuning stage), whose features vary too little between images for the head to learn from
    # them as they are; off with pretrained weights (the study's head).
    standardize_features: bool | Literal["auto"] = "auto"
    optimizer: Literal[OPTIMIZERS] = "adam"  # sgd: momentum 0.9
    weight_decay: Annotated[float, Ge(0), Lt(1)] = 0.0  # decoupled weight decay, any optimizer
    lr_schedule: Literal[LR_SCHEDULES] = "constant"  # exponential: × 0.9 per epoch
    mixed_precision: Literal[PRECISIONS] | None = None  # null: float32; auto: bf16 where the GPU has it
    backend: Literal[BACKENDS] = "tensorflow"
    online_augmentation: bool = False
    # Speed levers, exact (results do not change beyond run-to-run noise); see search.sweep.features and
    # search.sweep.compile_cache.
    feature_cache: bool = True  # frozen backbone: compute its features once, train the heads on them
    compile_cache: bool = True  # JAX backend: share compiled programs between the trials of a node
    # CPU-only trials: TensorFlow's thread pools sized to the trial's CPUs (resources.cpus_per_trial), as Ray sizes
    # OpenMP's (PyTorch's); off: each trial's pools span the whole machine and side-by-side trials contend.
    trial_threads: bool = True
    # Optional fine-tuning stage (classification, off by default): after `fine_tune_after` epochs on the head, the
    # top `fine_tune_layers` backbone layers train too (0: no fine-tuning), at the trial's lr × `fine_tune_lr_factor`.
    fine_tune_layers: Annotated[int, Ge(0)] = 0
    fine_tune_after: int = 0
    fine_tune_lr_factor: Annotated[float, Gt(0), Le(1)] = 0.1
    # Temperature scaling (classification): one scalar fitted on the validation split after training; applied by
    # `sweep predict`, ECE before and after in the report (see models.stats).
    calibrate: bool = False


@dataclass(frozen=True)
class Search:
    __pydantic_config__ = schema.STRICT

    algorithm: Literal[ALGORITHMS] = "grid"
    num_samples: PositiveInt = 1
    seed: int = 0
    repeats: PositiveInt = 1  # run every configuration with this many seeds (seed, seed+1, ...): mean ± std
    # k-fold cross-validation (1: one train/validation split): the non-test images in k folds; a trial trains its k
    # fold models in lockstep and reports their mean validation metric; its test metrics are those of the k models'
    # ensemble.
    folds: PositiveInt = 1
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
    __pydantic_config__ = schema.STRICT

    grace_period: PositiveInt = 5
    reduction_factor: Annotated[float, Gt(1)] = 3


@dataclass(frozen=True)
class Resources:
    __pydantic_config__ = schema.STRICT

    cpus_per_trial: Annotated[float, Gt(0)] = 1
    gpus_per_trial: Annotated[float, Ge(0)] | Literal["auto"] = "auto"
    max_concurrent_trials: Annotated[int, Ge(0)] = 0  # 0: as many as the resources allow; 1: one after another


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
    settings (the train section, with the values of any train setting the study searches over). The bounds of lr,
    dropout and option are what a study's ``space`` may hold for them."""

    model: str
    lr: Annotated[float, Gt(0), Le(10)]
    dropout: Annotated[float, Ge(0), Lt(1)]
    option: Literal[OPTIONS]
    seed: int
    train: Train

    def hyperparameters(self, info: ModelInfo) -> dict[str, Any]:
        """The hyperparameters model ``info`` (its registry entry) is built with in this trial: the train settings it
        takes and this trial's dropout, each left null being the model's own default (``ModelInfo.settings``)."""
        given = {k: self.dropout if k == "dropout" else getattr(self.train, k) for k in info.hyperparameters}
        return info.settings(given)


# A study file's sections besides its task and space, each read by the schema of its class.
SECTIONS = {"search": Search, "train": Train, "data": DataConfig, "scheduler": Scheduler, "resources": Resources}


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
    """Deep-merge a partial study (section -> {key: value}) over ``base``; a space is replaced whole, never merged
    (a preset's grid; `load_study` merges an override's axes itself)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "space" else v
    return out


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
        elif axis == "loss" and v not in task_info(task).losses:
            problems.append(f"{where}: {v!r} is not one of {', '.join(task_info(task).losses)} for {task}")
        elif axis not in ("model", "loss") and (p := axis_value_problem(axis, v)):
            problems.append(f"{where}: {p}")


def axis_value_problem(axis: str, value: Any) -> str | None:
    """What is wrong with one value of a searched axis, by the declaration of what it sets: lr, dropout and option
    are a trial's own (``TrialConfig``), the others train settings (``Train``)."""
    return schema.value_problem(TrialConfig if axis in schema.hints(TrialConfig) else Train, axis, value)


def _validate(study: Study, problems: list[str], here: bool = True) -> None:
    """Every problem of ``study``; ``here``: also what it takes to train it on this machine: its data folder, its
    weights files, and models registered here that take its input size and axes (the model registry loads Keras, so
    reading a finished sweep's results skips these)."""
    problems += _search_problems(study) + _train_problems(study) + _run_problems(study)
    problems += [f"data.{p}" for p in study.data.problems(here)]
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
    if s.repeats > 1 and s.algorithm == "optuna":
        problems.append("search.repeats: repeats need grid or random search (Optuna proposes each trial itself)")
    problems += _objective_problems(study)
    if s.folds > 1:
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
    problems, t = [], study.train
    if t.fine_tune_layers > 0:
        if not task_info(study.task).fine_tunes:
            only = tasks_with("fine_tunes")
            problems.append(f"train.fine_tune_layers: fine-tuning unfreezes a pretrained backbone: {only} only")
        if not 1 <= t.fine_tune_after < t.epochs:
            problems.append(
                f"train.fine_tune_after: must be in [1, train.epochs - 1] = [1, {t.epochs - 1}] so the head trains "
                f"first and the fine-tuning stage gets epochs, got {t.fine_tune_after}"
            )
    if t.calibrate and not task_info(study.task).class_scores:
        only = tasks_with("class_scores")
        problems.append(f"train.calibrate: temperature scaling calibrates class probabilities: {only} only")
    allowed = task_info(study.task).losses
    if study.loss not in allowed:
        problems.append(f"train.loss: {study.loss!r} is not one of {', '.join(allowed)} for {study.task}")
    return problems


def _run_problems(study: Study) -> list[str]:
    """The scheduler's problem: its first rung after the last epoch."""
    if study.scheduler.grace_period > study.train.epochs:
        return [f"scheduler.grace_period: {study.scheduler.grace_period} exceeds train.epochs {study.train.epochs}"]
    return []


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
    """Load, merge the preset and overrides (section -> {key: value}), validate; SpecError lists every problem.
    A preset's space replaces the study's whole (a smoke grid); an override's space sets the axes it names (`--set
    space.dropout=[0.2]`) and keeps the others."""
    name, raw = _read(name_or_path)
    presets = raw.pop("presets", {}) or {}
    if preset is not None:
        if preset not in presets:
            raise SpecError(f"{name} has no preset {preset!r}; presets: {', '.join(presets) or 'none'}")
        raw = merge(raw, presets[preset])
        name = f"{name}-{preset}"
    overrides = dict(overrides or {})
    if isinstance(overrides.get("space"), dict) and isinstance(raw.get("space"), dict):
        overrides["space"] = {**raw["space"], **overrides["space"]}
    return _study(name, merge(raw, overrides))


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


def read_recorded(path: Path, remedy: str) -> tuple[Study, dict[str, Any]]:
    """A recorded study file (an export's ``study.json``) read by the same schema: the ``Study``, and the record as
    written, for what reports what a sweep recorded (a setting an older sweep did not record is "not checked" on the
    model card, not today's default). A file that is not JSON or not a valid study raises SpecError naming the file
    and ``remedy``."""
    try:
        record = json.loads(path.read_text())
    except ValueError as exc:
        raise SpecError(f"{path} is malformed ({type(exc).__name__}: {exc}); {remedy}") from None
    try:
        return study_from_record(record, where=str(path)), record
    except SpecError as exc:  # one line: every problem, then what to do
        raise SpecError(f"{' '.join(line.strip() for line in str(exc).splitlines())}; {remedy}") from None


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
    sections = {}
    for key, cls in SECTIONS.items():
        section_raw = {**data_raw, "task": task} if key == "data" else raw.get(key)
        sections[key], found = schema.read(cls, section_raw, key)
        problems += found
    sections["data"] = dataclasses.replace(sections["data"], seed=sections["search"].seed)
    study = Study(name=name, task=task, space=space, **sections)
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
