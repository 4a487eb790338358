"""The report's figures (matplotlib, Agg): each one a PNG in the report's ``figures/`` folder with a caption,
collected in order by ``Figures``. Learning curves read each trial's ``progress.csv`` from the experiment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data_pipeline.files import write_file
from models.tasks import task_info
from search.outputs.report.tables import families, family_rows
from search.study.experiment import load_history
from search.study.results import UNSCORED
from search.study.spec import COST_OBJECTIVES


@dataclass
class Figures:
    """PNG files written, by name, with a caption each."""

    folder: Path
    items: list[tuple[str, str]] = field(default_factory=list)

    def save(self, fig, name: str, caption: str) -> None:
        import io

        import matplotlib.pyplot as plt

        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        write_file(self.folder / f"{name}.png", png.getvalue())
        self.items.append((name, caption))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(figs: Figures, experiment: str, best: pd.DataFrame, task: str) -> None:
    plt = _plt()
    key = task_info(task).metric_name
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for j, (_, row) in enumerate(best.iterrows()):
        h = load_history(experiment, row)
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
    metric = task_info(task).metric
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
    colors = {
        "completed": "tab:green",
        "stopped": "tab:blue",
        "diverged": "tab:orange",
        UNSCORED: "tab:purple",
        "failed": "tab:red",
    }
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(frame) + 1.2))
    ax.barh(range(len(frame)), frame["epochs"], color=[colors.get(s, "grey") for s in frame["status"]])
    ax.set_yticks(range(len(frame)), frame["trial"], fontsize=7)
    ax.axvline(max_epochs, color="k", lw=0.8, ls=":")
    ax.invert_yaxis()
    ax.set(xlabel="epochs run", title="Epochs per trial (ASHA stops the weak ones early)")
    for i, (status, epochs) in enumerate(zip(frame["status"], frame["epochs"])):
        if status in ("failed", "diverged", UNSCORED):
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


def plot_gradcam(figs: Figures, images, heatmaps, labels, predicted, classes: list[str]) -> None:
    """The best classifier's Grad-CAM heatmaps (for its predicted class) over a few test images of each class."""
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(1.9 * n, 2.3), squeeze=False)
    for ax, image, heat, label, guess in zip(axes[0], images, heatmaps, labels, predicted, strict=True):
        ax.imshow(image)
        ax.imshow(np.asarray(heat, np.float32), cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(f"{classes[label]} → {classes[guess]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    caption = (
        "Grad-CAM of the best classifier on test images (true class → predicted class): where the evidence for the "
        "predicted class lies, red strongest."
    )
    figs.save(fig, "gradcam", caption)


def _positions(values: pd.Series) -> tuple[np.ndarray, list[str], list[float]]:
    """An axis's values as x positions: numbers in order (a learning rate's on a log scale, evenly spaced as a grid
    is), anything else by name; the tick labels and their positions."""
    levels = sorted(values.dropna().unique().tolist(), key=lambda v: (isinstance(v, str), v))
    where = {v: i for i, v in enumerate(levels)}
    labels = [f"{v:g}" if isinstance(v, float | int) and not isinstance(v, bool) else str(v) for v in levels]
    return values.map(where).to_numpy(dtype=float), labels, list(range(len(levels)))


def plot_axis_effects(figs: Figures, frame: pd.DataFrame, axes: list[str], metric: str, mode: str) -> None:
    """For each searched axis, the selection metric of every trial at each of its values (jittered), the winner
    marked; with repeats, each configuration's mean ± standard deviation beside its points; with cross-validation,
    each trial's spread over its folds (``<metric>_std``) as a bar through its point."""
    from search.outputs.report.tables import config_keys
    from search.study.results import best_row

    scored = frame[pd.to_numeric(frame[metric], errors="coerce").notna()]
    if scored.empty or not axes:
        return
    plt = _plt()
    winner = best_row(scored, metric, mode)
    rng = np.random.default_rng(0)
    fig, grid = plt.subplots(1, len(axes), figsize=(3.2 * len(axes), 3.2), squeeze=False, sharey=True)
    repeated = "repeat" in scored and scored["repeat"].nunique() > 1
    folds = scored.get(f"{metric}_std")  # cross-validation: each trial's standard deviation over its folds
    folds = folds if folds is not None and folds.notna().any() else None
    for ax, axis in zip(grid[0], axes):
        x, labels, ticks = _positions(scored[axis])
        jittered = x + rng.uniform(-0.12, 0.12, len(x))
        ax.scatter(jittered, scored[metric], s=14, alpha=0.6, color="C0", label="trial")
        if folds is not None:
            ax.errorbar(jittered, scored[metric], yerr=folds, fmt="none", ecolor="C0", alpha=0.5, lw=0.8)
        if repeated:  # the run-to-run spread of each configuration, its mean and standard deviation
            keys = config_keys(scored)
            spread = (
                scored.assign(_x=x)
                .groupby(keys, dropna=False)
                .agg(x=("_x", "first"), mean=(metric, "mean"), std=(metric, "std"))
            )
            ax.errorbar(spread["x"] + 0.25, spread["mean"], yerr=spread["std"], fmt="_", color="C1", lw=1,
                        label="configuration mean ± std")  # fmt: skip
        if winner is not None:
            wx = x[scored.index.get_loc(winner.name)]
            ax.scatter([wx], [winner[metric]], marker="*", s=160, color="C3", zorder=3, label="winner")
        ax.set_xticks(ticks, labels, rotation=30 if max(map(len, labels)) > 6 else 0, fontsize=8)
        ax.set(xlabel=axis)
        ax.grid(alpha=0.3)
    grid[0][0].set_ylabel(metric)
    fig.legend(
        *grid[0][0].get_legend_handles_labels(), loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=7
    )
    caption = f"Validation {metric} of every trial at each value of each searched axis; the star is the winner."
    caption += " Orange bars: each configuration's mean ± std over repeats." if repeated else ""
    caption += " Blue bars: each trial's ± std over its cross-validation folds." if folds is not None else ""
    figs.save(fig, "axis_effects", caption)


def plot_parallel_coordinates(figs: Figures, frame: pd.DataFrame, axes: list[str], metric: str, mode: str) -> None:
    """Every trial as a line across the searched axes and the metric, coloured by the metric; the winner bold."""
    from search.study.results import best_row

    scored = frame[pd.to_numeric(frame[metric], errors="coerce").notna()]
    if len(scored) < 2 or not axes:
        return
    plt = _plt()
    columns, labels = [], []
    for axis in axes:  # every axis on [0, 1], its values evenly spaced
        x, names, _ = _positions(scored[axis])
        columns.append(x / max(len(names) - 1, 1))
        labels.append(names)
    values = scored[metric].to_numpy(dtype=float)
    low, high = float(values.min()), float(values.max())
    columns.append((values - low) / (high - low) if high > low else np.full(len(values), 0.5))
    ys = np.column_stack(columns)
    winner = best_row(scored, metric, mode)
    fig, ax = plt.subplots(figsize=(1.8 * (len(axes) + 1) + 1, 4))
    cmap = plt.get_cmap("viridis")
    order = np.argsort(values if mode == "max" else -values)  # the best drawn last, on top
    for i in order:
        ax.plot(range(len(axes) + 1), ys[i], color=cmap(columns[-1][i]), alpha=0.7, lw=1)
    if winner is not None:
        ax.plot(range(len(axes) + 1), ys[scored.index.get_loc(winner.name)], color="C3", lw=2.5, label="winner")
        ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0))
    for k, names in enumerate(labels):
        for j, name in enumerate(names):
            ax.text(k + 0.03, j / max(len(names) - 1, 1), name, fontsize=7, va="center")
    ax.text(len(axes) + 0.03, 0, f"{low:.3g}", fontsize=7, va="center")
    ax.text(len(axes) + 0.03, 1, f"{high:.3g}", fontsize=7, va="center")
    ax.set_xticks(range(len(axes) + 1), [*axes, metric])
    ax.set_yticks([])
    for k in range(len(axes) + 1):
        ax.axvline(k, color="k", lw=0.6)
    ax.set_xlim(-0.1, len(axes) + 0.6)
    figs.save(fig, "parallel_coordinates", f"Every trial across the searched axes, coloured by validation {metric}.")


def plot_pareto(figs: Figures, frame: pd.DataFrame, metric: str, mode: str, cost: str = "latency_ms") -> None:
    """Each measured candidate's validation metric against its ``cost`` (batch-1 latency on one thread, or the
    search's cost objective; log scale), the Pareto front joined: the choices under a budget."""
    from search.study.results import candidate_front

    rows, front = candidate_front(frame, metric, mode, cost)
    rows = rows[pd.to_numeric(rows[metric], errors="coerce").notna()] if metric in rows else rows.iloc[0:0]
    if rows.empty:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(rows[cost], rows[metric], color="C0", label="each architecture's best trial")
    ax.step(front[cost], front[metric], where="post", color="C3", lw=1.5, marker="o", label="Pareto front")
    for _, row in rows.iterrows():
        ax.annotate(row["model"], (row[cost], row[metric]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    label, words, _ = COST_OBJECTIVES[cost]
    ax.set(xlabel=label, ylabel=f"validation {metric}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    figs.save(fig, "deployment_pareto", f"Validation {metric} against {words}.")
