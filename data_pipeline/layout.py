"""Find the images (and masks) of a dataset in the Kaggle "Leukemia" layout.

    ROOT/Original/<class>/<image>       one folder per class; the folder name is the class name
    ROOT/Segmented/<class>/<image>      same file names; needed for segmentation only

Classes are the sorted folder names, kept exactly as written. Nothing under ROOT is ever written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_pipeline.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
ORIGINAL_DIR = "Original"
SEGMENTED_DIR = "Segmented"
TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class DatasetIndex:
    """Every usable image of a dataset, sorted by class then file name."""

    root: Path
    classes: tuple[str, ...]
    images: tuple[Path, ...]
    labels: tuple[int, ...]
    masks: tuple[Path, ...] | None  # parallel to images; None for classification

    def __len__(self) -> int:
        return len(self.images)

    def counts(self) -> dict[str, int]:
        return {c: self.labels.count(i) for i, c in enumerate(self.classes)}


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def scan(root: str | Path, task: str = "classification") -> DatasetIndex:
    """Index ROOT; raise DataError naming the path and the fix for any layout problem."""
    if task not in TASKS:
        raise DataError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist. Pass the folder that holds Original/ (and Segmented/).")
    original = root / ORIGINAL_DIR
    if not original.is_dir():
        found = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())[:8]) or "no folders"
        raise DataError(
            f"{original} is missing (found: {found}). Expected ROOT/{ORIGINAL_DIR}/<class>/<image>; "
            f"for the Kaggle set, point --data-dir at the folder that contains '{ORIGINAL_DIR}'."
        )
    classes = tuple(sorted(p.name for p in original.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if len(classes) < 2:
        raise DataError(
            f"{original} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            "a classifier needs at least 2: put each class's images in its own sub-folder."
        )
    images: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (original / name).iterdir() if _is_image(p))
        if not files:
            raise DataError(
                f"class folder {original / name} holds no images "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder."
            )
        images += files
        labels += [label] * len(files)
    masks = _pair_masks(root, original, images) if task == "segmentation" else None
    return DatasetIndex(root, classes, tuple(images), tuple(labels), masks)


def _pair_masks(root: Path, original: Path, images: list[Path]) -> tuple[Path, ...]:
    segmented = root / SEGMENTED_DIR
    if not segmented.is_dir():
        raise DataError(
            f"{segmented} is missing: segmentation needs a mask image for every image, "
            f"at ROOT/{SEGMENTED_DIR}/<class>/<same file name>."
        )
    masks = [segmented / img.relative_to(original) for img in images]
    missing = [m for m in masks if not m.is_file()]
    if missing:
        shown = "\n  ".join(str(m) for m in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(
            f"{len(missing)} image(s) have no mask; expected:\n  {shown}{more}\n"
            f"Add the masks, or run the classification task, which needs none."
        )
    return tuple(masks)
