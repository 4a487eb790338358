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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep", description="Hyperparameter sweeps for blood-smear classification and segmentation on Ray Tune."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_data_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {("data", "synth"): _data_synth, ("data", "check"): _data_check}
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
