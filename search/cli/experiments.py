"""Running a study and reading its experiment: `sweep run`, `resume`, `bench`, `ls`, `cache`, `report`, `costs`,
`tensorboard`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from search.cli.options import DATA_SCALE, add_study_options, overrides


def add(sub) -> None:
    """The commands that run a study and read its experiment."""
    run = sub.add_parser("run", help="run a study as a Ray Tune sweep")
    add_study_options(run, "runs", "where experiments are written: a folder or s3://, gs:// URI (default ./runs)")
    run.add_argument("--address", help="Ray cluster address (default: start a local cluster on 127.0.0.1)")
    run.add_argument(
        "--mlflow",
        metavar="URI",
        help="also log every trial and the best model to this MLflow tracking store, e.g. sqlite:///PATH/mlflow.db "
        "(needs: pip install 'leukemia-sweep[mlflow]')",
    )
    resume = sub.add_parser("resume", help="continue an interrupted sweep where it stopped")
    resume.add_argument("experiment", type=Path)
    resume.add_argument("--address")
    bench = sub.add_parser(
        "bench",
        help="time the study's way (sequential, all epochs, no caches) against the service's way, side by side",
    )
    add_study_options(bench, "bench-runs", "where both ways' experiments and bench.md are written")
    bench.add_argument("--fraction", type=float, default=1.0, help="about this fraction of the trials (default 1)")
    bench.add_argument("--epochs", type=int, help="epochs per trial (default: the study's)")
    bench.add_argument("--image-size", type=int, help="image side in pixels (default: the study's)")
    bench.add_argument(
        "--data-scale",
        type=int,
        default=DATA_SCALE,
        help=f"images per class × this, where the study sizes a built-in synthetic set (the smoke presets; default "
        f"{DATA_SCALE}: enough validation images for trials to differ); a --data-dir is used as it is",
    )
    ls = sub.add_parser("ls", help="list experiments with status, trial counts and best metric")
    ls.add_argument("--storage", default="runs")
    cache = sub.add_parser(
        "cache", help="the cache folder's size per kind ($SWEEP_CACHE_DIR); clear a kind or trim it to a size"
    )
    cache.add_argument("--clear", metavar="KIND", help="remove every entry of KIND (decoded, features, ...) or all")
    cache.add_argument("--max-size", metavar="SIZE", help="remove least recently used entries until under SIZE (5GB)")


def add_reading(sub) -> None:
    """The commands that read a finished experiment (listed after the cluster's, as they always were)."""
    report = sub.add_parser("report", help="the study's comparison tables, figures, cost and trust checks")
    report.add_argument("experiment")
    report.add_argument("--out", type=Path, help="folder to write into (default EXPERIMENT/report)")
    report.add_argument("--format", help="comma-separated: md,html,csv,tex (default all)")

    costs = sub.add_parser(
        "costs",
        help="time each architecture's best trial for deployment on this machine (ONNX Runtime, CPU, batch 1): "
        "results.csv's latency_ms, size_mb, ... and the report's Deployment section",
    )
    costs.add_argument("experiment")

    tb = sub.add_parser("tensorboard", help="start TensorBoard (on localhost) on an experiment's logs")
    tb.add_argument("experiment")
    tb.add_argument("--port", type=int, default=6006)


def _print_summary(experiment: str) -> None:
    import pandas as pd

    from models.tasks import task_info
    from search import storage as store
    from search.study.experiment import RESULTS_CSV, load_results, load_sweep
    from search.study.results import best_by

    sweep = load_sweep(experiment)
    task = task_info(sweep["study"]["task"])
    metric, test = task.metric, f"test_{task.headline[0]}"
    frame = load_results(experiment)
    print(f"\n{len(frame)} trials: " + ", ".join(f"{v} {k}" for k, v in frame["status"].value_counts().items()))
    best = best_by(frame, metric, task.mode, by="model")
    cols = [c for c in ("trial", "status", "epochs", metric, test) if c in best]
    with pd.option_context("display.width", 160, "display.float_format", "{:.4f}".format):
        print("best trial per model family (chosen on validation; test shown, never used to choose):")
        print(best[cols].to_string(index=False))
    audits = {opt: d["leakage_audit"] for opt, d in sweep["data"].items()}
    print(f"leakage audit (val/test images sharing a source with training), per loading option: {audits}")
    print(f"\nexperiment: {experiment}")
    print(f"results table: {store.join(experiment, RESULTS_CSV)}")
    print(f"TensorBoard: sweep tensorboard {experiment}")
    print(f"best model: sweep export {experiment} --to DIR")


def _run(args) -> int:
    from search.study.spec import load_study
    from search.sweep.runner import run_study

    study = load_study(args.study, args.preset, overrides(args))
    exp = run_study(
        study,
        storage=args.storage,
        name=args.name,
        address=args.address,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        mlflow=args.mlflow,
    )
    _print_summary(exp)
    return _auto_report(exp)


def _bench(args) -> int:
    from search.sweep.bench import run_bench, to_markdown

    summaries, extra, folder = run_bench(
        args.study,
        preset=args.preset,
        overrides=overrides(args),
        fraction=args.fraction,
        epochs=args.epochs,
        image_size=args.image_size,
        data_scale=args.data_scale,
        storage=args.storage,
        name=args.name,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
    )
    print(to_markdown(summaries, extra))
    print(f"written to {folder}/bench.md and bench.json (each way's experiment beside them)")
    return 0


def _auto_report(experiment: str) -> int:
    """The report, written at the end of every run; the results are safe even if it fails."""
    from search.outputs.report import publish_report

    try:
        where = publish_report(experiment)
    except Exception as exc:
        print(f"error: the report could not be written ({exc}); the results are saved: `sweep report {experiment}`")
        _print_headline(experiment, None)
        return 1
    print(f"report: {where}/report.html (and report.md, tables as CSV and LaTeX, figures/)")
    _print_headline(experiment, f"{where}/report.html")
    return 0


def _print_headline(experiment: str, report: str | None) -> None:
    """The last lines of a run: the winner's test metrics next to a no-skill baseline, what ASHA saved, the report."""
    from search.outputs.headline import lines, outcome
    from search.study.experiment import load_results, load_study, load_sweep

    o = outcome(load_results(experiment), load_study(experiment), load_sweep(experiment)["data"])
    print("\n" + "\n".join(lines(o, report)))


def _resume(args) -> int:
    from search.sweep.runner import resume_study

    exp = resume_study(args.experiment, address=args.address)
    _print_summary(exp)
    return _auto_report(exp)


def _report(args) -> int:
    from search.outputs.report import FORMATS, publish_report

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip()) if args.format else FORMATS
    where = publish_report(args.experiment, args.out, formats)
    print(f"report written to {where}")
    return 0


def _costs(args) -> int:
    from search.outputs.deploy import measure_experiment
    from search.outputs.report import publish_report

    rows = measure_experiment(args.experiment)
    columns = ["trial", "latency_ms", "latency_p95_ms", "latency_all_threads_ms", "params", "size_mb"]
    print(rows[columns].sort_values("latency_ms").to_string(index=False))
    print(f"costs written to results.csv; report: {publish_report(args.experiment)}")
    return 0


def _ls(args) -> int:
    import pandas as pd

    from search import storage as store
    from search.study.experiment import list_experiments

    frame = list_experiments(args.storage)
    if frame.empty:
        print(f"no experiments under {store.normalize(args.storage)}")
        return 0
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(frame.to_string(index=False))
    return 0


def _cache(args) -> int:
    from data_pipeline import cache

    max_bytes = cache.parse_size(args.max_size) if args.max_size else None  # a bad size: refused before any removal
    warning = cache.cache_warning()
    if warning:
        print(warning, file=sys.stderr)
    if args.clear:
        print(f"cleared {args.clear}: {cache.human(cache.clear(args.clear))} freed")
    if max_bytes is not None:
        evicted = cache.trim(max_bytes)
        freed = cache.human(sum(e.size for e in evicted))
        print(f"trimmed to {cache.human(max_bytes)}: {len(evicted)} least recently used entries removed ({freed})")
    rows = cache.usage()
    print(f"{'kind':<12}{'entries':>8}{'size':>11}  {'last used':<17} one entry is")
    for row in rows:
        size, used = cache.human(row["bytes"]), cache.when(row["last_used"])
        print(f"{row['kind']:<12}{row['entries']:>8}{size:>11}  {used:<17} {cache.KINDS[row['kind']]}")
    total = sum(r["bytes"] for r in rows)
    print(f"{'total':<12}{sum(r['entries'] for r in rows):>8}{cache.human(total):>11}")
    print(f"cache folder: {cache.default_cache_dir()}")
    return 0


def _tensorboard(args) -> int:
    from search import storage as store
    from search.study.experiment import load_sweep

    load_sweep(args.experiment)  # a clear error when it is not an experiment
    logdir = store.normalize(args.experiment)
    print(f"TensorBoard on http://127.0.0.1:{args.port} (localhost only; Ctrl-C to stop), logs: {logdir}")
    cmd = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        logdir,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    sys.stdout.flush()
    os.execv(sys.executable, cmd)  # become TensorBoard: Ctrl-C and kill reach it directly, nothing is left behind
    return 0  # not reached


HANDLERS = {
    ("run", None): _run,
    ("resume", None): _resume,
    ("bench", None): _bench,
    ("ls", None): _ls,
    ("cache", None): _cache,
    ("report", None): _report,
    ("costs", None): _costs,
    ("tensorboard", None): _tensorboard,
}
