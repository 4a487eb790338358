"""The ``sweep`` command line (also ``python -m search``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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

    check = data.add_parser("check", help="count, size and validate a dataset folder; non-zero exit on problems")
    check.add_argument("dir", type=Path)
    check.add_argument("--task", choices=("classification", "segmentation"), default="classification")


def _data_synth(args) -> int:
    import cv2

    from data_pipeline import synth

    if args.per_class is not None:
        counts = (args.per_class,) * len(synth.CLASSES)
    elif args.counts:
        try:
            counts = tuple(int(c) for c in args.counts.split(","))
        except ValueError:
            raise SystemExit(f"error: --counts must be comma-separated integers, got {args.counts!r}") from None
    else:
        counts = synth.DEFAULT_COUNTS
    root = synth.write_dataset(args.out, counts, args.size, args.seed, args.format)
    print(f"wrote {sum(counts)} images ({', '.join(f'{c} {n}' for c, n in zip(synth.CLASSES, counts))}) to {root}")
    if args.contact_sheet:
        sheet = synth.contact_sheet(root)
        cv2.imwrite(str(args.contact_sheet), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        print(f"contact sheet: {args.contact_sheet}")
    return 0


def _data_check(args) -> int:
    from data_pipeline import check, scan

    index = scan(args.dir, args.task)
    report = check(index)
    print(f"{index.root}: {len(index)} images in {len(index.classes)} classes ({args.task})")
    for name, n in report.counts.items():
        print(f"  {name:<20} {n:>6}")
    print("image sizes: " + ", ".join(f"{k} ({v})" for k, v in sorted(report.sizes.items(), key=lambda kv: -kv[1])))
    if report.ok:
        print("no problems found")
        return 0
    print(f"{len(report.problems)} problem(s):")
    for p in report.problems:
        print(f"  {p}")
    return 1


def _parse_set(items: list[str]) -> dict:
    """--set section.key=value (YAML value) -> nested overrides."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"error: --set takes section.key=value (e.g. train.epochs=5), got {item!r}")
        section, field = key.split(".", 1)
        out.setdefault(section, {})[field] = yaml.safe_load(value)
    return out


def _add_run_commands(sub) -> None:
    run = sub.add_parser("run", help="run a study as a Ray Tune sweep")
    run.add_argument("study", help="a built-in study (classification, segmentation) or a study .yaml file")
    run.add_argument("--preset", help="a preset of the study, e.g. smoke (tiny, fast)")
    run.add_argument("--data-dir", help="dataset folder (ROOT/Original/<class>/...); default: embedded synthetic set")
    run.add_argument("--storage", default="runs", help="where experiments are written (default ./runs)")
    run.add_argument("--name", help="experiment name (default STUDY-DATE-TIME)")
    run.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; 0.25 packs 4 trials on a GPU (default auto)")
    run.add_argument("--cpus-per-trial", type=float)
    run.add_argument("--backend", choices=("tensorflow", "jax", "torch"), help="Keras backend for every trial")
    run.add_argument("--seed", type=int)
    run.add_argument("--address", help="Ray cluster address (default: start a local cluster on 127.0.0.1)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a study setting, e.g. --set train.epochs=5 (repeatable)",
    )
    resume = sub.add_parser("resume", help="continue an interrupted sweep where it stopped")
    resume.add_argument("experiment", type=Path)
    resume.add_argument("--address")
    ls = sub.add_parser("ls", help="list experiments with status, trial counts and best metric")
    ls.add_argument("--storage", default="runs")


def _overrides(args) -> dict:
    over = _parse_set(args.set)
    if args.data_dir:
        over.setdefault("data", {})["data_dir"] = args.data_dir
    if args.backend:
        over.setdefault("train", {})["backend"] = args.backend
    if args.seed is not None:
        over.setdefault("search", {})["seed"] = args.seed
    return over


def _print_summary(experiment: Path) -> None:
    import pandas as pd

    from search.runner import RESULTS_CSV, best_per_family, load_sweep

    sweep = load_sweep(experiment)
    metric = {"classification": "val_accuracy", "segmentation": "val_dice"}[sweep["study"]["task"]]
    frame = pd.read_csv(experiment / RESULTS_CSV)
    test = "test_accuracy" if metric == "val_accuracy" else "test_dice"
    print(f"\n{len(frame)} trials: " + ", ".join(f"{v} {k}" for k, v in frame["status"].value_counts().items()))
    best = best_per_family(frame, metric)
    cols = [c for c in ("trial", "status", "epochs", metric, test) if c in best]
    with pd.option_context("display.width", 160, "display.float_format", "{:.4f}".format):
        print("best trial per model family (chosen on validation; test shown, never used to choose):")
        print(best[cols].to_string(index=False))
    audits = {opt: d["leakage_audit"] for opt, d in sweep["data"].items()}
    print(f"leakage audit (val/test images sharing a source with training), per loading option: {audits}")
    print(f"\nexperiment: {experiment}")
    print(f"results table: {experiment / RESULTS_CSV}")
    print(f"TensorBoard: tensorboard --logdir {experiment}")


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
    )
    _print_summary(exp)
    return 0


def _resume(args) -> int:
    from search.runner import resume_study

    _print_summary(resume_study(args.experiment, address=args.address))
    return 0


def _ls(args) -> int:
    import pandas as pd

    from search.runner import list_experiments

    frame = list_experiments(args.storage)
    if frame.empty:
        print(f"no experiments under {Path(args.storage).resolve()}")
        return 0
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(frame.to_string(index=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep", description="Hyperparameter sweeps for blood-smear classification and segmentation on Ray Tune."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_run_commands(sub)
    _add_data_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd in ("run", "resume") and not args.address:
        # A local cluster is one node: with this, Ray uses 127.0.0.1 and binds its servers to loopback only.
        # (Must be set before Ray is imported.)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    handlers = {
        ("data", "synth"): _data_synth,
        ("data", "check"): _data_check,
        ("run", None): _run,
        ("resume", None): _resume,
        ("ls", None): _ls,
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
