"""The ``sweep`` command line (also ``python -m search``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from models.tasks import TASKS

DATA_SCALE = 8  # sweep bench: a sized synthetic set's images × this by default (its smoke presets: 53 -> 424 images)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before any TensorFlow import: keep the terminal readable


def _add_data_commands(sub) -> None:
    data = sub.add_parser("data", help="generate or check a dataset").add_subparsers(dest="data_cmd", required=True)
    synth = data.add_parser("synth", help="write the synthetic smear dataset in the Kaggle layout")
    synth.add_argument("out", type=Path, help="new folder to write Original/ and Segmented/ into")
    counts = synth.add_mutually_exclusive_group()
    counts.add_argument("--per-class", type=int, help="images per class (balanced)")
    counts.add_argument("--counts", help="images per class for Benign,Early,Pre,Pro, e.g. 504,985,963,804")
    synth.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--format", choices=("png", "jpg"), default="png", help="png keeps masks exact (default)")
    synth.add_argument("--contact-sheet", type=Path, help="also write a PNG grid of a few images per class")

    check = data.add_parser(
        "check",
        help="layout, classes, counts, sizes, what the mask rule makes of the masks, duplicate images; exit 1 on "
        "problems (an unreadable file, the same image under two classes), 2 on bad input",
    )
    check.add_argument("dir", type=Path, help="dataset folder, or a CSV manifest")
    check.add_argument(
        "--task",
        choices=("auto", *TASKS),
        default="auto",
        help="default auto: segmentation when the dataset has masks",
    )
    check.add_argument("--layout", default="auto", help="auto (default) or a layout name (see the README)")
    check.add_argument("--mask-rule", default="auto", help="auto (default), nonzero, threshold:N or color_on_black")
    check.add_argument(
        "--group-by", help="a manifest column, or a pattern with one capture group, giving each image's patient"
    )
    for role in ("image", "label", "mask"):
        check.add_argument(f"--{role}-column", help=f"the manifest's {role} column (default: found by its usual names)")
    check.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    check.add_argument("--sheet", type=Path, help="also write a PNG contact sheet with the mask outlines")


def _data_synth(args) -> int:
    from data_pipeline import synth
    from data_pipeline.files import write_image

    if args.per_class is not None:
        counts = (args.per_class,) * len(synth.CLASSES)
    elif args.counts:
        try:
            counts = tuple(int(c) for c in args.counts.split(","))
        except ValueError:
            from search.errors import SweepError

            raise SweepError(f"--counts must be comma-separated integers, got {args.counts!r}") from None
    else:
        counts = synth.DEFAULT_COUNTS
    root = synth.write_dataset(args.out, counts, args.size, args.seed, args.format)
    print(f"wrote {sum(counts)} images ({', '.join(f'{c} {n}' for c, n in zip(synth.CLASSES, counts))}) to {root}")
    if args.contact_sheet:
        sheet = synth.contact_sheet(root)
        write_image(args.contact_sheet, sheet)
        print(f"contact sheet: {args.contact_sheet}")
    return 0


def _data_check(args) -> int:
    import json

    from data_pipeline import DataError, check, scan
    from data_pipeline.checks import render_text
    from data_pipeline.files import refuse_inside, write_image

    columns = {role: getattr(args, f"{role}_column") for role in ("image", "label", "mask")}
    index = scan(args.dir, args.task, args.layout, columns=columns, group_by=args.group_by)
    sheet_path = refuse_inside(args.sheet, {index.root.resolve(): "the data folder"}, "--sheet") if args.sheet else None
    if sheet_path and sheet_path.suffix.lower() != ".png":
        raise DataError(f"--sheet {sheet_path}: the contact sheet is a PNG file; name it FILE.png")
    report = check(index, args.mask_rule)
    print(json.dumps(report.to_dict(), indent=2) if args.json else render_text(report))
    if sheet_path:
        from data_pipeline.sheet import contact_sheet

        write_image(sheet_path, contact_sheet(index, report.mask_rule))
        print(f"contact sheet: {sheet_path}", file=sys.stderr if args.json else sys.stdout)
    return 0 if report.ok else 1


def _parse_set(items: list[str]) -> dict:
    """--set section.key=value (YAML value) -> nested overrides."""
    import yaml

    from search.errors import SweepError

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SweepError(f"--set takes section.key=value (e.g. train.epochs=5), got {item!r}")
        section, field = key.split(".", 1)
        try:
            out.setdefault(section, {})[field] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SweepError(
                f"--set {item!r}: the value is not valid YAML ({problem}); quote it, e.g. {key}='\"text\"'"
            ) from None
    return out


def _add_study_options(run, storage_default: str, storage_help: str) -> None:
    """The options `run` and `submit` share: which study, which data, where, how many resources."""
    run.add_argument(
        "study",
        help="a built-in study (classification, segmentation, brain_mri, brain_mri_segmentation) or a study .yaml file",
    )
    run.add_argument("--preset", help="a preset of the study, e.g. smoke (tiny, fast)")
    run.add_argument(
        "--data-dir", help="dataset folder or CSV manifest (layouts: see the README); default: embedded synthetic set"
    )
    run.add_argument("--storage", default=storage_default, help=storage_help)
    run.add_argument("--name", help="experiment name (default STUDY-DATE-TIME)")
    run.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; 0.25 packs 4 trials on a GPU (default auto)")
    run.add_argument("--cpus-per-trial", type=float)
    run.add_argument("--backend", choices=("tensorflow", "jax", "torch"), help="Keras backend for every trial")
    run.add_argument("--seed", type=int)
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a study setting, e.g. --set train.epochs=5 (repeatable)",
    )


def _add_run_commands(sub) -> None:
    run = sub.add_parser("run", help="run a study as a Ray Tune sweep")
    _add_study_options(run, "runs", "where experiments are written: a folder or s3://, gs:// URI (default ./runs)")
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
    _add_study_options(bench, "bench-runs", "where both ways' experiments and bench.md are written")
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


def _overrides(args) -> dict:
    over = _parse_set(args.set)
    if args.data_dir:
        over.setdefault("data", {})["data_dir"] = args.data_dir
    if args.backend:
        over.setdefault("train", {})["backend"] = args.backend
    if args.seed is not None:
        over.setdefault("search", {})["seed"] = args.seed
    return over


def _print_summary(experiment: str) -> None:
    import pandas as pd

    from models.tasks import task_info
    from search import storage as store
    from search.experiment import RESULTS_CSV, load_results, load_sweep
    from search.results import best_by

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
    from search.runner import run_study
    from search.spec import load_study

    study = load_study(args.study, args.preset, _overrides(args))
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
    from search.bench import run_bench, to_markdown

    summaries, extra, folder = run_bench(
        args.study,
        preset=args.preset,
        overrides=_overrides(args),
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
    from search.report import publish_report

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
    from search.experiment import load_results, load_study, load_sweep
    from search.headline import lines, outcome

    o = outcome(load_results(experiment), load_study(experiment), load_sweep(experiment)["data"])
    print("\n" + "\n".join(lines(o, report)))


def _resume(args) -> int:
    from search.runner import resume_study

    exp = resume_study(args.experiment, address=args.address)
    _print_summary(exp)
    return _auto_report(exp)


def _report(args) -> int:
    from search.report import FORMATS, publish_report

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip()) if args.format else FORMATS
    where = publish_report(args.experiment, args.out, formats)
    print(f"report written to {where}")
    return 0


def _costs(args) -> int:
    from search.deploy import measure_experiment
    from search.report import publish_report

    rows = measure_experiment(args.experiment)
    columns = ["trial", "latency_ms", "latency_p95_ms", "latency_all_threads_ms", "params", "size_mb"]
    print(rows[columns].sort_values("latency_ms").to_string(index=False))
    print(f"costs written to results.csv; report: {publish_report(args.experiment)}")
    return 0


def _ls(args) -> int:
    import pandas as pd

    from search import storage as store
    from search.experiment import list_experiments

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


def _add_cluster_commands(sub) -> None:
    from search.jobs import DEFAULT_ADDRESS

    address_help = f"the cluster's job server (default $RAY_API_SERVER_ADDRESS or {DEFAULT_ADDRESS})"
    default_address = os.environ.get("RAY_API_SERVER_ADDRESS", DEFAULT_ADDRESS)
    submit = sub.add_parser("submit", help="submit a study to a Ray cluster as a job; prints the job id")
    _add_study_options(
        submit,
        "~/sweep-runs",
        "where the cluster writes the experiment: a path on the head node (default ~/sweep-runs) or, for "
        "multi-node clusters, shared storage such as s3://bucket/sweeps",
    )
    submit.add_argument("--address", default=default_address, help=address_help)
    submit.add_argument("--job-id", help="choose the job id (default: Ray picks one)")
    for name, helptext in (
        ("status", "a submitted job's status"),
        ("logs", "a submitted job's output"),
        ("stop", "stop a submitted job"),
    ):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("job_id")
        cmd.add_argument("--address", default=default_address, help=address_help)
        if name == "logs":
            cmd.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")

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

    export = sub.add_parser("export", help="write the best trial (chosen on validation) as a ready-to-use model")
    export.add_argument("experiment")
    export.add_argument("--to", required=True, type=Path, help="new folder to write the model into")
    export.add_argument("--family", help="best of this model family only (default: best overall)")
    export.add_argument("--metric", help="validation metric to choose by (default val_accuracy / val_dice)")
    from search.deploy import FORMATS

    export.add_argument(
        "--format",
        choices=FORMATS,
        default="keras",
        help="onnx: also model.onnx (checked against Keras on the test split) and predict.py, which needs only "
        "onnxruntime, numpy and opencv-python-headless",
    )
    from search.deploy import QUANTIZATIONS

    export.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="with --format onnx: also model.int8.onnx, quantized by ONNX Runtime and calibrated on training images; "
        "the test metrics of both are printed and recorded",
    )

    export.add_argument(
        "--max-latency-ms",
        type=float,
        help="the best trial whose model answers one image within this many ms (median, one CPU thread, as timed "
        "by `sweep costs` or search.costs); none fits: exit 2 naming the fastest",
    )
    export.add_argument("--max-size-mb", type=float, help="the best trial whose ONNX model is at most this many MiB")

    predict = sub.add_parser("predict", help="predict images with an exported model")
    predict.add_argument("model_dir", type=Path)
    predict.add_argument("inputs", nargs="+", help="image files or folders of images")
    predict.add_argument("--out", type=Path, help="write predictions.csv (classification) or mask PNGs and overlays")
    predict.add_argument("--tta", action="store_true", help="test-time augmentation: mean over flips and 90° turns")
    predict.add_argument(
        "--gradcam", action="store_true", help="classification, with --out: a Grad-CAM heatmap PNG per image"
    )

    evaluate = sub.add_parser(
        "evaluate",
        help="re-compute an exported model's test metrics on its study's test split, or validate it on another "
        "dataset (--data-dir OTHER)",
    )
    evaluate.add_argument("model_dir", type=Path)
    evaluate.add_argument(
        "--data-dir",
        help="a dataset in any layout (folder or CSV manifest). The data the model was trained on (the same "
        "fingerprint: files, relative paths, sizes and times; e.g. moved with mv or cp -a) is scored on its test "
        "split; any other is an external validation on every image: the model's class names required, metrics with "
        "bootstrap 95%% intervals and calibration, written as external-<name>.md/.html/.json next to the model and "
        "added to its MODEL_CARD.md",
    )
    evaluate.add_argument(
        "--by", help="external validation on a CSV manifest: the same metrics per value of this column, with n"
    )
    evaluate.add_argument("--tta", action="store_true", help="with test-time augmentation (flips and 90° turns)")

    serve = sub.add_parser("serve", help="serve an exported model over HTTP (Ray Serve): a web page and POST /predict")
    serve.add_argument("model_dir", type=Path, help="the folder `sweep export` wrote")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--replicas", type=int, default=1, help="model replicas, one CPU each (default 1)")
    serve.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica; 0.5 packs two on a GPU")
    serve.add_argument(
        "--address",
        help="Ray cluster address (default: start a local Ray on 127.0.0.1); on a cluster the model answers under "
        "/m/<experiment>-<model>-<version>/, next to other models",
    )
    serve.add_argument("--max-mb", type=float, default=20.0, help="largest image accepted, in MB (default 20)")
    serve.add_argument(
        "--runtime",
        choices=FORMATS,
        default="keras",
        help="keras (default: model.keras) or onnx (model.onnx with ONNX Runtime on the CPU, no deep-learning "
        "framework in the replica; the export needs --format onnx)",
    )
    serve.add_argument(
        "--token",
        help="bearer token that /predict and /model require (default $SWEEP_SERVE_TOKEN, the safer way: a command "
        "line is visible to every user of the machine in `ps`); required when --host is not loopback. Make one with: "
        'python -c "import secrets; print(secrets.token_urlsafe(32))"',
    )


def _submit(args) -> int:
    from search import jobs
    from search.spec import load_study

    over = _overrides(args)
    # Validate here, before anything is uploaded; the data folder and the installed backends are the cluster's, so
    # they are checked there.
    theirs = {("data", "data_dir"), ("train", "backend")}
    local = {k: {f: v for f, v in sec.items() if (k, f) not in theirs} for k, sec in over.items()}
    load_study(args.study, args.preset, local)
    run_args = _run_args(args)
    study_text = None
    if Path(args.study).suffix in (".yaml", ".yml"):
        study_text = Path(args.study).read_text()
    job_id = jobs.submit(args.address, run_args, args.storage, args.job_id, study_text)
    print(f"submitted job {job_id} to {args.address}")
    print(f"  follow it:   sweep logs {job_id} --follow --address {args.address}")
    print(f"  its status:  sweep status {job_id} --address {args.address}")
    print(f"  results in:  {args.storage} (on the cluster)")
    return 0


def _run_args(args) -> list[str]:
    """`sweep run` options equivalent to these parsed ones (the study first)."""
    out = [args.study]
    for flag in ("preset", "data_dir", "name", "gpus_per_trial", "cpus_per_trial", "backend", "seed"):
        value = getattr(args, flag)
        if value is not None:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    for item in args.set:
        out += ["--set", item]
    return out


def _status(args) -> int:
    from search import jobs

    info = jobs.status(args.address, args.job_id)
    print(f"{args.job_id}: {info.status}")
    if info.message:
        print(f"  {info.message}")
    print(f"  entrypoint: {info.entrypoint}")
    return 0


def _logs(args) -> int:
    from search import jobs

    jobs.logs(args.address, args.job_id, follow=args.follow)
    return 0


def _stop(args) -> int:
    from search import jobs

    stopped = jobs.stop(args.address, args.job_id)
    print(f"{args.job_id}: " + ("stop requested" if stopped else "not running (already finished)"))
    return 0


def _tensorboard(args) -> int:
    from search import storage as store
    from search.experiment import load_sweep

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


def _export(args) -> int:
    import json

    from search.export import EXPORT_FILE, export_best

    out = export_best(
        args.experiment,
        args.to,
        family=args.family,
        metric=args.metric,
        fmt=args.format,
        quantize=args.quantize,
        max_latency_ms=args.max_latency_ms,
        max_size_mb=args.max_size_mb,
    )
    manifest = json.loads((out / EXPORT_FILE).read_text())
    metric = manifest["selected_by"]["metric"]
    print(f"exported {manifest['trial']} (best {metric} = {manifest['validation'][metric[4:]]:.4f}) to {out}")
    from models.tasks import task_info

    headline = task_info(manifest["task"]).headline[0]
    print(f"  test {headline}: {manifest['test'][headline]:.4f} (not used to choose)")
    print(f"  use it: sweep predict {out} IMAGES...    (or keras.saving.load_model('{out / 'model.keras'}'))")
    if cost := manifest.get("cost"):
        print(
            f"  cost as timed: {cost['latency_ms']:g} ms median ({cost['latency_p95_ms']:g} p95) per "
            f"image on one CPU thread, {cost['latency_all_threads_ms']:g} ms on all cores; {cost['params']:,} "
            f"parameters, {cost['size_mb']:g} MiB as ONNX"
        )
    if manifest.get("onnx"):
        onnx = manifest["onnx"]
        print(
            f"  model.onnx: {onnx['size_mb']} MiB, within {onnx['max_abs_difference']:.1e} of Keras on "
            f"{onnx['images']} test images; without this project: python {out / 'predict.py'} IMAGES..."
        )
        fast = onnx["latency_ms"]
        print(
            f"  one image on this CPU: {fast['one_thread']['median']:.1f} ms median, {fast['one_thread']['p95']:.1f} "
            f"ms p95 on one thread; {fast['all_threads']['median']:.1f} / {fast['all_threads']['p95']:.1f} ms on "
            f"{fast['cores']} cores"
        )
        if q := onnx.get("int8"):
            change = ", ".join(
                f"{k} {q['test']['float32'][k]:.4f} -> {q['test']['int8'][k]:.4f} ({v:+.4f})"
                for k, v in q["test_change"].items()
            )
            one = q["latency_ms"]["one_thread"]
            print(
                f"  model.int8.onnx: {q['size_mb']} MiB, calibrated on {q['calibration']['images']} training images; "
                f"test {change}; one image {one['median']:.1f} ms median on one thread"
            )
    return 0


def _predict(args) -> int:
    import pandas as pd

    from search.export import predict_images

    if args.gradcam and not args.out:
        print("sweep predict: --gradcam writes heatmap PNGs: give --out DIR", file=sys.stderr)
        return 2
    frame = predict_images(args.model_dir, args.inputs, args.out, tta=args.tta, gradcam=args.gradcam)
    with pd.option_context("display.width", 200, "display.max_colwidth", 60, "display.float_format", "{:.4f}".format):
        print(frame.to_string(index=False))
    if args.out:
        print(f"written to {args.out}")
    return 0


def _evaluate(args) -> int:
    from search.errors import SweepError
    from search.export import evaluate_export
    from search.external import external_set

    found = external_set(args.model_dir, args.data_dir) if args.data_dir is not None else None
    if found is not None:
        return _external(args, found)
    if args.by:
        where = args.data_dir or "the study's own data"
        raise SweepError(
            f"--by {args.by}: {where} is the data the model was trained on; subgroups are for an external "
            "validation: give --data-dir OTHER, a CSV manifest with that column"
        )
    now, recorded = evaluate_export(args.model_dir, args.data_dir, tta=args.tta)
    print(f"{'metric':<16}{'now':>10}{'at export':>12}")
    for key, value in now.items():
        if isinstance(value, float):
            before = recorded.get(key)
            shown = "–" if before is None else format(before, ".4f")  # None: not recorded, or not finite (NaN)
            print(f"{key:<16}{value:>10.4f}{shown:>12}")
    return 0


def _external(args, found) -> int:
    from search.external import external_sections, validate_external
    from search.report.document import render

    record, written = validate_external(args.model_dir, found, by=args.by, tta=args.tta)
    print(render(external_sections(record), "md"))
    print("written: " + ", ".join(str(p) for p in written))
    return 0


def _serve(args) -> int:
    from search.serve import TOKEN_ENV, serve_model

    serve_model(
        args.model_dir,
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica,
        address=args.address,
        max_mb=args.max_mb,
        token=args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None,
        runtime=args.runtime,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep", description="Hyperparameter sweeps for blood-smear classification and segmentation on Ray Tune."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_run_commands(sub)
    _add_cluster_commands(sub)
    _add_data_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd in ("run", "resume", "bench", "serve") and not getattr(args, "address", None):
        # A local cluster is one node: with this, Ray uses 127.0.0.1 and binds its servers to loopback only.
        # (Must be set before Ray is imported.)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    handlers = {
        ("data", "synth"): _data_synth,
        ("data", "check"): _data_check,
        ("run", None): _run,
        ("resume", None): _resume,
        ("bench", None): _bench,
        ("ls", None): _ls,
        ("cache", None): _cache,
        ("submit", None): _submit,
        ("status", None): _status,
        ("logs", None): _logs,
        ("stop", None): _stop,
        ("tensorboard", None): _tensorboard,
        ("report", None): _report,
        ("costs", None): _costs,
        ("export", None): _export,
        ("predict", None): _predict,
        ("evaluate", None): _evaluate,
        ("serve", None): _serve,
    }
    try:
        return handlers[(args.cmd, getattr(args, "data_cmd", None))](args)
    except Exception as exc:
        if getattr(exc, "exit_code", None) is None:  # a bug, not bad input: keep the traceback
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
