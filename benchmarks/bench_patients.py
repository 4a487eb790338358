"""How much does splitting by image instead of by patient inflate the test score? Measured on real images.

Usage: python benchmarks/bench_patients.py [--out DIR] [--patients 120] [--held-out 60] [--views 4] [--seed 0]

No one here drew these images: they are the photographs and microscopy images bundled with scikit-image (astronaut,
retina, immunohistochemistry, cells, textures, the Hubble deep field, ...; no download). Each "patient" is one
128 × 128 region of one of them (not a near-blank one); its images are ``--views`` fields of view of that region
(random 96 × 96 crops, flipped at random), written as PNG files ``<class>/P<patient>_<view>.png``. The class is a
patient-level fact, as a diagnosis is, given at random to half of the patients each: nothing in the pixels tells the
classes apart, so any test accuracy above one half is the model recognising patients it has seen. That is the worst
case of what an image-level split measures on real data, where a patient's images share staining, scanner and anatomy.

Three sweeps of the quickstart study (``custom_cnn`` from scratch) on the same images, then the winner of each on
``--held-out`` patients that no sweep saw (``sweep evaluate --data-dir``: external validation):
  image-level    ``data.duplicates: ignore``, no groups: the study's own way of splitting.
  copies         the default ``data.duplicates: group``: overlapping fields of view found as near copies are kept
                 in one split, but a patient's other views still cross.
  patient-level  ``data.group_by: '^(P\\d+)_'`` (and the default duplicates): each patient in one split.
Printed: each sweep's winner's test accuracy, its accuracy on the held-out patients, and the audit's crossings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "hubble_deep_field")
PHOTOS += ("immunohistochemistry", "retina", "cell", "brick", "grass", "gravel", "horse", "clock")
REGION, VIEW = 128, 96
MIN_STD = 20.0  # grey levels: regions flatter than this are left out
CLASSES = ("A", "B")
WAYS = {
    "image-level": ["--set", "data.duplicates=ignore"],
    "copies": [],
    "patient-level": ["--set", r"data.group_by=^(P\d+)_"],
}


def regions(rng: np.random.Generator) -> list[np.ndarray]:
    """Every non-overlapping REGION × REGION tile of the bundled images (RGB uint8), shuffled."""
    import skimage.data

    tiles = []
    for name in PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
        if image.dtype != np.uint8:  # e.g. boolean or float images: to 0..255
            image = (255 * (image.astype(float) / max(image.max(), 1))).astype(np.uint8)
        h, w = image.shape[:2]
        tiles += [image[y : y + REGION, x : x + REGION] for y in range(0, h - REGION + 1, REGION)
                  for x in range(0, w - REGION + 1, REGION)]  # fmt: skip
    # Near-blank regions (the sky behind the astronaut, the moon's black) look alike across patients: the duplicate
    # check rightly calls them copies of one another, which would tie patients of two classes together.
    tiles = [t for t in tiles if t.std() >= MIN_STD]
    return [tiles[i] for i in rng.permutation(len(tiles))]


def write_patients(root: Path, tiles: list[np.ndarray], first: int, views: int, rng: np.random.Generator) -> None:
    import cv2

    labels = rng.permutation(np.arange(len(tiles)) % len(CLASSES))  # as many patients of each class, at random
    for k, tile in enumerate(tiles):
        patient = first + k
        label = CLASSES[labels[k]]
        (root / label).mkdir(parents=True, exist_ok=True)
        for v in range(views):
            y, x = rng.integers(0, REGION - VIEW + 1, 2)
            crop = tile[y : y + VIEW, x : x + VIEW]
            crop = crop[:, ::-1] if rng.random() < 0.5 else crop
            assert cv2.imwrite(str(root / label / f"P{patient:03d}_{v}.png"), np.ascontiguousarray(crop[..., ::-1]))


def sweep(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"sweep {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-patients"))
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument("--held-out", type=int, default=60)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    tiles = regions(rng)
    if len(tiles) < args.patients + args.held_out:
        sys.exit(f"only {len(tiles)} regions in the bundled images: ask for fewer patients")
    data, held = args.out / "patients", args.out / "held-out"
    for folder in (data, held):
        if folder.exists():
            sys.exit(f"{folder} exists: give another --out")
    write_patients(data, tiles[: args.patients], 0, args.views, rng)
    write_patients(held, tiles[args.patients : args.patients + args.held_out], args.patients, args.views, rng)
    counts = {c: len(list((data / c).iterdir())) for c in CLASSES}
    print(f"{args.patients} patients × {args.views} views in {data} ({counts}); {args.held_out} held out in {held}")

    rows = []
    for way, extra in WAYS.items():
        t0 = time.perf_counter()
        runs, model = args.out / "runs", args.out / f"model-{way}"
        base = ["run", "classification", "--preset", "quickstart", "--data-dir", str(data), "--seed", str(args.seed)]
        sweep(*base, "--storage", str(runs), "--name", way, *extra)
        sweep("export", str(runs / way), "--to", str(model))
        sweep("evaluate", str(model), "--data-dir", str(held))
        manifest = json.loads((model / "export.json").read_text())
        (external,) = model.glob("external-*.json")
        outside = json.loads(external.read_text())["metrics"]["accuracy"]
        audit = json.loads((runs / way / "sweep.json").read_text())["data"]
        audit = next(iter(audit.values()))["leakage_audit"]
        rows.append(
            {
                "split": way,
                "test accuracy": manifest["test"]["accuracy"],
                "held-out patients": f"{outside['value']:.3f} [{outside['low']:.3f}, {outside['high']:.3f}]",
                "groups crossing": audit.get("groups_crossing", "n/a"),
                "copies crossing": audit.get("duplicates_crossing"),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    import pandas as pd

    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))
    print("a model that knows nothing scores about 0.5; the held-out intervals resample images, not patients")


if __name__ == "__main__":
    main()
