"""What one step of benchmarks/gpu.sh measured, as Markdown: a sweep's trials, epochs, winner and phases, or a bench's
table. Usage: python benchmarks/gpu_figures.py EXPERIMENT_OR_BENCH_FOLDER LOG"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def sweep_figures(folder: Path) -> list[str]:
    from models.tasks import task_info
    from search.study.experiment import load_results, load_sweep, load_timings
    from search.study.results import best_by

    sweep = load_sweep(folder)
    task = task_info(sweep["study"]["task"])
    frame = load_results(folder)
    statuses = ", ".join(f"{n} {s}" for s, n in frame["status"].value_counts().items())
    lines = [f"{len(frame)} trials ({statuses}), {int(frame['epochs'].sum())} epochs in all"]
    resources = sweep.get("resources", {})
    lines.append(f"resources per trial: {resources.get('gpus_per_trial')} GPU, {resources.get('cpus_per_trial')} CPU")
    for column in ("backend", "mixed_precision"):
        if column in frame:
            lines.append(f"{column}: {', '.join(map(str, frame[column].dropna().unique()))}")
    phases = load_timings(folder)
    if phases:
        lines.append("driver phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    summed = ("wall_seconds", "build_seconds", "feature_seconds", "fit_seconds", "checkpoint_seconds")
    summed += ("compile_cache_hits", "compile_cache_misses", "first_epoch_overhead_seconds")
    per_model = frame.groupby("model").agg(
        trials=("trial", "size"), epochs=("epochs", "sum"), **{c: (c, "sum") for c in summed if c in frame}
    )
    if "fit_seconds" in per_model:
        per_model["fit_seconds_per_epoch"] = per_model["fit_seconds"] / per_model["epochs"].clip(lower=1)
    lines.append("per model, summed over its trials (seconds):")
    lines.append(per_model.reset_index().to_markdown(index=False, floatfmt=".2f"))
    test = f"test_{task.headline[0]}"
    best = best_by(frame, task.metric, task.mode, by="model")
    cols = [c for c in ("model", "option", "lr", "dropout", "epochs", task.metric, test) if c in best]
    lines.append("best per model (on validation):")
    lines.append(best[cols].to_markdown(index=False, floatfmt=".4f"))
    return lines


def trial_figures(folder: Path, log: str) -> list[str]:
    """What a sweep stopped before its results (at the step's limit) measured: Ray Tune's last trial count and
    running time from the log, and each reporting trial's epochs from its result.json."""
    import statistics

    status = [
        line
        for line in Path(log).read_text(errors="replace").splitlines()
        if line.startswith(("Trial status", "Current time"))
    ]
    lines = [" / ".join(status[-2:]) if status else "no trial status in the log"]
    trials = []
    for result in sorted(folder.glob("*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            trials.append((result.parent.name, rows))
    if not trials:
        return [*lines, "no trial reported an epoch"]
    first = [rows[0]["epoch_seconds"] for _, rows in trials]
    steady = [r["epoch_seconds"] for _, rows in trials for r in rows[1:]]
    lines.append(f"{len(trials)} trials reported epochs; first epoch {min(first):.1f}-{max(first):.1f} s")
    if steady:
        lines.append(f"later epochs: median {statistics.median(steady):.3f} s over {len(steady)} epochs")
    for key in ("feature_seconds", "checkpoint_seconds"):
        values = [rows[-1][key] for _, rows in trials if rows[-1].get(key)]
        if values:
            lines.append(f"{key} per trial that had any: {min(values):.1f}-{max(values):.1f} s ({len(values)} trials)")
    return lines


def main(path: str, log: str) -> int:
    folder = Path(path)
    if (folder / "bench.md").exists():
        lines = [(folder / "bench.md").read_text()]
        extra = json.loads((folder / "bench.json").read_text())
        lines.append(f"comparison: { {k: v for k, v in extra.items() if k != 'ways'} }")
    elif folder.is_dir():
        try:
            lines = sweep_figures(folder)
        except Exception as exc:  # a sweep stopped at its limit has no results yet: what its trials reported
            lines = [f"no results ({type(exc).__name__}: {exc})", *trial_figures(folder, log)]
    else:
        lines = ["no experiment folder"]
    tail = Path(log).read_text(errors="replace").splitlines()[-15:] if Path(log).exists() else []
    print("\n".join(lines))
    print("\nlog's last lines:\n```\n" + "\n".join(tail) + "\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
