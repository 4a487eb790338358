"""The report's tables and decisions: pure functions of the results frame (``results.csv``), the sweep record
(``sweep.json``) and the study's published tables (package data).

The study's family tables and summary, the side-by-side with the published figures, the cost of the sweep and what
ASHA saved, and the trust checks: the winner's margin, the run-to-run spread, the paired comparisons on the test
split, calibration and test-time augmentation.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from models.tasks import task_info
from search.study.axes import CONFIG_KEYS, EXTRA_AXES
from search.study.results import (
    COST_COLUMNS,
    STATUSES,
    UNSCORED,
    best_by,
    candidate_front,
    config_label,
    study_order,
)
from search.study.spec import Study

CONFIG = [k for k in CONFIG_KEYS if k != "repeat"]  # a configuration: the study's four axes and any other
AXIS_HEADINGS = {"loss": "loss function"}  # an axis whose name is also a metric column's heading
STUDY_NAMES = {"inception_resnet_v2": "InceptionResNetV2", "nasnet_large": "NASNetLarge"}  # others: same name


def config_keys(frame: pd.DataFrame) -> list[str]:
    return [k for k in CONFIG if k in frame]


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: metric means over repeats (``<col>_std`` beside them when there are repeats),
    status of the worst repeat (failed > unscored > diverged > stopped > completed), epochs and wall time summed."""
    keys = config_keys(frame)
    metrics = [c for c in frame if c.startswith(("train_", "val_", "test_"))]
    rank = {status: i for i, status in enumerate(STATUSES)}  # the worst status is the last
    groups = frame.groupby(keys, sort=False, dropna=False)
    out = groups[metrics].mean()
    if "repeat" in frame and frame["repeat"].nunique() > 1:
        out = out.join(groups[metrics].std(ddof=1).add_suffix("_std"))
    out["repeats"] = groups.size()
    out["status"] = groups["status"].agg(lambda s: max(s, key=lambda v: rank.get(v, 0)))
    out["epochs"] = groups["epochs"].mean()
    out["wall_seconds"] = groups["wall_seconds"].sum()
    out = out.reset_index()
    keys, ascending = study_order(out)
    return out.sort_values(keys, ascending=ascending, ignore_index=True)


def families(frame: pd.DataFrame) -> list[tuple]:
    """Table groups: (model,) or (model, option) for classification, in the study's order."""
    keys = ["model"] + (["option"] if "option" in frame and frame["option"].notna().any() else [])
    return [k if isinstance(k, tuple) else (k,) for k in frame.groupby(keys, sort=True).groups]


def family_title(family: tuple) -> str:
    """A family as the report names it: "unet", "inception_resnet_v2 / option 2"."""
    return " / option ".join(map(str, family))


def family_rows(agg: pd.DataFrame, family: tuple) -> pd.DataFrame:
    """The rows of one family: (model,) or (model, option)."""
    rows = agg[agg["model"] == family[0]]
    return rows[rows["option"] == family[1]] if len(family) > 1 else rows


def chosen_rows(agg: pd.DataFrame, task: str):
    """(family, row) of the configuration chosen on validation, for every family that has one."""
    for family in families(agg):
        i = chosen_index(family_rows(agg, family), task)
        if i is not None:
            yield family, agg.loc[i]


def chosen_index(rows: pd.DataFrame, task: str) -> Any:
    """The index of the row chosen on validation (the task's metric, mean over repeats), or None when no row has
    a value."""
    info = task_info(task)
    ranked = best_by(rows, info.metric, info.mode)
    return None if ranked.empty else ranked.index[0]


def best_per_family(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    """Each model's best trial on validation, best first."""
    info = task_info(task)
    return best_by(frame, info.metric, info.mode, by="model")


def _cell(mean: float, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.4f}" if std is None or math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def family_table(agg: pd.DataFrame, task: str, family: tuple) -> pd.DataFrame:
    """The study's table for one family: lr, dropout, its metric columns, the chosen row marked, diverged trials
    marked, ASHA-stopped trials with the epochs they ran."""
    rows = family_rows(agg, family)
    chosen = chosen_index(rows, task)
    out = pd.DataFrame({"lr": rows["lr"].map(lambda v: f"{v:g}"), "dropout": rows["dropout"].map(lambda v: f"{v:g}")})
    for axis in EXTRA_AXES:  # the study's other axes, when this sweep searched them
        if axis in rows:
            shown = rows[axis].map(lambda v: f"{v:g}" if isinstance(v, (int, float)) else str(v))
            out[AXIS_HEADINGS.get(axis, axis)] = shown
    for heading, col in task_info(task).report_columns:
        std = rows[f"{col}_std"] if f"{col}_std" in rows else pd.Series(np.nan, index=rows.index)
        out[heading] = [_cell(m, s) for m, s in zip(rows.get(col, pd.Series(np.nan, index=rows.index)), std)]
    out["epochs"] = [_epochs(s, e) for s, e in zip(rows["status"], rows["epochs"])]
    out["note"] = [
        "◀ chosen on validation" if i == chosen else _status_note(s) for i, s in zip(rows.index, rows["status"])
    ]
    return out.reset_index(drop=True)


def _epochs(status: str, epochs: float) -> str:
    shown = f"{epochs:g}"
    return f"{shown} (stopped by ASHA)" if status == "stopped" else shown if epochs else "0"


def _status_note(status: str) -> str:
    notes = {
        "diverged": "diverged (NaN/inf loss): last finite epoch",
        UNSCORED: "unscored: test scoring failed (error below)",
        "failed": "failed (error)",
    }
    return notes.get(status, "")


def unscored_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The trials whose checkpoint could not be scored on the test split, with the error that stopped it."""
    return frame[frame["status"] == UNSCORED].reindex(columns=["trial", "error"]).reset_index(drop=True)


def summary_table(agg: pd.DataFrame, task: str) -> pd.DataFrame:
    """The best configuration per family, chosen on validation, with its test numbers (the study's summary)."""
    rows = []
    for _, row in chosen_rows(agg, task):
        config = {k: f"{row[k]:g}" if k in ("lr", "dropout") else row[k] for k in config_keys(agg)}
        rows.append({**config, **{heading: row.get(col, np.nan) for heading, col in task_info(task).report_columns}})
    return pd.DataFrame(rows)


def reference(task: str) -> pd.DataFrame:
    """The study's published table for ``task`` (package data copied from the paper's tables)."""
    with resources.files("search.outputs.report").joinpath(f"reference/{task_info(task).study_table}").open() as f:
        return pd.read_csv(f)


def versus_study(agg: pd.DataFrame, task: str, ref: pd.DataFrame) -> pd.DataFrame:
    """Our chosen configuration per family next to the study's published figures for the same configuration
    (fractions; the study's percentages divided by 100), with the difference ours − study."""
    rows = []
    for family, ours in chosen_rows(agg, task):
        match = ref["model"] == STUDY_NAMES.get(ours["model"], ours["model"])
        match &= np.isclose(ref["lr"], ours["lr"]) & np.isclose(ref["dropout"], ours["dropout"])
        if "loading_option" in ref and "option" in ours:
            match &= ref["loading_option"] == ours["option"]
        theirs = ref[match].iloc[0] if match.any() else None
        for col, ref_col, scale in task_info(task).study_columns:
            value = float(ours.get(col, np.nan))
            published = float(theirs[ref_col]) * scale if theirs is not None else np.nan
            rows.append(
                {
                    "family": family_title(family),
                    "configuration": f"lr {ours['lr']:g}, dropout {ours['dropout']:g}"
                    + ("" if theirs is not None else " (not in the study's grid)"),
                    "metric": col,
                    "ours": value,
                    "study": published,
                    "ours − study": value - published,
                }
            )
    return pd.DataFrame(rows)


def cost_table(frame: pd.DataFrame, gpus_per_trial: float, max_epochs: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per trial: wall time, epochs, seconds per epoch, GPU-seconds; totals; and what the full grid would have
    cost without early stopping (each trial's measured time per epoch × the maximum epochs; a trial that never
    finished an epoch is costed at its family's median), i.e. what ASHA saved."""
    t = frame[["trial", "model", "status", "epochs", "wall_seconds"]].copy()
    t["seconds_per_epoch"] = t["wall_seconds"] / t["epochs"].where(t["epochs"] > 0)
    t["seconds_per_epoch"] = t["seconds_per_epoch"].fillna(t.groupby("model")["seconds_per_epoch"].transform("median"))
    t["gpu_seconds"] = t["wall_seconds"] * gpus_per_trial
    full = float((t["seconds_per_epoch"].fillna(0) * max_epochs).sum())
    actual = float(t["wall_seconds"].sum())
    totals = {
        "trials": len(t),
        "epochs run": float(t["epochs"].sum()),
        "epochs without early stopping": float(len(t) * max_epochs),
        "trial seconds": actual,
        "GPU-seconds": actual * gpus_per_trial,
        "trial seconds without early stopping": full,
        "saved by ASHA (seconds)": full - actual,
        "saved by ASHA (%)": 100 * (full - actual) / full if full else 0.0,
    }
    return t, totals


def trust(agg: pd.DataFrame, study: Study, data: dict[str, Any]) -> dict[str, Any]:
    """The winner's margin over the runner-up (validation), the run-to-run spread when there are repeats or folds,
    the leakage audit of each loading option (``data``: sweep.json's record of the prepared data) and the protocol."""
    metric = study.metric
    ranked = best_by(agg, metric, study.mode)
    out: dict[str, Any] = {"metric": metric, "protocol": study.data.protocol}
    if len(ranked) >= 1:
        out["winner"] = config_label(ranked.iloc[0])
        out["winner_value"] = float(ranked.iloc[0][metric])
    if len(ranked) >= 2:
        out["runner_up"] = config_label(ranked.iloc[1])
        out["gap"] = abs(float(ranked.iloc[0][metric] - ranked.iloc[1][metric]))
    if f"{metric}_std" in agg:
        healthy = agg[agg["status"].isin(["completed", "stopped"])]  # diverged runs all sit at chance: no spread
        out["spread"] = float(healthy[f"{metric}_std"].mean())  # mean std across seeds of one configuration
        out["repeats"] = int(agg["repeats"].max())
    out["leakage_audit"] = {opt: d["leakage_audit"] for opt, d in data.items()}
    out["folds"] = study.search.folds
    return out


def _spread_of(t: dict[str, Any]) -> str:
    return f"std across {t['folds']} folds" if t.get("folds", 1) > 1 else f"std over {t['repeats']} seeds"


def _runner_up_line(t: dict[str, Any]) -> str:
    """The runner-up and its gap to the winner, weighed against the run-to-run spread when it is known."""
    line = f"Runner-up: {t['runner_up']}; gap {t['gap']:.4f}."
    if t["gap"] == 0:
        line += " A tie: validation cannot tell these two apart."
    if "spread" not in t:
        return line + " Run-to-run spread unknown: set `search.repeats: k` to run each configuration with k seeds."
    verdict = "larger" if t["gap"] > 2 * t["spread"] else "not clearly larger"
    return line + (
        f" Run-to-run spread ({_spread_of(t)}, mean over configurations): {t['spread']:.4f}; "
        f"the gap is {verdict} than twice the spread."
    )


def trust_lines(t: dict[str, Any]) -> list[str]:
    """``trust`` as the report's opening sentences (Markdown marks: **bold**, `code`)."""
    lines = []
    if t["protocol"] == "study":
        lines.append(
            "**WARNING: the `study` protocol was used: images were balanced (augmented) before splitting, so "
            "validation and test hold augmented copies of training images. Its test numbers are optimistic; "
            "use `leak_free` (the default) to measure generalisation.**"
        )
    if "winner" in t:
        lines.append(f"Winner (by validation {t['metric']}): {t['winner']} = {t['winner_value']:.4f}.")
    if "gap" in t:
        lines.append(_runner_up_line(t))
    if t.get("folds", 1) > 1:
        lines.append(
            f"Cross-validation: {t['folds']} folds. Validation numbers are means over the folds (± their std "
            f"across folds); test numbers are those of the {t['folds']} fold models' ensemble (mean of outputs)."
        )
    audit = ", ".join(
        f"option {k}: {v['val']} val / {v['test']} test"
        + (f" / {v['groups_crossing']} groups (data.group_by) in more than one split" if "groups_crossing" in v else "")
        + (f" / {v['duplicates_crossing']} pairs of copies split apart" if "duplicates_crossing" in v else "")
        for k, v in t["leakage_audit"].items()
    )
    lines.append(f"Leakage audit (val/test images derived from a training image): {audit}.")
    return lines


# ---- is the winner really better? calibration, test-time augmentation ---------------------------------------------


def study_pick(ref: pd.DataFrame, task: str) -> dict[str, Any]:
    """The configuration the study itself presented as best: the highest published test figure (the paper chose on
    test; here it is only a configuration to compare against)."""
    row = best_by(ref, task_info(task).study_headline, "max").iloc[0]
    inverse = {v: k for k, v in STUDY_NAMES.items()}
    pick = {"model": inverse.get(row["model"], row["model"]), "lr": float(row["lr"]), "dropout": float(row["dropout"])}
    return pick | ({"option": int(row["loading_option"])} if "loading_option" in row else {})


def _matches(frame: pd.DataFrame, config: dict[str, Any]) -> pd.Series:
    hit = pd.Series(True, index=frame.index)
    for key, value in config.items():
        if key in frame:
            hit &= np.isclose(frame[key], value) if isinstance(value, float) else frame[key] == value
    return hit


def opponents(frame: pd.DataFrame, task: str, pick: dict[str, Any] | None = None) -> list[tuple[str, pd.Series]]:
    """The winner (best trial by validation) and what it is compared with: the runner-up (the best trial of another
    configuration), each other family's best, and the study's own pick when this sweep ran it. Validation only."""
    scored = best_by(frame, task_info(task).metric, task_info(task).mode)
    if len(scored) < 2:
        return []
    winner, keys = scored.iloc[0], config_keys(frame)
    others = scored[~_matches(scored, {k: winner[k] for k in keys if k != "repeat"})]
    out = [("winner", winner)]
    if not others.empty:
        out.append(("runner-up", others.iloc[0]))
    for _, row in best_per_family(others, task).iterrows():
        if row["model"] != winner["model"]:
            out.append((f"best {row['model']}", row))
    if pick is not None:
        theirs = scored[_matches(scored, pick)]
        if not theirs.empty and theirs.iloc[0]["trial"] != winner["trial"]:
            out.append(("the study's pick", theirs.iloc[0]))
    return out


def paired_comparisons(
    frame: pd.DataFrame, task: str, preds: dict[str, np.ndarray], pick: dict[str, Any] | None = None, **kw
) -> tuple[pd.DataFrame, list[str]]:
    """The winner against each opponent on the same test images: a table and one plain sentence per opponent.
    Trials on another test split (another loading option) cannot be paired and are said to be so."""
    from models import stats

    pairs = opponents(frame, task, pick)
    if not pairs:
        return pd.DataFrame(), []
    (_, winner), rows, lines = pairs[0], [], []
    w = winner["trial"]
    for role, row in pairs[1:]:
        t, name = row["trial"], f"{role} {row['trial']}"
        if task_info(task).class_scores:
            same = f"{w}/probs" in preds and f"{t}/probs" in preds
            same = same and np.array_equal(preds[f"{w}/labels"], preds[f"{t}/labels"])
            same = same and winner.get("option") == row.get("option")
            if not same:
                lines.append(f"{name}: another test split (loading option), so no paired comparison.")
                continue
            result = stats.compare_classifiers(preds[f"{w}/labels"], preds[f"{w}/probs"], preds[f"{t}/probs"], **kw)
        elif f"{w}/dice" in preds and f"{t}/dice" in preds:
            result = stats.compare_segmenters(preds[f"{w}/dice"], preds[f"{t}/dice"], **kw)
        else:
            continue
        lines.append(f"The winner {w} is {stats.sentence(name, result)}.")
        rows.append(_comparison_row(name, result))
    return pd.DataFrame(rows), lines


def _comparison_row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    extra = {"F1 difference": result["f1"]["difference"]} if "f1" in result else {}
    return {
        "against": name,
        f"{result['metric']} difference": result["difference"],
        "95% CI low": result["low"],
        "95% CI high": result["high"],
        **extra,
        f"p ({result['test']})": result["p"],
        "verdict": result["verdict"],
    }


def calibration_table(row: pd.Series, detail: dict) -> pd.DataFrame:
    """ECE of the best classifier on the test split, before and (with train.calibrate) after temperature scaling."""
    out = [{"quantity": "test ECE (15 bins)", "value": row.get("test_ece", np.nan)}]
    if "calibration" in detail:
        out += [
            {"quantity": "temperature (fitted on validation)", "value": detail["calibration"]["temperature"]},
            {"quantity": "test ECE after temperature scaling", "value": detail.get("ece_calibrated", np.nan)},
        ]
    return pd.DataFrame(out)


def tta_table(best: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per family's best trial: test metrics without and with test-time augmentation."""
    rows = []
    for _, row in best.iterrows():
        out = {"trial": row["trial"]}
        for m in task_info(task).headline:
            out[f"{m}"], out[f"{m} (TTA)"] = row.get(f"test_{m}", np.nan), row.get(f"test_tta_{m}", np.nan)
        rows.append(out)
    return pd.DataFrame(rows)


def binary_table(binary: dict) -> pd.DataFrame:
    """The best classifier's binary metrics for its positive class (``models.evaluation.binary_report``): on the test
    split at probability 0.5 and at the threshold Youden's J chose on validation."""
    columns = ("threshold", "sensitivity", "specificity", "precision", "f1", "accuracy")
    rows = [
        {"operating point": "probability 0.5", **{k: binary[k] for k in columns}},
        {"operating point": "Youden's J on validation", **{k: binary["at_youden"][k] for k in columns}},
    ]
    return pd.DataFrame(rows).assign(roc_auc=binary["roc_auc"])


BASELINE_COLUMNS = ("dice", "iou", "dice_per_image", "precision", "recall", "boundary_f1")


def baselines_table(baselines: list[dict], best: pd.DataFrame) -> pd.DataFrame:
    """The classical baselines (no training; fitted on the training split) beside each model's best trial (chosen on
    validation), all scored on the test split by the same code."""
    rows = [
        {"model": b["model"], "kind": "baseline (no training)", **{c: b.get(c, np.nan) for c in BASELINE_COLUMNS}}
        for b in baselines
    ]
    rows += [
        {
            "model": row["trial"],
            "kind": "trained, chosen on validation",
            **{c: row.get(f"test_{c}", np.nan) for c in BASELINE_COLUMNS},
        }
        for _, row in best.iterrows()
    ]
    return pd.DataFrame(rows, columns=["model", "kind", *BASELINE_COLUMNS])


def deployment_table(frame: pd.DataFrame, metric: str, mode: str, cost: str = "latency_ms") -> pd.DataFrame:
    """Each candidate whose cost was measured (each architecture's best trial): its validation ``metric``, batch-1
    latency, parameters and size, and whether it is on the Pareto front of the metric against ``cost`` (one-thread
    latency, or the search's cost objective). Cheapest by ``cost`` first."""
    rows, front = candidate_front(frame, metric, mode, cost)
    if rows.empty:
        return pd.DataFrame(columns=["trial", metric, *COST_COLUMNS, "pareto_front"])
    front = set(front.index)
    table = rows[["trial", metric, *COST_COLUMNS]].copy()
    table["params"] = table["params"].astype("int64")
    table["pareto_front"] = ["yes" if i in front else "no" for i in rows.index]
    order = [cost, *(c for c in ("latency_ms", "size_mb") if c != cost)]
    return table.sort_values(order, kind="stable").reset_index(drop=True)
