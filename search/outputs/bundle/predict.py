"""Predict images with this exported model using ONNX Runtime alone: no TensorFlow, Keras or leukemia-sweep.

    pip install onnxruntime numpy opencv-python-headless
    python predict.py IMAGE_OR_FOLDER... [--out predictions.csv] [--masks DIR] [--int8]

Give image files or folders (searched recursively). A classifier: one CSV row per image, ``image,label,p_<class>...``
(the probabilities calibrated with the export's temperature when it has one), the same as ``sweep predict``. A
segmenter: ``image,foreground`` (the fraction of pixels predicted foreground), and with ``--masks DIR`` one
``<name>_mask.png`` (0/255, at the image's own size) per image. The CSV goes to ``--out`` or is printed.

Everything the model needs is read from the files beside this script: ``model.onnx`` (the model, its normalisation
inside), ``export.json`` (classes, input size, preprocessing steps, temperature, threshold) and ``preprocess.py``
(the preprocessing steps the model was trained with). This is a research model, not a diagnostic device.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import preprocess  # noqa: E402  (the copy beside this script)


def read_rgb(path: Path) -> np.ndarray:
    """uint8 RGB as the service reads it: stored pixels (EXIF orientation ignored), grey/RGBA/16-bit converted."""
    image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise SystemExit(f"predict.py: {path} is not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """To size×size: area interpolation when shrinking, bilinear when growing (as the training images were)."""
    if image.shape[:2] == (size, size):
        return image
    interpolation = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def model_input(manifest: dict, image: np.ndarray) -> np.ndarray:
    """One image as the model takes it: a classifier's preprocessing steps, then resized (values stay 0-255)."""
    steps = () if masks_out(manifest) else manifest["preprocessing"].get("steps") or ()
    if steps:
        image = preprocess.apply(steps, image)[0]
    return resize(image, manifest["preprocessing"]["input_size"])


def masks_out(manifest: dict) -> bool:
    """Whether the model outputs a mask (thresholded at the export's threshold) rather than class probabilities: the
    manifest says so (``masks``); an export made before it did has a threshold for masks only."""
    return manifest.get("masks", manifest["preprocessing"].get("prediction_threshold") is not None)


def calibrated(probs: np.ndarray, temperature: float | None) -> np.ndarray:
    """softmax(log p / T), the export's temperature scaling; unchanged without a temperature."""
    if temperature is None:
        return probs
    z = np.log(np.clip(probs.astype(np.float64), 1e-12, 1.0)) / temperature
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def image_paths(inputs: list[str], extensions: set[str]) -> list[Path]:
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            out += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        elif item.is_file():
            out.append(item)
        else:
            raise SystemExit(f"predict.py: {item} does not exist")
    if not out:
        raise SystemExit(f"predict.py: no images in {', '.join(inputs)} ({', '.join(sorted(extensions))})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", type=Path, help="write the CSV here (default: print it)")
    parser.add_argument("--masks", type=Path, help="segmentation: write <name>_mask.png files into this new folder")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--int8", action="store_true", help="run model.int8.onnx (exported with --quantize int8)")
    args = parser.parse_args(argv)
    manifest = json.loads((HERE / "export.json").read_text())
    model = "model.int8.onnx" if args.int8 else "model.onnx"
    if not (HERE / model).is_file():
        raise SystemExit(f"predict.py: {HERE / model} does not exist (export with --quantize int8 for --int8)")
    paths = image_paths(args.inputs, set(manifest["onnx"]["image_extensions"]))
    session = ort.InferenceSession(str(HERE / model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    originals = [read_rgb(p) for p in paths]
    x = np.stack([model_input(manifest, o) for o in originals]).astype(np.float32)
    batches = range(0, len(x), args.batch_size)
    out = np.concatenate([session.run(None, {name: x[i : i + args.batch_size]})[0] for i in batches])
    if not masks_out(manifest):
        probs = calibrated(out, (manifest.get("calibration") or {}).get("temperature"))
        header = ["image", "label", *(f"p_{c}" for c in manifest["classes"])]
        rows = [
            [str(p), manifest["classes"][int(q.argmax())], *(f"{v:.6f}" for v in q)]
            for p, q in zip(paths, probs, strict=True)
        ]
    else:
        masks = out[..., 0] >= manifest["preprocessing"]["prediction_threshold"]
        header = ["image", "foreground"]
        rows = [[str(p), f"{m.mean():.6f}"] for p, m in zip(paths, masks, strict=True)]
        if args.masks is not None:
            if args.masks.exists() or len({p.stem for p in paths}) < len(paths):
                raise SystemExit(f"predict.py: --masks {args.masks} must be a new folder, and the images' names differ")
            args.masks.mkdir(parents=True)
            for path, mask, original in zip(paths, masks, originals, strict=True):
                full = cv2.resize(mask.astype(np.uint8), original.shape[1::-1], interpolation=cv2.INTER_NEAREST)
                cv2.imwrite(str(args.masks / f"{path.stem}_mask.png"), full * 255)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *rows])
    if args.out is None:
        print(text.getvalue(), end="")
    else:
        args.out.write_text(text.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
