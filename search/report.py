"""The study's comparison tables and a visual report from a finished sweep.

Tables and decisions are pure functions of the results frame (``results.csv``) and the sweep record (``sweep.json``);
figures read, in addition, each trial's ``progress.csv``, ``results.json`` and ``predictions.npz``. ``write_report``
puts everything in one folder: report.md, report.html (figures embedded), one CSV per table, report.tex, figures/.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.tasks import TASK_TABLE
from search import storage as store
from search.errors import SweepError
from search.experiment import PREDICTIONS, RESULTS_JSON, load_results, load_sweep
from search.results import CONFIG_KEYS, EXTRA_AXES, best_by, study_order

METRIC = {name: info.metric for name, info in TASK_TABLE.items()}


def best_per_family(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    return best_by(frame, metric, "max", by="model")


FORMATS = ("md", "html", "csv", "tex")
CONFIG = [k for k in CONFIG_KEYS if k != "repeat"]  # a configuration: the study's four axes and any other
STUDY_NAMES = {"inception_resnet_v2": "InceptionResNetV2", "nasnet_large": "NASNetLarge"}  # others: same name
# The study's columns, in its order: (heading, results column)
COLUMNS = {
    "classification": [
        ("precision", "test_precision"),
        ("recall", "test_recall"),
        ("F1", "test_f1"),
        ("train acc", "train_accuracy"),
        ("train loss", "train_loss"),
        ("val acc", "val_accuracy"),
        ("val loss", "val_loss"),
        ("test acc", "test_accuracy"),
        ("test loss", "test_loss"),
    ],
    "segmentation": [
        ("accuracy", "test_accuracy"),
        ("loss", "test_loss"),
        ("precision", "test_precision"),
        ("recall", "test_recall"),
        ("IoU", "test_iou"),
        ("Dice", "test_dice"),
        ("IoU (study def.)", "test_study_iou"),
        ("Dice (study def.)", "test_study_dice"),
        ("val Dice", "val_dice"),
    ],
}
# The study's reference columns for the side-by-side: ours -> (its column, scale to a fraction)
REFERENCE_COLUMNS = {
    "classification": {
        "test_accuracy": ("test_acc", 0.01),
        "test_loss": ("test_loss", 0.01),
        "test_precision": ("precision", 1.0),
        "test_recall": ("recall", 1.0),
        "test_f1": ("f1", 1.0),
        "val_accuracy": ("val_acc", 0.01),
    },
    "segmentation": {
        "test_accuracy": ("accuracy", 0.01),
        "test_loss": ("loss", 0.01),
        "test_precision": ("precision", 0.01),
        "test_recall": ("recall", 0.01),
        "test_iou": ("iou", 0.01),
        "test_dice": ("dice", 0.01),
    },
}


# ---- pure table builders -------------------------------------------------------------------------------------------


def config_keys(frame: pd.DataFrame) -> list[str]:
    return [k for k in CONFIG if k in frame]


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: metric means over repeats (``<col>_std`` beside them when there are repeats),
    status of the worst repeat (failed > diverged > stopped > completed), epochs and wall time summed."""
    keys = config_keys(frame)
    metrics = [c for c in frame if c.startswith(("train_", "val_", "test_"))]
    rank = {"failed": 3, "diverged": 2, "stopped": 1, "completed": 0}
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


def family_rows(agg: pd.DataFrame, family: tuple) -> pd.DataFrame:
    """The rows of one family: (model,) or (model, option)."""
    rows = agg[agg["model"] == family[0]]
    return rows[rows["option"] == family[1]] if len(family) > 1 else rows


def chosen_rows(agg: pd.DataFrame, task: str):
    """(family, row) of the configuration chosen on validation, for every family that has one."""
    for family in families(agg):
        i = chosen_index(family_rows(agg, family), METRIC[task])
        if i is not None:
            yield family, agg.loc[i]


def chosen_index(rows: pd.DataFrame, metric: str) -> Any:
    """The row chosen by validation (highest mean ``metric``), or None when no row has one."""
    scored = rows[metric].dropna() if metric in rows else pd.Series(dtype=float)
    return None if scored.empty else scored.idxmax()


def _cell(mean: float, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.4f}" if std is None or math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def family_table(agg: pd.DataFrame, task: str, family: tuple, max_epochs: int) -> pd.DataFrame:
    """The study's table for one family: lr, dropout, its metric columns, the chosen row marked, diverged trials
    marked, ASHA-stopped trials with the epochs they ran."""
    rows = family_rows(agg, family)
    chosen = chosen_index(rows, METRIC[task])
    out = pd.DataFrame({"lr": rows["lr"].map(lambda v: f"{v:g}"), "dropout": rows["dropout"].map(lambda v: f"{v:g}")})
    for axis in EXTRA_AXES:  # the study's other axes, when this sweep searched them
        if axis in rows:
            out[axis] = rows[axis].map(lambda v: f"{v:g}" if isinstance(v, (int, float)) else str(v))
    for heading, col in COLUMNS[task]:
        std = rows[f"{col}_std"] if f"{col}_std" in rows else pd.Series(np.nan, index=rows.index)
        out[heading] = [_cell(m, s) for m, s in zip(rows.get(col, pd.Series(np.nan, index=rows.index)), std)]
    out["epochs"] = [_epochs(s, e, max_epochs) for s, e in zip(rows["status"], rows["epochs"])]
    out["note"] = [
        "◀ chosen on validation" if i == chosen else _status_note(s) for i, s in zip(rows.index, rows["status"])
    ]
    return out.reset_index(drop=True)


def _epochs(status: str, epochs: float, max_epochs: int) -> str:
    shown = f"{epochs:g}"
    return f"{shown} (stopped by ASHA)" if status == "stopped" else shown if epochs else "0"


def _status_note(status: str) -> str:
    return {"diverged": "diverged (NaN/inf loss): last finite epoch", "failed": "failed (error)"}.get(status, "")


def summary_table(agg: pd.DataFrame, task: str) -> pd.DataFrame:
    """The best configuration per family, chosen on validation, with its test numbers (the study's summary)."""
    rows = []
    for _, row in chosen_rows(agg, task):
        config = {k: f"{row[k]:g}" if k in ("lr", "dropout") else row[k] for k in config_keys(agg)}
        rows.append({**config, **{heading: row.get(col, np.nan) for heading, col in COLUMNS[task]}})
    return pd.DataFrame(rows)


def reference(task: str) -> pd.DataFrame:
    """The study's published table for ``task`` (package data copied from the paper's tables)."""
    name = "study_classification_48.csv" if task == "classification" else "study_segmentation_36.csv"
    with resources.files("search").joinpath(f"reference/{name}").open() as f:
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
        for col, (ref_col, scale) in REFERENCE_COLUMNS[task].items():
            value = float(ours.get(col, np.nan))
            published = float(theirs[ref_col]) * scale if theirs is not None else np.nan
            rows.append(
                {
                    "family": " / option ".join(map(str, family)),
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


def trust(agg: pd.DataFrame, task: str, sweep: dict) -> dict[str, Any]:
    """The winner's margin over the runner-up (validation), the run-to-run spread when there are repeats, the
    leakage audit and the protocol."""
    metric = METRIC[task]
    ranked = agg[agg[metric].notna()].sort_values(metric, ascending=False)
    out: dict[str, Any] = {"metric": metric, "protocol": sweep["study"]["data"]["protocol"]}
    if len(ranked) >= 1:
        out["winner"] = _label(ranked.iloc[0])
        out["winner_value"] = float(ranked.iloc[0][metric])
    if len(ranked) >= 2:
        out["runner_up"] = _label(ranked.iloc[1])
        out["gap"] = float(ranked.iloc[0][metric] - ranked.iloc[1][metric])
    if f"{metric}_std" in agg:
        healthy = agg[agg["status"].isin(["completed", "stopped"])]  # diverged runs all sit at chance: no spread
        out["spread"] = float(healthy[f"{metric}_std"].mean())  # mean std across seeds of one configuration
        out["repeats"] = int(agg["repeats"].max())
    out["leakage_audit"] = {opt: d["leakage_audit"] for opt, d in sweep["data"].items()}
    out["folds"] = int(sweep["study"].get("search", {}).get("folds", 1))
    return out


def _label(row: pd.Series) -> str:
    option = f" option {int(row['option'])}" if "option" in row and pd.notna(row.get("option")) else ""
    return f"{row['model']}{option} lr {row['lr']:g} dropout {row['dropout']:g}"


def _spread_of(t: dict[str, Any]) -> str:
    return f"std across {t['folds']} folds" if t.get("folds", 1) > 1 else f"std over {t['repeats']} seeds"


def trust_lines(t: dict[str, Any]) -> list[str]:
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
        line = f"Runner-up: {t['runner_up']}; gap {t['gap']:.4f}."
        if t["gap"] == 0:
            line += " A tie: validation cannot tell these two apart."
        if "spread" in t:
            verdict = "larger" if t["gap"] > 2 * t["spread"] else "not clearly larger"
            line += (
                f" Run-to-run spread ({_spread_of(t)}, mean over configurations): {t['spread']:.4f}; "
                f"the gap is {verdict} than twice the spread."
            )
        else:
            line += " Run-to-run spread unknown: set `search.repeats: k` to run each configuration with k seeds."
        lines.append(line)
    if t.get("folds", 1) > 1:
        lines.append(
            f"Cross-validation: {t['folds']} folds. Validation numbers are means over the folds (± their std "
            f"across folds); test numbers are those of the {t['folds']} fold models' ensemble (mean of outputs)."
        )
    audit = ", ".join(f"option {k}: {v['val']} val / {v['test']} test" for k, v in t["leakage_audit"].items())
    lines.append(f"Leakage audit (val/test images derived from a training image): {audit}.")
    return lines


# ---- is the winner really better? calibration, test-time augmentation ---------------------------------------------

HEADLINE = {"classification": ("accuracy", "f1", "loss"), "segmentation": ("dice", "iou", "dice_per_image")}
STUDY_HEADLINE = {"classification": "test_acc", "segmentation": "dice"}  # how the study picked its own best


def study_pick(ref: pd.DataFrame, task: str) -> dict[str, Any]:
    """The configuration the study itself presented as best: the highest published test figure (the paper chose on
    test; here it is only a configuration to compare against)."""
    row = ref.loc[ref[STUDY_HEADLINE[task]].idxmax()]
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
    metric = METRIC[task]
    scored = frame[frame[metric].notna()].sort_values(metric, ascending=False, kind="stable")
    if len(scored) < 2:
        return []
    winner, keys = scored.iloc[0], config_keys(frame)
    others = scored[~_matches(scored, {k: winner[k] for k in keys if k != "repeat"})]
    out = [("winner", winner)]
    if not others.empty:
        out.append(("runner-up", others.iloc[0]))
    for _, row in best_per_family(others, metric).iterrows():
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
        if task == "classification":
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
        extra = {"F1 difference": result["f1"]["difference"]} if "f1" in result else {}
        rows.append(
            {
                "against": name,
                f"{result['metric']} difference": result["difference"],
                "95% CI low": result["low"],
                "95% CI high": result["high"],
                **extra,
                f"p ({result['test']})": result["p"],
                "verdict": result["verdict"],
            }
        )
    return pd.DataFrame(rows), lines


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
        for m in HEADLINE[task]:
            out[f"{m}"], out[f"{m} (TTA)"] = row.get(f"test_{m}", np.nan), row.get(f"test_tta_{m}", np.nan)
        rows.append(out)
    return pd.DataFrame(rows)


# ---- figures ------------------------------------------------------------------------------------------------------


@dataclass
class Figures:
    """PNG files written, by name, with a caption each."""

    folder: Path
    items: list[tuple[str, str]] = field(default_factory=list)

    def save(self, fig, name: str, caption: str) -> None:
        import matplotlib.pyplot as plt

        self.folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.folder / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.items.append((name, caption))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _history(experiment: str, row: pd.Series) -> pd.DataFrame | None:
    path = store.join(experiment, f"{row['trial']}-{row['trial_id']}", "progress.csv")
    if not isinstance(row.get("trial_id"), str) or not store.exists(path):
        return None
    return pd.read_csv(io.StringIO(store.read_text(path)))


def plot_learning_curves(figs: Figures, experiment: str, best: pd.DataFrame, task: str) -> None:
    plt = _plt()
    key = "accuracy" if task == "classification" else "dice"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for j, (_, row) in enumerate(best.iterrows()):
        h = _history(experiment, row)
        if h is None or h.empty:
            continue
        for ax, m in zip(axes, (key, "loss")):
            for split, style in (("train", "--"), ("val", "-")):
                if f"{split}_{m}" in h:
                    label = f"{row['trial']} {split}"
                    ax.plot(h["epoch"], h[f"{split}_{m}"], style, color=f"C{j}", marker=".", label=label)
    for ax, m in zip(axes, (key, "loss")):
        ax.set(xlabel="epoch", ylabel=m, title=f"{m}: train (dashed) vs validation")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figs.save(fig, "learning_curves", "Learning curves of the best trial per family (train dashed, validation solid).")


def plot_heatmaps(figs: Figures, agg: pd.DataFrame, task: str) -> None:
    plt = _plt()
    metric = METRIC[task]
    fams = families(agg)
    fig, axes = plt.subplots(1, len(fams), figsize=(3.6 * len(fams), 3.2), squeeze=False)
    for ax, family in zip(axes[0], fams):
        part = family_rows(agg, family)
        grid = part.pivot_table(index="lr", columns="dropout", values=metric, aggfunc="mean")
        grid = grid.sort_index(ascending=False)[sorted(grid.columns, reverse=True)]
        im = ax.imshow(grid.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(grid.columns)), [f"{c:g}" for c in grid.columns])
        ax.set_yticks(range(len(grid.index)), [f"{i:g}" for i in grid.index])
        for (r, c), v in np.ndenumerate(grid.to_numpy(dtype=float)):
            ax.text(c, r, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
        ax.set(xlabel="dropout", ylabel="learning rate", title=" / opt ".join(map(str, family)))
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=metric)
    figs.save(fig, "heatmap", f"Validation {metric} over learning rate × dropout, per family (– : no finite value).")


def plot_epochs(figs: Figures, frame: pd.DataFrame, max_epochs: int) -> None:
    plt = _plt()
    colors = {"completed": "tab:green", "stopped": "tab:blue", "diverged": "tab:orange", "failed": "tab:red"}
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(frame) + 1.2))
    ax.barh(range(len(frame)), frame["epochs"], color=[colors.get(s, "grey") for s in frame["status"]])
    ax.set_yticks(range(len(frame)), frame["trial"], fontsize=7)
    ax.axvline(max_epochs, color="k", lw=0.8, ls=":")
    ax.invert_yaxis()
    ax.set(xlabel="epochs run", title="Epochs per trial (ASHA stops the weak ones early)")
    for i, (status, epochs) in enumerate(zip(frame["status"], frame["epochs"])):
        if status in ("failed", "diverged"):
            ax.text(epochs + 0.05, i, status, va="center", fontsize=7, color=colors[status])
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=s) for s, c in colors.items()], fontsize=7, loc="lower right")
    figs.save(fig, "asha_epochs", "How many epochs each trial ran; the dotted line is the maximum.")


def plot_best_classifier(figs: Figures, report: dict, classes: list[str], probs, labels) -> None:
    from sklearn.metrics import roc_curve

    plt = _plt()
    cm = np.asarray(report["confusion_matrix"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].imshow(cm, cmap="Blues")
    axes[0].set_xticks(range(len(classes)), classes)
    axes[0].set_yticks(range(len(classes)), classes)
    for (r, c), v in np.ndenumerate(cm):
        axes[0].text(c, r, str(v), ha="center", va="center", color="w" if v > cm.max() / 2 else "k")
    axes[0].set(xlabel="predicted", ylabel="actual", title="Confusion matrix (test split)")
    if probs is not None:
        for k, name in enumerate(classes):
            positives = labels == k
            if 0 < positives.sum() < len(labels):
                fpr, tpr, _ = roc_curve(positives, probs[:, k])
                axes[1].plot(fpr, tpr, label=f"{name} (AUC {report['per_class'][name]['roc_auc']:.3f})")
        axes[1].plot([0, 1], [0, 1], "k:", lw=0.8)
        axes[1].legend(fontsize=8)
    axes[1].set(xlabel="false positive rate", ylabel="true positive rate", title="One-vs-rest ROC (test split)")
    figs.save(fig, "best_classifier", "Best classifier on the test split: confusion matrix and one-vs-rest ROC curves.")


def plot_reliability(figs: Figures, probs, labels, temperature: float | None) -> None:
    from models import stats

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfectly calibrated")
    curves = [("model", probs)]
    if temperature is not None:
        curves.append((f"temperature {temperature:.2f}", stats.apply_temperature(probs, temperature)))
    for j, (name, p) in enumerate(curves):
        r = stats.reliability(p, labels)
        used = r["count"] > 0
        label = f"{name} (ECE {stats.ece(p, labels):.3f})"
        ax.plot(r["confidence"][used], r["accuracy"][used], "o-", color=f"C{j}", label=label)
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"Reliability, test split ({stats.ECE_BINS} bins)")
    ax.legend(fontsize=8)
    figs.save(fig, "reliability", "Best classifier: reliability diagram on the test split (ECE, 15 bins).")


def plot_best_segmenter(figs: Figures, images, truth, predicted) -> None:
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 3.8), squeeze=False)
    for i in range(n):
        for row, (mask, title) in enumerate(((truth[i], "ground truth"), (predicted[i], "predicted"))):
            ax = axes[row][i]
            ax.imshow(images[i])
            ax.imshow(np.ma.masked_where(mask == 0, mask), cmap="autumn", alpha=0.45, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(title)
    figs.save(fig, "best_segmenter", "Best segmenter on test images: ground truth (top) and predicted masks (bottom).")


# ---- the report -----------------------------------------------------------------------------------------------------


def _read_json(experiment: str, name: str) -> dict:
    path = store.join(experiment, name)
    return json.loads(store.read_text(path)) if store.exists(path) else {}


def _predictions(experiment: str) -> dict[str, np.ndarray]:
    path = store.join(experiment, PREDICTIONS)
    if not store.exists(path):
        return {}
    with np.load(io.BytesIO(store.read_bytes(path))) as z:
        return {k: z[k] for k in z.files}


def build(experiment: str | Path, out: Path) -> dict[str, Any]:
    """Compute every table and write every figure of the report into ``out/figures``; return the parts."""
    experiment = store.normalize(experiment)
    sweep = load_sweep(experiment)
    frame = load_results(experiment)
    study = sweep["study"]
    task, max_epochs = study["task"], study["train"]["epochs"]
    agg = aggregate(frame)
    tables = {" / option ".join(map(str, f)): family_table(agg, task, f, max_epochs) for f in families(agg)}
    summary = summary_table(agg, task)
    versus = versus_study(agg, task, reference(task))
    per_trial, totals = cost_table(frame, float(sweep["resources"]["gpus_per_trial"]), max_epochs)
    checks = trust(agg, task, sweep)
    figs = Figures(out / "figures")
    best = best_per_family(frame, METRIC[task])  # sorted best first
    plot_learning_curves(figs, experiment, best, task)
    plot_heatmaps(figs, agg, task)
    plot_epochs(figs, frame, max_epochs)
    details, preds = _read_json(experiment, RESULTS_JSON), _predictions(experiment)
    overall = best.head(1)
    per_class = calibration = None
    comparisons, sentences = paired_comparisons(frame, task, preds, study_pick(reference(task), task))
    if not overall.empty and overall.iloc[0]["trial"] in details:
        trial = overall.iloc[0]["trial"]
        if task == "classification":
            report = details[trial]
            option = str(int(overall.iloc[0]["option"])) if "option" in overall else next(iter(sweep["data"]))
            classes = sweep["data"][option]["classes"]
            probs, labels = preds.get(f"{trial}/probs"), preds.get(f"{trial}/labels")
            plot_best_classifier(figs, report, classes, probs, labels)
            per_class = pd.DataFrame(report["per_class"]).T.rename_axis("class").reset_index()
            calibration = calibration_table(overall.iloc[0], report)
            if probs is not None:
                plot_reliability(figs, probs, labels, report.get("calibration", {}).get("temperature"))
        elif f"{trial}/masks" in preds:
            plot_best_segmenter(figs, preds["images"], preds["truth"], preds[f"{trial}/masks"])
    return {
        "experiment": experiment,
        "task": task,
        "study": study,
        "tables": tables,
        "summary": summary,
        "versus": versus,
        "cost": per_trial,
        "totals": pd.DataFrame([{"quantity": k, "value": v} for k, v in totals.items()]),
        "trust": checks,
        "per_class": per_class,
        "comparisons": comparisons,
        "sentences": sentences,
        "calibration": calibration,
        "tta": tta_table(best, task) if study.get("search", {}).get("tta") else None,
        "figures": figs,
        "best_trial": None if overall.empty else overall.iloc[0]["trial"],
    }


def _md(frame: pd.DataFrame) -> str:
    """Markdown table: numbers to 4 decimals, missing values as –, text cells (such as "0.01", "0.6800 ± 0.0100")
    kept exactly as written."""
    numeric = frame.select_dtypes("number").columns
    cells = frame.astype(object).where(frame.notna(), None)
    for col in numeric:
        cells[col] = [None if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in cells[col]]
    return cells.to_markdown(index=False, disable_numparse=True, missingval="–")


def to_markdown(parts: dict[str, Any], embed: bool = False) -> str:
    """The report as Markdown (figures as relative links, or as data URIs when ``embed``)."""
    lines = [f"# Sweep report: {Path(parts['experiment']).name}", ""]
    lines += [f"Task: {parts['task']}. Selection on validation only; test numbers played no part in choosing.", ""]
    lines += [f"- {line}" for line in trust_lines(parts["trust"])] + [""]
    for title, frame, text in _trust_sections(parts):
        lines += [f"## {title}", "", *[f"- {line}" for line in text], "", *([_md(frame), ""] if len(frame) else [])]
    lines += ["## Best per family (chosen on validation)", "", _md(parts["summary"]), ""]
    lines += ["## Compared with the study's published figures (same configuration)", ""]
    lines += [_md(parts["versus"]), "", "Fractions; the study's percentages are divided by 100.", ""]
    for title, table in parts["tables"].items():
        lines += [f"## {title}", "", _md(table), ""]
    if parts["per_class"] is not None:
        lines += [f"## Best classifier per class (test split): {parts['best_trial']}", "", _md(parts["per_class"]), ""]
    lines += ["## Cost", "", _md(parts["totals"]), "", _md(parts["cost"]), ""]
    lines += ["## Figures", ""]
    for name, caption in parts["figures"].items:
        path = parts["figures"].folder / f"{name}.png"
        src = (
            f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" if embed else f"figures/{name}.png"
        )
        lines += [f"![{caption}]({src})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def _trust_sections(parts: dict[str, Any]) -> list[tuple[str, pd.DataFrame, list[str]]]:
    """(title, table, sentences) of the report's trust sections that have something to say."""
    out = []
    if parts["sentences"]:
        how = (
            "Paired on the same test images; 95% percentile intervals from 10,000 paired bootstrap resamples (seed 0); "
            "a difference counts when p < 0.05 and the interval excludes 0."
        )
        out.append(("Is the winner really better? (test split)", parts["comparisons"], [*parts["sentences"], how]))
    if parts["calibration"] is not None:
        out.append(("Calibration of the best classifier", parts["calibration"], []))
    if parts["tta"] is not None:
        note = "Mean of the model's outputs over flips and 90° rotations, before thresholding."
        out.append(("Test-time augmentation (best per family, test split)", parts["tta"], [note]))
    return out


def to_html(parts: dict[str, Any]) -> str:
    def table(frame: pd.DataFrame) -> str:
        return frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="–", border=0, classes="t")

    body = [f"<h1>Sweep report: {Path(parts['experiment']).name}</h1>"]
    body += [f"<p>{line.replace('**', '')}</p>" for line in trust_lines(parts["trust"])]
    for title, frame, text in _trust_sections(parts):
        body += [f"<h2>{title}</h2>", *[f"<p>{line}</p>" for line in text], table(frame) if len(frame) else ""]
    body += ["<h2>Best per family (chosen on validation)</h2>", table(parts["summary"])]
    body += ["<h2>Compared with the study's published figures (same configuration)</h2>", table(parts["versus"])]
    for title, frame in parts["tables"].items():
        styled = frame.style.apply(
            lambda r: ["background:#fff3b0;font-weight:bold" if "chosen" in r["note"] else "" for _ in r], axis=1
        )
        body += [f"<h2>{title}</h2>", styled.hide(axis="index").set_table_attributes('class="t"').to_html()]
    if parts["per_class"] is not None:
        body += [f"<h2>Best classifier per class: {parts['best_trial']}</h2>", table(parts["per_class"])]
    body += ["<h2>Cost</h2>", table(parts["totals"]), table(parts["cost"]), "<h2>Figures</h2>"]
    for name, caption in parts["figures"].items:
        data = base64.b64encode((parts["figures"].folder / f"{name}.png").read_bytes()).decode()
        body += [
            f'<figure><img src="data:image/png;base64,{data}" alt="{name}"><figcaption>{caption}</figcaption></figure>'
        ]
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:auto}table.t{border-collapse:collapse;font-size:13px}"
        "table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd}img{max-width:100%}"
        "td{white-space:nowrap}"
    )
    head = f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head>"
    return f"{head}<body>{''.join(body)}</body></html>"


def to_latex(parts: dict[str, Any]) -> str:
    out = []
    trust = [(title, frame) for title, frame, _ in _trust_sections(parts) if len(frame)]
    for title, frame in [("Best per family", parts["summary"]), *trust, *parts["tables"].items()]:
        out.append(frame.to_latex(index=False, float_format="%.4f", caption=title, na_rep="--"))
    return "\n".join(out)


def _slug(text: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in text).split())


def publish_report(experiment: str | Path, out: str | Path | None = None, formats: tuple[str, ...] = FORMATS) -> str:
    """Write the report into ``out``, by default EXPERIMENT/report (for an experiment in cloud storage: built in a
    temporary folder, then uploaded there); return where it is."""
    import tempfile

    experiment = store.normalize(experiment)
    if out is not None or not store.is_uri(experiment):
        return str(write_report(experiment, out, formats))
    target = store.join(experiment, "report")
    with tempfile.TemporaryDirectory() as tmp:
        write_report(experiment, tmp, formats)
        store.upload(tmp, target)
    return target


def write_report(experiment: str | Path, out: str | Path | None = None, formats: tuple[str, ...] = FORMATS) -> Path:
    """Write the report in ``formats`` into ``out`` (default EXPERIMENT/report, local experiments only); return it."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise SweepError(f"--format {','.join(unknown)}: unknown; choose from {','.join(FORMATS)}")
    experiment = store.normalize(experiment)
    if out is None and store.is_uri(experiment):
        raise SweepError(f"{experiment} is in cloud storage: write its report locally with --out DIR")
    out = Path(out) if out is not None else Path(experiment) / "report"
    out.mkdir(parents=True, exist_ok=True)
    parts = build(experiment, out)
    if "md" in formats:
        (out / "report.md").write_text(to_markdown(parts))
    if "html" in formats:
        (out / "report.html").write_text(to_html(parts))
    if "tex" in formats:
        (out / "report.tex").write_text(to_latex(parts))
    if "csv" in formats:
        parts["summary"].to_csv(out / "summary.csv", index=False)
        parts["versus"].to_csv(out / "versus_study.csv", index=False)
        parts["cost"].to_csv(out / "cost.csv", index=False)
        for title, frame in parts["tables"].items():
            frame.to_csv(out / f"table_{_slug(title)}.csv", index=False)
    return out
