"""`sweep data synth` and `sweep data check`: write the synthetic dataset, check a dataset."""

from __future__ import annotations

import sys
from pathlib import Path

from models.tasks import TASKS


def add(sub) -> None:
    """The data commands."""
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


HANDLERS = {
    ("data", "synth"): _data_synth,
    ("data", "check"): _data_check,
}
