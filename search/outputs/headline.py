"""The end of a sweep in a few lines: the winner (chosen on validation), its test metrics next to what a model
that learned nothing scores, the axis that mattered most, what ASHA stopped and saved (or, searching for two
objectives, their front), and where the report is. Pure
functions of the results frame, the typed study and the sweep's record of its data; ``sweep run`` prints them and
``benchmarks/bench_quality.py`` tabulates them."""

from __future__ import annotations

from typing import Any

import pandas as pd

from search.outputs import importance
from search.outputs.report.tables import cost_table
from search.study.results import best_row, candidate_front
from search.study.spec import Study


def outcome(frame: pd.DataFrame, study: Study, data: dict[str, Any]) -> dict[str, Any]:
    """The sweep's outcome as numbers: winner, its validation and test metrics, the no-skill baseline,
    trials run and stopped by ASHA, trial seconds and the seconds ASHA saved. ``data``: sweep.json's record of the
    prepared data (the test split's class counts)."""
    metric = study.metric
    row = best_row(frame, metric, study.mode)
    _, totals = cost_table(frame, 0.0, study.train.epochs)
    out: dict[str, Any] = {
        "task": study.task,
        "trials": len(frame),
        "stopped": int((frame["status"] == "stopped").sum()),
        "trial_seconds": totals["trial seconds"],
        "saved_seconds": totals["saved by ASHA (seconds)"],
        "saved_percent": totals["saved by ASHA (%)"],
        "winner": None,
        "importance": importance.importance(frame, metric, study.mode),
        "front": _front(frame, study),
    }
    if row is None:
        return out
    return out | {
        "winner": row["trial"],
        "validation": {metric: float(row[metric])},
        **_against_no_skill(row, study, data),
    }


def _front(frame: pd.DataFrame, study: Study) -> dict[str, Any] | None:
    """A search for two objectives: the front of the validation metric against the cost it searched (each
    architecture's best trial, cheapest first); None for one objective."""
    cost = study.cost_objective
    if cost is None:
        return None
    _, front = candidate_front(frame, study.metric, study.mode, cost)
    points = [(r["trial"], float(r[study.metric]), float(r[cost])) for _, r in front.iterrows()]
    return {"metric": study.metric, "cost": cost, "points": points}


def _against_no_skill(row: pd.Series, study: Study, data: dict[str, Any]) -> dict[str, Any]:
    """The winner's test metrics next to those of a model that learned nothing (the task table's ``no_skill``)."""
    option = str(int(row["option"])) if "option" in row and pd.notna(row["option"]) else next(iter(data))
    test = {
        "per_class": data[option]["splits"]["test"].get("per_class"),
        "foreground_fraction": float(row.get("test_foreground_fraction", float("nan"))),
    }
    baseline = study.facts.no_skill(test)
    return {
        "test": {k: float(row.get(f"test_{k}", float("nan"))) for k in baseline},
        "baseline": baseline,
        "baseline_name": study.facts.no_skill_name,
    }


def lines(o: dict[str, Any], report: str | None) -> list[str]:
    """``outcome`` as the lines ``sweep run`` ends with."""
    out = []
    if o["winner"] is None:
        out.append(f"no winner: no trial finished an epoch and was scored on the test split ({o['trials']} trials)")
    else:
        ((metric, value),) = o["validation"].items()
        out.append(f"winner (chosen on {metric} = {value:.4f}): {o['winner']}")
        test = ", ".join(f"{k} {v:.4f}" for k, v in o["test"].items())
        base = ", ".join(f"{k} {v:.4f}" for k, v in o["baseline"].items())
        out.append(f"  test: {test}   ({o['baseline_name']}: {base})")
    out.append(importance.sentence(o["importance"]))
    if o.get("front") is not None:  # two objectives: no trial was stopped early; the trade-off is the outcome
        f = o["front"]
        n = len(f["points"])
        out.append(f"front of {f['metric']} against {f['cost']} ({n} architectures' best trials, cheapest first):")
        out += [f"  {trial}: {f['metric']} {m:.4f}, {f['cost']} {c:g}" for trial, m, c in f["points"]]
    else:
        out.append(
            f"ASHA stopped {o['stopped']} of {o['trials']} trials early, saving {o['saved_seconds']:.0f} s of "
            f"{o['trial_seconds'] + o['saved_seconds']:.0f} s of training ({o['saved_percent']:.0f}%)"
        )
    if report:
        out.append(f"report: {report}")
    return out
