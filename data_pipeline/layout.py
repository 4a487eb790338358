"""Find the images (and masks) of a dataset in whichever layout it ships.

Layouts (``data.layout``; ``auto`` recognises them in this order):
  csv                 a CSV manifest (``--data-dir file.csv`` or ROOT/manifest.csv) with an image column and a
                      label and/or mask column, found by their usual names (USUAL_COLUMNS) or named by
                      ``data.image_column`` / ``label_column`` / ``mask_column``; paths relative to the CSV's folder
                      (or absolute); other columns are kept (``data.group_by`` may name one)
  original_segmented  ROOT/Original/[<class>/]<image> and ROOT/Segmented/[<class>/]<mask> (the Kaggle ALL set)
  images_masks        ROOT/images/[<class>/]<image> and ROOT/masks/[<class>/]<mask>; also image/ + mask/,
                      imgs/ + labels/, or one folder named like images (image, img, input) and one named like masks
                      (mask, groundtruth, label, segmentation), as ISIC 2018 ships (Kvasir-SEG, ISIC)
  class_folders       ROOT/<class>/**/<image> (Keras' image_dataset_from_directory), masks beside their images as
                      <stem>_mask.png (BUSI, LGG brain MRI); images directly in ROOT make one class

A mask belongs to the image with the same folder and stem, with or without a mask suffix (``_mask``, ``-mask``,
``_segmentation``, any letter case) and a copy number (BUSI's ``x_mask_1``); several masks of one image are merged.
Any image extension on either side. Classes are the sorted first-level folder names, kept exactly as written; a
dataset without class folders has the one class ``all`` (enough for segmentation). Nothing under ROOT is written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
ORIGINAL_DIR = "Original"
SEGMENTED_DIR = "Segmented"
MANIFEST = "manifest.csv"
# The tasks a dataset serves: with masks, segmentation; without, classification. The data pipeline asks only whether
# a task's targets are masks (``has_masks``); what else a task means lives in models.tasks.
LABEL_TASK, MASK_TASK = "classification", "segmentation"
TASKS = (LABEL_TASK, MASK_TASK)
ONE_CLASS = "all"  # the class of a dataset without class folders
FOLDER_PAIRS = (("images", "masks"), ("image", "mask"), ("imgs", "labels"))
_IMAGE_WORDS = ("image", "img", "input")
_MASK_WORDS = ("mask", "groundtruth", "ground_truth", "label", "segmentation")
IGNORED_DIRS = frozenset({"__macosx"})  # zip debris from macOS: ._x.jpg files that are not images
_MASK_NAME = re.compile(r"^(?P<stem>.+?)(?P<suffix>[_-](?:mask|segmentation)(?:_\d+)?)?$", re.IGNORECASE)
_SHOWN = 8  # problems listed in one error message
# A manifest's columns by role, found under these names (any letter case; the first present wins) unless named.
USUAL_COLUMNS = {
    "image": ("image", "path", "file", "filename", "filepath", "image_path", "img"),
    "label": ("label", "class", "target", "diagnosis"),
    "mask": ("mask", "mask_path", "segmentation"),
}


@dataclass(frozen=True)
class DatasetIndex:
    """Every usable image of a dataset, sorted by class then path, with its masks (segmentation)."""

    root: Path  # the folder that holds the dataset (the CSV's folder for a manifest): never written
    classes: tuple[str, ...]
    images: tuple[Path, ...]
    labels: tuple[int, ...]
    masks: tuple[tuple[Path, ...], ...] | None  # parallel to images (one or more each); None for classification
    names: tuple[str, ...] = ()  # each image as the dataset names it: relative to its images folder, or as in the CSV
    layout: str = "original_segmented"
    groups: tuple[str, ...] = ()  # with data.group_by: each image's group name ("" = its own group; see groups.py)

    def __len__(self) -> int:
        return len(self.images)

    def counts(self) -> dict[str, int]:
        return {c: self.labels.count(i) for i, c in enumerate(self.classes)}

    @property
    def task(self) -> str:
        return MASK_TASK if self.masks is not None else LABEL_TASK


@dataclass(frozen=True)
class _Found:
    """What a layout reader found: images (with class and name), their masks when the layout has them."""

    root: Path
    images: list[tuple[str, str, Path]]  # (class or "", name, path)
    masks: list[tuple[Path, ...]] | None
    where: str  # the folder a user should look into, for messages
    fields: dict[str, list[str]] = field(default_factory=dict)  # a manifest's columns, parallel to images


@dataclass(frozen=True)
class Layout:
    name: str
    pattern: str  # shown in messages and the README
    detect: Callable[[Path], bool]
    read: Callable[[Path, bool], _Found]  # (root, want_masks)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _entries(folder: Path) -> list[Path]:
    """What folder holds, sorted; a folder that cannot be listed (permissions, a vanished mount) is a DataError."""
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(
            f"{folder}: cannot be listed ({exc.strerror}); give this user read access to it, or remove it", folder
        ) from None


def _visible_dirs(folder: Path) -> list[Path]:
    return [
        p for p in _entries(folder) if p.is_dir() and not p.name.startswith(".") and p.name.lower() not in IGNORED_DIRS
    ]


def _child(folder: Path, name: str) -> Path | None:
    """The sub-folder called ``name`` in any letter case."""
    return next((p for p in _visible_dirs(folder) if p.name.lower() == name.lower()), None)


def _walk(folder: Path) -> list[Path]:
    """Every image under folder, recursively, in sorted order, skipping hidden files and zip debris.

    Symbolic links to folders and files are followed, but each real folder and each real file is reached by one path
    only: a second one (a loop such as ``a/loop -> ..``, two links to one folder or one image) is refused, since the
    same images would be counted twice, perhaps under two classes, and land in both training and test."""
    seen: dict[tuple[int, int], Path] = {}

    def once(path: Path) -> None:
        st = path.stat()
        first = seen.setdefault((st.st_dev, st.st_ino), path)
        if first != path:
            raise DataError(
                f"{path} is {first} again ({path.resolve()}, reached through a symbolic link): its images would be "
                "counted twice, perhaps under two classes; remove the link (or the loop) so each file is reached once",
                path,
            )

    def walk(folder: Path) -> list[Path]:
        once(folder)
        out = []
        for entry in _entries(folder):
            if entry.name.startswith(".") or entry.name.lower() in IGNORED_DIRS:
                continue
            if entry.is_dir():
                out += walk(entry)
            elif _is_image(entry):
                once(entry)
                out.append(entry)
        return out

    return walk(folder)


def _quoted(text: str) -> str:
    """A name from a user's file as shown in a message: as written, or quoted when it holds a line break or a
    control character, so the message stays one line."""
    return text if text.isprintable() else repr(text)


def _raise(problems: list[tuple[Path, str]], what: str, fix: str) -> None:
    """One DataError for every problem found: one line for one problem, a list (first few shown) for several."""
    if len(problems) == 1:
        raise DataError(f"{problems[0][0]}: {problems[0][1]}. {fix}", problems[0][0])
    if problems:
        shown = "\n  ".join(f"{p}: {why}" for p, why in problems[:_SHOWN])
        more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise DataError(f"{len(problems)} {what}:\n  {shown}{more}\n{fix}", problems[0][0])


def _duplicates(files: list[Path], key) -> list[tuple[Path, str]]:
    """Files that share a key (folder and stem): which one is meant is ambiguous."""
    seen: dict[object, Path] = {}
    out = []
    for f in files:
        k = key(f)
        if k in seen:
            out.append((f, f"same stem as {seen[k]}; keep one of them"))
        else:
            seen[k] = f
    return out


def _classed(folder: Path, files: list[Path]) -> list[tuple[str, str, Path]]:
    """(class, name, path): the class is the first folder level under ``folder``, "" for files directly in it.
    A class folder without images is an error (a class the user expects would silently vanish)."""
    used = {f.relative_to(folder).parts[0] for f in files}
    for sub in _visible_dirs(folder):
        if sub.name not in used:
            raise DataError(
                f"class folder {sub} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove "
                "the folder."
            )
    out = []
    for f in files:
        rel = f.relative_to(folder)
        out.append((rel.parts[0] if len(rel.parts) > 1 else "", rel.as_posix(), f))
    return out


def pair_masks(
    images: list[Path], image_dir: Path, masks: list[Path], mask_dir: Path
) -> tuple[list[tuple[Path, ...]], list[tuple[Path, str]]]:
    """Masks (in mask_dir) for images (in image_dir): same relative folder and stem, mask suffix optional.

    Returns the masks of each image and the problems: images without a mask, masks without an image, masks that are
    the same file under two extensions. Pure path logic: nothing is read."""
    problems = _duplicates(masks, lambda m: (m.parent, m.stem))
    stems = {(i.parent.relative_to(image_dir), i.stem) for i in images}
    by_key: dict[tuple[Path, str], list[Path]] = {}
    for m in masks:
        rel = m.parent.relative_to(mask_dir)
        key = (rel, m.stem) if (rel, m.stem) in stems else (rel, _MASK_NAME.match(m.stem)["stem"])
        if key in stems:
            by_key.setdefault(key, []).append(m)
        else:
            problems.append((m, f"mask without an image (no {key[1]}.* in {image_dir / rel})"))
    out = []
    for i in images:
        rel = i.parent.relative_to(image_dir)
        found = tuple(sorted(set(by_key.get((rel, i.stem), []))))
        if not found:
            problems.append((i, f"image without a mask (expected {mask_dir / rel / i.name}, or {i.stem}_mask.* there)"))
        out.append(found)
    return out, problems


# ---- the layouts ---------------------------------------------------------------------------------------------------


def _detect_original(root: Path) -> bool:
    return root.is_dir() and (_child(root, ORIGINAL_DIR) or _child(root, SEGMENTED_DIR)) is not None


def _read_original(root: Path, want_masks: bool) -> _Found:
    original = _child(root, ORIGINAL_DIR)
    if original is None:
        found = ", ".join(p.name for p in _visible_dirs(root)[:8]) or "no folders"
        raise DataError(
            f"{root / ORIGINAL_DIR} is missing (found: {found}). Layout original_segmented: "
            f"{LAYOUTS['original_segmented'].pattern}; point --data-dir at the folder that contains '{ORIGINAL_DIR}'."
        )
    files = _walk(original)
    _raise(
        _duplicates(files, lambda f: (f.parent, f.stem)), "files share a stem with another", "Keep one file per image."
    )
    masks = None
    if want_masks:
        segmented = _child(root, SEGMENTED_DIR)
        if segmented is None:
            raise DataError(
                f"{root / SEGMENTED_DIR} is missing: segmentation needs a mask image for every image, "
                f"at ROOT/{SEGMENTED_DIR}/<class>/<same file name>."
            )
        masks, problems = pair_masks(files, original, _walk(segmented), segmented)
        _raise(
            problems,
            "image/mask problem(s)",
            "Add the missing files or remove the unmatched ones; classification needs no masks.",
        )
    return _Found(root, _classed(original, files), masks, str(original))


def _folder_pair(root: Path) -> tuple[Path, Path] | None:
    """The images and masks folders: a pair of FOLDER_PAIRS, else the one folder named like images (image, img,
    input) and the one named like masks (mask, groundtruth, label, segmentation), as ISIC 2018 names them."""
    if not root.is_dir():
        return None
    for img_name, mask_name in FOLDER_PAIRS:
        images, masks = _child(root, img_name), _child(root, mask_name)
        if images is not None and masks is not None:
            return images, masks
    dirs = _visible_dirs(root)
    masks = [d for d in dirs if any(w in d.name.lower() for w in _MASK_WORDS)]
    images = [d for d in dirs if d not in masks and any(w in d.name.lower() for w in _IMAGE_WORDS)]
    return (images[0], masks[0]) if len(images) == len(masks) == 1 else None


def _read_images_masks(root: Path, want_masks: bool) -> _Found:
    pair = _folder_pair(root)
    if pair is None:
        names = ", ".join(f"{a}/ + {b}/" for a, b in FOLDER_PAIRS)
        raise DataError(f"{root} has no images and masks folders (layout images_masks: one of {names})")
    images_dir, masks_dir = pair
    files = _walk(images_dir)
    _raise(
        _duplicates(files, lambda f: (f.parent, f.stem)), "files share a stem with another", "Keep one file per image."
    )
    masks, problems = pair_masks(files, images_dir, _walk(masks_dir), masks_dir)
    if want_masks:
        _raise(problems, "image/mask problem(s)", "Add the missing files or remove the unmatched ones.")
    return _Found(root, _classed(images_dir, files), masks if want_masks else None, str(images_dir))


def _detect_class_folders(root: Path) -> bool:
    return root.is_dir() and bool(_walk(root))


def _is_mask_beside(path: Path, stems: set[tuple[Path, str]]) -> bool:
    """A file named like a mask (x_mask.png) whose image (x.*) is in the same folder."""
    match = _MASK_NAME.match(path.stem)
    return match["suffix"] is not None and (path.parent, match["stem"]) in stems


def _read_class_folders(root: Path, want_masks: bool) -> _Found:
    files = _walk(root)
    stems = {(f.parent, f.stem) for f in files}
    masks_beside = [f for f in files if _is_mask_beside(f, stems)]
    mask_set = set(masks_beside)
    images = [f for f in files if f not in mask_set]
    _raise(
        _duplicates(images, lambda f: (f.parent, f.stem)), "files share a stem with another", "Keep one file per image."
    )
    masks = None
    if want_masks:
        masks = []
        problems = _duplicates(masks_beside, lambda m: (m.parent, m.stem))
        by_key: dict[tuple[Path, str], list[Path]] = {}
        for m in masks_beside:
            by_key.setdefault((m.parent, _MASK_NAME.match(m.stem)["stem"]), []).append(m)
        for i in images:
            found = tuple(by_key.get((i.parent, i.stem), ()))
            if not found:
                match = _MASK_NAME.match(i.stem)
                if match["suffix"]:
                    problems.append((i, f"mask without an image (no {match['stem']}.* beside it)"))
                else:
                    problems.append((i, f"image without a mask (expected {i.parent / i.stem}_mask.* beside it)"))
            masks.append(found)
        if not masks_beside:
            hint = _single_folder_hint(root)
            raise DataError(
                f"{root}: no masks found beside the images (layout class_folders expects <stem>_mask.png next to "
                f"<stem>.png); segmentation needs masks. Accepted layouts:\n{_accepted()}{hint}"
            )
        _raise(problems, "image/mask problem(s)", "Add the missing files or remove the unmatched ones.")
    return _Found(root, _classed(root, images), masks, str(root))


def manifest_path(root: Path) -> Path | None:
    """The CSV manifest of a data path: the path itself (a .csv file) or ROOT/manifest.csv."""
    if root.is_file() and root.suffix.lower() == ".csv":
        return root
    if root.is_dir() and (root / MANIFEST).is_file():
        return root / MANIFEST
    return None


def _detect_csv(root: Path) -> bool:
    return manifest_path(root) is not None


def manifest_columns(present: list[str], named: dict[str, str | None], csv: Path) -> dict[str, str | None]:
    """The manifest column of each role (image, label, mask): the one ``named`` (data.<role>_column, any letter
    case) or the first of USUAL_COLUMNS present; None where there is none. A named column that is not there is a
    DataError."""
    out = {}
    for role, usual in USUAL_COLUMNS.items():
        name = (named.get(role) or "").strip().lower()
        if name and name not in present:
            raise DataError(
                f"{csv} has no column {named[role]!r} (data.{role}_column; columns: "
                f"{', '.join(map(_quoted, present))}): name one of its columns"
            )
        out[role] = name or next((c for c in usual if c in present), None)
    return out


def _read_csv(root: Path, want_masks: bool, named: dict[str, str | None]) -> _Found:
    import pandas as pd

    csv = manifest_path(root)
    if csv is None:
        raise DataError(f"{root} is not a CSV file and holds no {MANIFEST} (layout csv)")
    folder = csv.parent.resolve()
    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{csv} is empty: a manifest needs a header (image, label and/or mask) and one row per image"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv} is not a readable CSV file ({str(exc).splitlines()[0]})") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    cols = manifest_columns(list(frame.columns), named, csv)
    missing = [role for role in ("image", "mask" if want_masks else "label") if cols[role] is None]
    if missing:
        raise DataError(
            f"{csv} has no {' or '.join(missing)} column (columns: {', '.join(map(_quoted, frame.columns))}); a "
            "manifest has an image column, and a label (classification) and/or mask (segmentation) column: "
            + "; ".join(f"{r} is found as {', '.join(USUAL_COLUMNS[r])}, or set data.{r}_column" for r in missing)
        )
    if frame.empty:
        raise DataError(f"{csv} has a header but no rows: list one image per row")
    problems: list[tuple[Path, str]] = []

    def resolve(value: str, row: int, column: str) -> Path:
        raw = Path(value.strip()).expanduser()
        # Lexically, not through symlinks: "../x" escapes the folder; a linked sub-folder of the user's is fine.
        path = raw if raw.is_absolute() else Path(os.path.normpath(folder / raw))
        if not value.strip():
            problems.append((csv, f"row {row}: empty {column}"))
        elif not raw.is_absolute() and not path.is_relative_to(folder):
            problems.append(
                (
                    path,
                    f"row {row}: {column} {value!r} resolves outside {folder}; paths in a manifest "
                    "stay inside its folder (or are absolute)",
                )
            )
        elif not path.is_file():
            problems.append((path, f"row {row}: {column} file does not exist"))
        return path

    images, masks, seen = [], [], {}
    image_col, label_col, mask_col = cols["image"], cols["label"], cols["mask"]
    for i, row in enumerate(frame.to_dict("records"), start=2):
        path = resolve(row[image_col], i, image_col)
        if path in seen:
            problems.append((path, f"row {i}: listed twice (also row {seen[path]})"))
        seen[path] = i
        label = str(row[label_col]).strip() if label_col else ""
        images.append((label, row[image_col].strip(), path))
        if want_masks:
            masks.append((resolve(row[mask_col], i, mask_col),))
    _raise(problems, f"problem(s) in manifest {csv}", f"Fix the rows of {csv} (paths are relative to its folder).")
    if label_col and any(not label for label, _, _ in images):
        raise DataError(f"{csv}: some rows have an empty {label_col}; give every row a label, or drop the column")
    fields = {c: frame[c].tolist() for c in dict.fromkeys(frame.columns)}
    return _Found(folder, images, masks if want_masks else None, str(csv), fields)


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "csv",
            "FILE.csv or ROOT/manifest.csv with columns image (or path, file), label (or class) and/or mask",
            _detect_csv,
            _read_csv,
        ),
        Layout(
            "original_segmented",
            "ROOT/Original/[<class>/]<image> + ROOT/Segmented/[<class>/]<mask>",
            _detect_original,
            _read_original,
        ),
        Layout(
            "images_masks",
            "ROOT/images/[<class>/]<image> + ROOT/masks/[<class>/]<mask> (or image/+mask/, imgs/+labels/, "
            "*Input/+*GroundTruth/)",
            lambda root: _folder_pair(root) is not None,
            _read_images_masks,
        ),
        Layout(
            "class_folders",
            "ROOT/<class>/<image> (masks beside images as <stem>_mask.png)",
            _detect_class_folders,
            _read_class_folders,
        ),
    )
}


def _accepted() -> str:
    return "\n".join(f"  {name}: {layout.pattern}" for name, layout in LAYOUTS.items())


def _single_folder_hint(root: Path) -> str:
    dirs = _visible_dirs(root) if root.is_dir() else []
    if len(dirs) == 1 and not [f for f in _entries(root) if _is_image(f)]:
        return f"\n{root} holds one folder, {dirs[0].name}: if the dataset is in there, pass --data-dir {dirs[0]}"
    return ""


def detect(root: Path) -> str:
    """The layout ROOT is in, or a DataError listing what was found and the layouts accepted."""
    for name, layout in LAYOUTS.items():
        if layout.detect(root):
            return name
    found = "nothing"
    if root.is_dir():
        entries = [p for p in _entries(root) if not p.name.startswith(".")]
        dirs = [p.name + "/" for p in entries if p.is_dir()]
        files = [p.name for p in entries if p.is_file()]
        found = ", ".join(sorted(dirs)[:8] + sorted(files)[:8]) or "an empty folder"
    raise DataError(
        f"{root}: no dataset layout recognised (found: {found}). Accepted layouts (data.layout):\n{_accepted()}"
        f"{_single_folder_hint(root)}"
    )


def scan(
    root: str | Path,
    task: str = "classification",
    layout: str = "auto",
    *,
    columns: dict[str, str | None] | None = None,
    group_by: str | None = None,
) -> DatasetIndex:
    """Index ROOT (a folder, or a CSV manifest); raise DataError naming the path and the fix for any problem.

    ``task`` "auto": segmentation when the dataset has masks, classification otherwise. ``columns``: a manifest's
    column of each role (image, label, mask), where it is not found by its usual name. ``group_by``: a manifest
    column or a pattern giving each image's group (data_pipeline.groups).
    """
    if task not in (*TASKS, "auto"):
        raise DataError(f"task must be one of {', '.join(TASKS)} or auto, not {task!r}")
    if layout != "auto" and layout not in LAYOUTS:
        raise DataError(f"layout {layout!r} is not auto or one of: {', '.join(LAYOUTS)}")
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist. Pass the folder that holds the dataset (or its CSV).")
    name = detect(root) if layout == "auto" else layout
    named = {role: c for role, c in (columns or {}).items() if c}
    if named and name != "csv":
        role = next(iter(named))
        raise DataError(
            f"data.{role}_column {named[role]!r} names a manifest column, but {root} is read in layout {name}, not "
            "as a CSV manifest: remove the setting, or point data_dir at the manifest"
        )
    masks = _has_masks(root, name, named) if task == "auto" else has_masks(task)
    read = LAYOUTS[name].read
    found = read(root, masks, named) if name == "csv" else read(root, masks)
    if not found.images:
        raise DataError(f"{found.where} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); layout {name}")
    return _index(found, masks, name, group_by)


def _has_masks(root: Path, layout: str, named: dict[str, str | None]) -> bool:
    if layout == "original_segmented":
        return _child(root, SEGMENTED_DIR) is not None
    if layout == "images_masks":
        return True
    if layout == "csv":
        import pandas as pd

        try:
            present = [str(c).strip().lower() for c in pd.read_csv(manifest_path(root), nrows=0).columns]
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
            return False  # the reader reports it
        return manifest_columns(present, named, manifest_path(root))["mask"] is not None
    files = _walk(root)
    stems = {(f.parent, f.stem) for f in files}
    return any(_is_mask_beside(f, stems) for f in files)


def has_masks(task: str) -> bool:
    """Whether ``task``'s targets are masks rather than a label per image."""
    return task == MASK_TASK


def _index(found: _Found, masks: bool, layout: str, group_by: str | None = None) -> DatasetIndex:
    classed = [c for c, _, _ in found.images if c]
    if classed and len(classed) < len(found.images):
        loose = next(p for c, _, p in found.images if not c)
        raise DataError(
            f"{loose.parent} holds images directly and in class folders: put every image in a class folder, or "
            "none in any (one class, for segmentation)"
        )
    classes = tuple(sorted({c or ONE_CLASS for c, _, _ in found.images}))
    if not masks and len(classes) < 2:
        raise DataError(
            f"{found.where} has {len(classes)} class ({classes[0]}); a classifier needs at least 2: put each class's "
            f"images in its own sub-folder (or give the manifest a label column). "
            f"Segmentation needs no classes: --task segmentation.{_single_folder_hint(found.root)}"
        )
    order = sorted(range(len(found.images)), key=lambda i: (found.images[i][0], found.images[i][1]))
    label_of = {c: i for i, c in enumerate(classes)}
    names = tuple(found.images[i][1] for i in order)
    groups = ()
    if group_by is not None:
        from data_pipeline.groups import group_names

        groups = group_names(names, group_by, {c: [v[i] for i in order] for c, v in found.fields.items()}, found.where)
    return DatasetIndex(
        root=found.root,
        classes=classes,
        images=tuple(found.images[i][2] for i in order),
        labels=tuple(label_of[found.images[i][0] or ONE_CLASS] for i in order),
        masks=None if found.masks is None else tuple(found.masks[i] for i in order),
        names=names,
        layout=layout,
        groups=groups,
    )
