"""Decode images and masks with OpenCV, in parallel, with an on-disk cache of the decoded arrays.

The cache key is a fingerprint of the layout, the file list, sizes, modification times and every preprocessing
parameter (the mask rule and the ``data_pipeline.preprocess`` steps included), so a changed, added or removed file
(or another image size, layout, mask rule or preprocessing step) is a cache miss. Cache entries live under the cache
folder (``$SWEEP_CACHE_DIR`` or ``~/.cache/leukemia-sweep``), never in the user's data folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data_pipeline import masks as mask_rules
from data_pipeline import preprocess
from data_pipeline.cache import cache_folder, mark_used
from data_pipeline.errors import ON_BAD_IMAGE, DataError
from data_pipeline.files import publish_folder
from data_pipeline.layout import DatasetIndex

_CACHE_VERSION = 4  # 4: auto decides lossy masks anew (a cache keyed by "auto" holds the old decision)
_JPEG_MAGIC = b"\xff\xd8\xff"  # a JPEG's first bytes, whatever the file is called


class BadImageError(DataError):
    """One file that cannot be decoded: unreadable, truncated or not an image."""


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadImageError(f"{path}: cannot be read ({exc.strerror})", path) from exc
    _check_complete(data, path, path.suffix.lower())
    return data


def _check_complete(data: bytes, where: object, suffix: str) -> None:
    path = where if isinstance(where, Path) else None
    if not data:
        raise BadImageError(f"{where}: empty file", path)
    # OpenCV decodes a truncated JPEG or PNG into a partly grey image with only a warning: check the end markers.
    if suffix in (".jpg", ".jpeg") and data.rfind(b"\xff\xd9", max(0, len(data) - 1024)) < 0:
        raise BadImageError(f"{where}: truncated JPEG (no end-of-image marker)", path)
    if suffix == ".png" and b"IEND" not in data[-32:]:
        raise BadImageError(f"{where}: truncated PNG (no IEND chunk)", path)


def _decode_bytes(data: bytes, flags: int, where: object) -> np.ndarray:
    path = where if isinstance(where, Path) else None
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:  # OpenCV refuses some files outright: more pixels than CV_IO_MAX_IMAGE_PIXELS, odd formats
        raise BadImageError(f"{where}: OpenCV refuses to decode it ({exc.err})", path) from None
    if img is None:
        raise BadImageError(f"{where}: not a decodable image", path)
    return img


def decode(path: Path, flags: int) -> np.ndarray:
    return _decode_bytes(_read_bytes(path), flags, path)


# Stored pixels: an EXIF orientation tag is ignored, as Keras and PIL do, so a mask lines up with its image.
_RGB_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def decode_rgb(data: bytes, where: str) -> np.ndarray:
    """An image held in memory (an upload) as uint8 RGB, decoded and checked as `read_rgb` does files; having no
    trustworthy file name, its kind is read from its first bytes. ``where`` names it in errors."""
    suffix = ".jpg" if data.startswith(_JPEG_MAGIC) else ".png" if data[:8] == b"\x89PNG\r\n\x1a\n" else ""
    _check_complete(data, where, suffix)
    return cv2.cvtColor(_decode_bytes(data, _RGB_FLAGS, where), cv2.COLOR_BGR2RGB)


def resize(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """To size×size: area interpolation when shrinking, bilinear when growing, nearest for masks."""
    if img.shape[:2] == (size, size):
        return img
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def read_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """An image as uint8 RGB (grey, RGBA and 16-bit files converted), resized to size×size when given.
    Its stored pixels: an EXIF orientation tag is ignored, as Keras and PIL do, so a mask lines up with its image."""
    img = cv2.cvtColor(decode(Path(path), _RGB_FLAGS), cv2.COLOR_BGR2RGB)
    return img if size is None else resize(img, size)


def read_mask(paths: tuple[Path, ...], rule: str, shape: tuple[int, int], image: Path) -> np.ndarray:
    """The binary mask (uint8 {0, 1}, HxW) of one image: each of its mask files by ``rule``, merged (union)."""
    out = np.zeros(shape, np.uint8)
    for path in paths:
        value = mask_rules.intensity(decode(path, cv2.IMREAD_UNCHANGED))
        if value.shape != shape:
            raise DataError(
                f"mask {path} is {value.shape[1]}×{value.shape[0]} but its image {image} is "
                f"{shape[1]}×{shape[0]}; a mask must match its image pixel for pixel. Fix or remove the pair.",
                path,
            )
        out |= mask_rules.binarize(value, rule)
    return out


@dataclass(frozen=True)
class MaskSample:
    """What ``auto`` decides from: up to ``masks.AUTO_SAMPLE`` masks spread evenly over the dataset."""

    hist: np.ndarray  # 256-bin histogram of their intensities, pooled
    lossy: bool  # any of the files is a JPEG (by its first bytes): its edges ring
    files: int  # mask files read


def sample_masks(index: DatasetIndex) -> MaskSample:
    """The masks ``auto`` decides from (unreadable ones skipped: they are reported where images are loaded or
    checked). Spread over the whole dataset, so the whole dataset gets one rule."""
    picks = np.unique(np.linspace(0, len(index) - 1, min(len(index), mask_rules.AUTO_SAMPLE)).round().astype(int))
    hist, lossy, files = np.zeros(256, np.int64), False, 0
    for i in picks:
        for path in index.masks[i]:
            try:
                data = _read_bytes(path)
                hist += mask_rules.histogram(mask_rules.intensity(_decode_bytes(data, cv2.IMREAD_UNCHANGED, path)))
            except BadImageError:
                continue
            lossy, files = lossy or data.startswith(_JPEG_MAGIC), files + 1
    return MaskSample(hist, lossy, files)


def resolve_mask_rule(index: DatasetIndex, rule: str, sample: MaskSample | None = None) -> str | None:
    """The rule to apply: ``rule`` itself, or for ``auto`` the one ``masks.decide`` picks from ``sample`` (read here
    when not given). None for classification."""
    if index.masks is None:
        return None
    problem = mask_rules.rule_problem(rule)
    if problem:
        raise DataError(f"mask_rule: {problem}")
    if rule != "auto":
        return rule
    sample = sample or sample_masks(index)
    return mask_rules.decide(sample.hist, sample.lossy)


def _read_pair(image: Path, masks: tuple[Path, ...] | None, size: int, rule: str | None, steps=()):
    rgb = read_rgb(image)
    mask = None if masks is None else read_mask(masks, rule, rgb.shape[:2], image)
    if steps:  # at the file's own resolution, before resizing (data_pipeline.preprocess)
        rgb, mask = preprocess.apply(steps, rgb, mask)
    return resize(rgb, size), None if mask is None else resize(mask, size, nearest=True)


@dataclass(frozen=True)
class LoadedData:
    """Decoded arrays of every usable image, in index order, plus what was skipped and why."""

    classes: tuple[str, ...]
    images: np.ndarray  # (N, S, S, 3) uint8 RGB
    labels: np.ndarray  # (N,) int32
    masks: np.ndarray | None  # (N, S, S) uint8 in {0, 1}
    names: tuple[str, ...]  # as the index names them (e.g. "class/file" relative to Original/)
    skipped: tuple[tuple[str, str], ...]  # (name, reason)
    fingerprint: str
    from_cache: bool = False
    layout: str = ""
    mask_rule: str | None = None  # the rule applied (auto resolved); None for classification


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def fingerprint(index: DatasetIndex, **params: object) -> str:
    """A hash of the layout, classes, file list (with each image's label and masks), sizes, mtimes and the
    preprocessing parameters."""
    head = {"v": _CACHE_VERSION, "layout": index.layout, "classes": index.classes, **params}
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for i, path in enumerate(index.images):
        for p in (path, *(index.masks[i] if index.masks else ())):
            st = p.stat()
            h.update(f"{index.labels[i]}\0{_shown(p, index.root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        h.update(b"\1")
    return h.hexdigest()[:24]


def load_fingerprint(
    index: DatasetIndex, image_size: int, mask_rule: str = "auto", preprocess_steps: tuple = ()
) -> str:
    """The fingerprint ``load`` records for ``index`` read with these settings (its cache key; sweep.json's
    ``fingerprint``): the same files and settings give the same one."""
    steps = preprocess.resolve(preprocess_steps)
    # Every step's parameters, defaults written out, are part of the key (absent without steps: older keys hold).
    return fingerprint(
        index,
        size=image_size,
        mask_rule=mask_rule if index.masks is not None else None,
        masks=index.masks is not None,
        **({"preprocess": steps} if steps else {}),
    )


def load(
    index: DatasetIndex,
    image_size: int,
    *,
    mask_rule: str = "auto",
    on_bad_image: str = "skip",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    preprocess_steps: tuple = (),
) -> LoadedData:
    """Decode every image of ``index`` at image_size×image_size (and its mask), through the on-disk cache.

    mask_rule: see ``data_pipeline.masks`` (``auto`` decides once per dataset; the decision is in ``mask_rule``).
    on_bad_image: "skip" leaves unreadable or truncated files out and lists them in ``skipped``; "fail" raises a
    DataError naming every one of them.
    preprocess_steps: ``data_pipeline.preprocess`` steps run on each image (and mask) before resizing.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise DataError(f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, not {on_bad_image!r}")
    problem = mask_rules.rule_problem(mask_rule)
    if problem:
        raise DataError(f"mask_rule: {problem}")
    bad_steps = preprocess.problems(preprocess_steps)
    if bad_steps:
        raise DataError("; ".join(bad_steps))
    steps = preprocess.resolve(preprocess_steps)
    fp = load_fingerprint(index, image_size, mask_rule, preprocess_steps)
    entry = cache_folder("decoded", cache_dir) / fp
    data = _read_cache(entry, fp) if use_cache and entry.is_dir() else None
    if data is not None:
        mark_used(entry)
        if data.skipped and on_bad_image == "fail":  # cached by a load that skipped them: "fail" still fails
            _refuse_unreadable([reason for _, reason in data.skipped])
        return data
    data = _decode_all(index, image_size, resolve_mask_rule(index, mask_rule), on_bad_image, fp, workers, steps)
    if use_cache:
        _write_cache(entry, data)
    return data


def _refuse_unreadable(reasons: list[str]) -> None:
    """One line, as every refusal: each file with what is wrong with it (the first 10), then what to do."""
    more = f"; and {len(reasons) - 10} more" if len(reasons) > 10 else ""
    raise DataError(
        f"{len(reasons)} unreadable image(s) ({'; '.join(reasons[:10])}{more}): fix or delete them, "
        "or set data.on_bad_image: skip to leave them out (they are counted and listed)"
    )


def _decode_all(index, size, rule, on_bad_image, fp, workers, steps=()) -> LoadedData:
    masks = index.masks or (None,) * len(index)

    def work(i: int):
        try:
            return _read_pair(index.images[i], masks[i], size, rule, steps)
        except BadImageError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=workers or min(32, (os.cpu_count() or 1) + 2)) as pool:
        results = list(pool.map(work, range(len(index))))
    bad = [(i, r) for i, r in enumerate(results) if isinstance(r, BadImageError)]
    if bad and on_bad_image == "fail":
        _refuse_unreadable([str(r) for _, r in bad])
    keep = [i for i, r in enumerate(results) if not isinstance(r, BadImageError)]
    if len(keep) == 0:
        raise DataError(f"none of the {len(index)} images under {index.root} could be decoded")
    names = index.names
    return LoadedData(
        classes=index.classes,
        images=np.stack([results[i][0] for i in keep]),
        labels=np.asarray([index.labels[i] for i in keep], dtype=np.int32),
        masks=np.stack([results[i][1] for i in keep]) if index.masks else None,
        names=tuple(names[i] for i in keep),
        skipped=tuple((names[i], str(r)) for i, r in bad),
        fingerprint=fp,
        layout=index.layout,
        mask_rule=rule,
    )


def _write_cache(entry: Path, data: LoadedData) -> None:
    meta = {
        "classes": data.classes,
        "names": data.names,
        "skipped": data.skipped,
        "mask_width": None if data.masks is None else data.masks.shape[-1],
        "layout": data.layout,
        "mask_rule": data.mask_rule,
    }
    with contextlib.suppress(DataError), publish_folder(entry) as tmp:  # a whole entry or none
        # DataError: another process won the race, or the disk is full: not fatal, the arrays are in memory
        np.save(tmp / "images.npy", data.images)
        np.save(tmp / "labels.npy", data.labels)
        if data.masks is not None:  # binary masks stored as bits: 8x less to read back
            np.save(tmp / "masks.npy", np.packbits(data.masks, axis=-1))
        (tmp / "meta.json").write_text(json.dumps(meta))


def _read_cache(entry: Path, fp: str) -> LoadedData | None:
    """The cached arrays, or None when the entry is damaged (a truncated or missing file, a disk error): then it is
    removed, so the load decodes the images again and writes a whole entry in its place."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        masks = None
        if (entry / "masks.npy").is_file():
            masks = np.unpackbits(np.load(entry / "masks.npy"), axis=-1, count=meta["mask_width"])
        data = LoadedData(
            classes=tuple(meta["classes"]),
            images=np.load(entry / "images.npy"),
            labels=np.load(entry / "labels.npy"),
            masks=masks,
            names=tuple(meta["names"]),
            skipped=tuple(tuple(s) for s in meta["skipped"]),
            fingerprint=fp,
            from_cache=True,
            layout=meta["layout"],
            mask_rule=meta["mask_rule"],
        )
        if len({len(data.images), len(data.labels), len(data.names), *([] if masks is None else [len(masks)])}) > 1:
            raise ValueError("arrays of different lengths")
        return data
    except (OSError, ValueError, EOFError, KeyError, TypeError):
        shutil.rmtree(entry, ignore_errors=True)
        return None
