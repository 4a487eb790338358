"""The exported model: `sweep export`, `predict`, `evaluate`, `serve`."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def add(sub) -> None:
    """The exported model's commands."""
    from search.outputs.deploy import FORMATS, QUANTIZATIONS

    export = sub.add_parser("export", help="write the best trial (chosen on validation) as a ready-to-use model")
    export.add_argument("experiment")
    export.add_argument("--to", required=True, type=Path, help="new folder to write the model into")
    export.add_argument("--family", help="best of this model family only (default: best overall)")
    export.add_argument("--metric", help="validation metric to choose by (default val_accuracy / val_dice)")
    export.add_argument(
        "--format",
        choices=FORMATS,
        default="keras",
        help="onnx: also model.onnx (checked against Keras on the test split) and predict.py, which needs only "
        "onnxruntime, numpy and opencv-python-headless",
    )
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


def _export(args) -> int:
    import json

    from search.outputs.export import EXPORT_FILE, export_best

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

    from search.outputs.export import predict_images

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
    from search.outputs.export import evaluate_export
    from search.outputs.external import external_set

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
    from search.outputs.external import external_sections, validate_external
    from search.outputs.report.document import render

    record, written = validate_external(args.model_dir, found, by=args.by, tta=args.tta)
    print(render(external_sections(record), "md"))
    print("written: " + ", ".join(str(p) for p in written))
    return 0


def _serve(args) -> int:
    from search.serving.serve import TOKEN_ENV, serve_model

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


HANDLERS = {
    ("export", None): _export,
    ("predict", None): _predict,
    ("evaluate", None): _evaluate,
    ("serve", None): _serve,
}
