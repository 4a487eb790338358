"""What mattered in a sweep: the searched axes ranked by how much of the selection metric they explain, by Optuna's
fANOVA and PED-ANOVA evaluators fed the sweep's finished trials, whatever searched them (grid, random or Optuna). Pure
functions of the results frame; the report's "What mattered" section and the end-of-run headline read them."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from search.study.axes import CONFIG_KEYS

MIN_TRIALS = 8  # fewer scored trials than this: too few to rank axes, and the report says so instead of a number
EVALUATORS = {"fanova": "fANOVA", "ped_anova": "PED-ANOVA"}  # key -> the name the report shows


def searched_axes(frame: pd.DataFrame) -> list[str]:
    """The configuration columns that take more than one value among ``frame``'s trials (repeats are not an axis)."""
    return [k for k in CONFIG_KEYS if k != "repeat" and k in frame and frame[k].dropna().nunique() > 1]


def importance(frame: pd.DataFrame, metric: str, mode: str) -> dict[str, Any]:
    """The searched axes' importance for ``metric`` (``mode`` "max" or "min") over the trials that have a value of it:
    ``{"metric", "trials", "axes", "fanova": {axis: share}, "ped_anova": {axis: share}, "why_not"}``, each evaluator's
    shares summing to 1, axes ordered by fANOVA; ``why_not`` says why there are no numbers (too few trials, one
    axis or none searched)."""
    scored = frame[pd.to_numeric(frame.get(metric), errors="coerce").map(_finite)] if metric in frame else frame[:0]
    axes = searched_axes(scored)
    out: dict[str, Any] = {"metric": metric, "trials": len(scored), "axes": axes, "fanova": {}, "ped_anova": {}}
    if len(scored) < MIN_TRIALS:
        out["why_not"] = f"{len(scored)} trials with a {metric}: too few to rank the axes (at least {MIN_TRIALS})"
    elif len(axes) < 2:
        searched = f"only {axes[0]} was searched" if axes else "no axis took more than one value"
        out["why_not"] = f"{searched}: nothing to rank it against"
    else:
        out["why_not"] = None
        study = _optuna_study(scored, axes, metric, mode)
        for key, evaluator in _evaluators().items():
            out[key] = {a: float(v) for a, v in _importances(study, evaluator).items()}
        out["axes"] = sorted(axes, key=lambda a: -out["fanova"].get(a, 0.0))
    return out


def top_axis(result: dict[str, Any]) -> tuple[str, float] | None:
    """The axis that mattered most by fANOVA and its share, or None when there are no numbers."""
    if result["why_not"] is not None or not result["fanova"]:
        return None
    axis = result["axes"][0]
    return axis, result["fanova"][axis]


def table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per searched axis, most important first: each evaluator's share of the metric's variance."""
    rows = [
        {"axis": axis, **{name: round(result[key].get(axis, math.nan), 3) for key, name in EVALUATORS.items()}}
        for axis in result["axes"]
    ]
    return pd.DataFrame(rows, columns=["axis", *EVALUATORS.values()])


def sentence(result: dict[str, Any]) -> str:
    """The axis that mattered most, in words; or why the sweep cannot say."""
    top = top_axis(result)
    if top is None:
        return f"What mattered: {result['why_not']}."
    axis, share = top
    return (
        f"What mattered most: {axis}, {share:.2f} of {result['metric']}'s variance over {result['trials']} trials by "
        f"fANOVA (PED-ANOVA {result['ped_anova'].get(axis, math.nan):.2f})."
    )


def _finite(value) -> bool:
    return isinstance(value, float | int) and math.isfinite(value)


def _distribution(values: pd.Series):
    """An axis's Optuna distribution: a numeric one for float axes (log scale when all positive and over a decade
    apart, as learning rates are), categorical for the rest (models, options, optimizers)."""
    import optuna

    vals = values.dropna()
    if pd.api.types.is_float_dtype(vals):
        low, high = float(vals.min()), float(vals.max())
        return optuna.distributions.FloatDistribution(low, high, log=low > 0 and high / low >= 10)
    return optuna.distributions.CategoricalDistribution(sorted(vals.unique().tolist(), key=str))


def _optuna_study(scored: pd.DataFrame, axes: list[str], metric: str, mode: str):
    """The finished trials as an in-memory Optuna study (``create_trial``), whatever searched them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {a: _distribution(scored[a]) for a in axes}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, row in scored.iterrows():
        params = {a: _param(row[a], distributions[a]) for a in axes}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(row[metric])))
    return study


def _param(value, distribution):
    import optuna

    if isinstance(distribution, optuna.distributions.FloatDistribution):
        return float(value)
    return value.item() if hasattr(value, "item") else value


def _evaluators() -> dict[str, Any]:
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    return {"fanova": FanovaImportanceEvaluator(seed=0), "ped_anova": PedAnovaImportanceEvaluator()}


def _importances(study, evaluator) -> dict[str, float]:
    """Optuna's importances, normalized to sum to 1 (PED-ANOVA's are not by default)."""
    import optuna

    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True))
