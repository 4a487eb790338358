"""Decisions over results, as pure functions of dicts and DataFrames: a trial's name, label and status, its best
epoch, the best row (by a validation metric, overall or per group), and the study's row order.

Selection is on validation metrics only: the test split is for reporting. Imports neither Ray nor the image stack.
"""

from __future__ import annotations

import math
import re
import statistics
from typing import Any

import pandas as pd

from search.study.axes import EXTRA_AXES, MODEL_HYPERPARAMETERS

# From best to worst. "unscored": trained, but its checkpoint could not be scored on the test split (unreadable, or
# the scoring task raised or died): its error is recorded and it is never chosen as best.
UNSCORED = "unscored"
STATUSES = ("completed", "stopped", "diverged", UNSCORED, "failed")
# Where a trial's own time goes, in seconds: each report carries the running total, so its last report holds the
# trial's: building or loading the model (or head), frozen-backbone features (computed or read), measuring its
# architecture's cost (a search's cost objective), fit and validation of every epoch, writing checkpoints.
TRIAL_PHASES = ("build_seconds", "feature_seconds", "cost_seconds", "fit_seconds", "checkpoint_seconds")


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def trial_name(config: dict[str, Any]) -> str:
    """A trial's run name in TensorBoard, on disk and in the tables: model, option, lr, dropout and any other axis."""
    option = f"-opt{config['option']}" if "option" in config else ""
    repeat = f"-r{config['repeat']}" if "repeat" in config else ""
    extra = "".join(f"-{label}{_value(config[k])}" for k, label in EXTRA_AXES.items() if k in config)
    return f"{config['model']}{option}-lr{float(config['lr']):g}-do{float(config['dropout']):g}{extra}{repeat}"


def trial_dirname(name: str, trial_id: str) -> str:
    """The folder of trial ``name`` (``trial_name``) inside the experiment folder."""
    return f"{name}-{trial_id}"


def config_label(row: dict[str, Any] | pd.Series) -> str:
    """A configuration in words, for sentences and summaries: "resnet50 option 2, lr 0.001, dropout 0.2, optimizer
    adam" (every axis the row has; missing values left out)."""

    def has(k: str) -> bool:
        return k in row and row[k] is not None and not (isinstance(row[k], float) and math.isnan(row[k]))

    head = f"{row['model']}" + (f" option {int(row['option'])}" if has("option") else "")
    parts = [f"{k.replace('_', ' ')} {_value(row[k])}" for k in ("lr", "dropout", *EXTRA_AXES) if has(k)]
    return ", ".join([head, *parts])


def trial_status(error: bool, last: dict[str, Any], max_epochs: int) -> str:
    """completed | stopped (early, by ASHA) | diverged | failed."""
    if error:
        return "failed"
    if last.get("diverged"):
        return "diverged"
    return "completed" if int(last.get("epoch", 0)) >= max_epochs else "stopped"


# "module.Name: message" as a traceback ends: the raised exception's own line.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)(\(\w+\))?: ")


def error_line(error: BaseException | None) -> str:
    """The raised exception's own line: Ray wraps it in a header and a remote traceback, and notes may follow it
    (JAX adds "For simplicity, JAX has removed its internal frames ..."). The last line if none looks like one."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    own = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return (own or lines or [""])[-1][:300]


def first_epoch_overhead(epoch_seconds: list[float]) -> float | None:
    """Seconds the first epoch took beyond a steady epoch (the median of the others): compilation, feature
    extraction and warm-up. None with a single epoch, where nothing tells the two apart."""
    if len(epoch_seconds) < 2:
        return None
    return max(0.0, epoch_seconds[0] - statistics.median(epoch_seconds[1:]))


def best_epoch(history: pd.DataFrame | None, metric: str, mode: str = "max") -> dict[str, Any]:
    """The epoch whose validation ``metric`` is best among finite, non-diverged epochs (selection on validation);
    {} when there is none."""
    if history is None or history.empty or metric not in history:
        return {}
    ok = history[(history.get("diverged", False) != True) & history[metric].notna()]  # noqa: E712
    ok = ok[ok["train_loss"].map(math.isfinite)] if "train_loss" in ok else ok
    best = best_by(ok, metric, mode)
    return {} if best.empty else best.iloc[0].to_dict()


def best_by(frame: pd.DataFrame, metric: str, mode: str = "max", by: str | list[str] | None = None) -> pd.DataFrame:
    """Rows ranked by ``metric`` (``mode`` max or min), rows without a value or ``UNSCORED`` left out: all of them,
    or with ``by`` the best row of each group. Best first; ties keep the frame's order (the study's order). Index
    kept."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    if metric not in frame:
        return frame.iloc[0:0]
    if "status" in frame:  # a trial without test metrics is never the winner, whatever its validation metric
        frame = frame[frame["status"] != UNSCORED]
    ranked = frame[frame[metric].notna()].sort_values(metric, ascending=mode == "min", kind="stable")
    if by is not None and not ranked.empty:
        ranked = ranked.drop_duplicates(by, keep="first")
    return ranked


def best_row(frame: pd.DataFrame, metric: str, mode: str = "max") -> pd.Series | None:
    """The single best row by ``metric``, or None when no row has a value."""
    ranked = best_by(frame, metric, mode)
    return None if ranked.empty else ranked.iloc[0]


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


def in_study_order(frame: pd.DataFrame) -> pd.DataFrame:
    keys, ascending = study_order(frame)
    return frame.sort_values(keys, ascending=ascending, ignore_index=True)


# ---- deployment cost ------------------------------------------------------------------------------------------------

# What running a trial's whole model costs on the CPU of the machine that timed it (``search.outputs.deploy``):
# its ONNX model's batch-1 latency in milliseconds (median and 95th percentile; one thread and all cores), its
# parameter count and file size. Measured for each architecture's best trial (``cost_candidates``: `sweep costs`,
# ``search.costs``), or for every trial as it builds its model (a search's cost objective, ``search.objectives``).
COST_COLUMNS = (
    "latency_ms",  # median, one thread: what a budget is checked against
    "latency_p95_ms",
    "latency_all_threads_ms",
    "latency_all_threads_p95_ms",
    "params",
    "size_mb",
)
# Axes that change a network's shape, so its cost: trials equal on these share one architecture. Each trial records
# its own ``architecture`` (the model and the values of these it takes, by its registry entry), so that an axis a
# model does not take (blocks for EfficientNet) does not split it in two.
ARCHITECTURE_KEYS = ("model", *MODEL_HYPERPARAMETERS)
_ARCHITECTURE = "_architecture"  # a working column, never written


def best_so_far(metric: str) -> str:
    """The report key of a trial's best value of ``metric`` up to this epoch: what a search for two objectives tells
    Optuna when the trial ends (Ray Tune hands a searcher the last report), so that Optuna's front is the one the
    results table and the report draw from each trial's best epoch."""
    return f"best_{metric}"


def architecture(model: str, hyperparameters: dict[str, Any]) -> str:
    """A trial's architecture in words: ``custom_cnn(base_filters=8, blocks=4, dense_units=64)`` (pure)."""
    shape = ", ".join(f"{k}={_value(v)}" for k, v in sorted(hyperparameters.items()) if k in ARCHITECTURE_KEYS)
    return f"{model}({shape})"


def architectures(frame: pd.DataFrame) -> pd.Series:
    """Each row's architecture: the one its trial recorded, or, for a trial that never reported (or a sweep recorded
    before trials said theirs), one made of its model and the shape axes in its row (pure)."""
    keys = [k for k in ARCHITECTURE_KEYS if k in frame]
    made = pd.Series([" ".join(str(row[k]) for k in keys) for _, row in frame.iterrows()], index=frame.index)
    said = frame["architecture"] if "architecture" in frame else pd.Series(None, index=frame.index, dtype=object)
    return said.where(said.notna(), made)


def _best_per_architecture(rows: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    if rows.empty:
        return best_by(rows, metric, mode)
    keyed = rows.assign(**{_ARCHITECTURE: architectures(rows)})
    return best_by(keyed, metric, mode, by=_ARCHITECTURE).drop(columns=_ARCHITECTURE)


def cost_candidates(frame: pd.DataFrame, metric: str, mode: str = "max") -> pd.DataFrame:
    """The trials whose cost is measured: the best (on validation ``metric``) of each architecture that left a
    checkpoint. Trials of one architecture cost the same, so the best of each is the only one that can be on the
    front of metric against cost."""
    return _best_per_architecture(with_checkpoint(frame), metric, mode)


def with_checkpoint(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose trial left a checkpoint (the only ones that can be exported or timed)."""
    return frame[frame.get("checkpoint", pd.Series("", index=frame.index)).fillna("").astype(str).str.len() > 0]


def measured(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with a measured cost."""
    return frame[frame["latency_ms"].notna()] if "latency_ms" in frame else frame.iloc[0:0]


def measured_candidates(frame: pd.DataFrame, metric: str, mode: str = "max") -> pd.DataFrame:
    """The best measured row (on validation ``metric``) of each architecture: the report's candidates, whether only
    they were timed (``search.costs``, ``sweep costs``) or every trial was, as its model was built (a search's cost
    objective). Best first."""
    return _best_per_architecture(measured(frame), metric, mode)


def candidate_front(
    frame: pd.DataFrame, metric: str, mode: str = "max", cost: str = "latency_ms"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the candidates: each architecture's best measured trial; those of them on the Pareto front of validation
    ``metric`` against ``cost``): what the headline, the report's Deployment table and its figure show."""
    rows = measured_candidates(frame, metric, mode)
    return rows, pareto_front(rows, metric, mode, cost)


def pareto_front(frame: pd.DataFrame, metric: str, mode: str = "max", cost: str = "latency_ms") -> pd.DataFrame:
    """The measured rows no other measured row beats: none is at most as costly and at least as good on ``metric``
    while strictly better on one of the two. Cheapest first."""
    rows = measured(frame)
    rows = rows[rows[metric].notna()] if metric in rows else rows.iloc[0:0]
    if rows.empty:  # nothing measured: no front (and no columns to sort by)
        return rows
    sign = 1 if mode == "max" else -1

    def beaten(i) -> bool:
        c, m = rows.at[i, cost], sign * rows.at[i, metric]
        others = rows.drop(index=i)
        cheaper, better = others[cost] <= c, sign * others[metric] >= m
        return bool((cheaper & better & ((others[cost] < c) | (sign * others[metric] > m))).any())

    front = rows[[not beaten(i) for i in rows.index]]
    return front.sort_values(cost, kind="stable")


def within_budget(
    frame: pd.DataFrame,
    metric: str,
    mode: str = "max",
    max_latency_ms: float | None = None,
    max_size_mb: float | None = None,
) -> tuple[pd.Series | None, pd.Series | None]:
    """(the best measured candidate on validation ``metric`` whose median one-thread latency and file size fit the
    budget, or None; the fastest measured candidate, or None when nothing was measured) (pure). Candidates: each
    architecture's best measured trial that left a checkpoint (``measured_candidates``), so a budget reads the same
    figures as the report's Deployment section, whoever measured them."""
    rows = measured_candidates(with_checkpoint(frame), metric, mode)
    fits = rows
    if max_latency_ms is not None:
        fits = fits[fits["latency_ms"] <= max_latency_ms]
    if max_size_mb is not None:
        fits = fits[fits["size_mb"] <= max_size_mb]
    fastest = None if rows.empty else rows.sort_values(["latency_ms", "size_mb"], kind="stable").iloc[0]
    return best_row(fits, metric, mode), fastest
