"""Decode images and masks with OpenCV, in parallel, with an on-disk cache of the decoded arrays.

The cache key is a fingerprint of the file list, sizes, modification times and every preprocessing parameter, so
a changed, added or removed file (or another image size or mask threshold) is a cache miss. Cache entries live
under the cache folder (``$SWEEP_CACHE_DIR`` or ``~/.cache/leukemia-sweep``), never in the user's data folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.layout import DatasetIndex

ON_BAD_IMAGE = ("skip", "fail")
_CACHE_VERSION = 2


class BadImageError(DataError):
    """One file that cannot be decoded: unreadable, truncated or not an image."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("SWEEP_CACHE_DIR", Path.home() / ".cache" / "leukemia-sweep"))


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadImageError(f"{path}: cannot be read ({exc.strerror})") from exc
    _check_complete(data, path, path.suffix.lower())
    return data


def _check_complete(data: bytes, where: object, suffix: str) -> None:
    if not data:
        raise BadImageError(f"{where}: empty file")
    # OpenCV decodes a truncated JPEG or PNG into a partly grey image with only a warning: check the end markers.
    if suffix in (".jpg", ".jpeg") and data.rfind(b"\xff\xd9", max(0, len(data) - 1024)) < 0:
        raise BadImageError(f"{where}: truncated JPEG (no end-of-image marker)")
    if suffix == ".png" and b"IEND" not in data[-32:]:
        raise BadImageError(f"{where}: truncated PNG (no IEND chunk)")


def _decode_bytes(data: bytes, flags: int, where: object) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise BadImageError(f"{where}: not a decodable image")
    return img


def _decode(path: Path, flags: int) -> np.ndarray:
    return _decode_bytes(_read_bytes(path), flags, path)


def decode_rgb(data: bytes, where: str) -> np.ndarray:
    """An image held in memory (an upload) as uint8 RGB, checked as files on disk are; having no trustworthy file
    name, its kind is read from its first bytes. ``where`` names it in errors."""
    suffix = ".jpg" if data[:3] == b"\xff\xd8\xff" else ".png" if data[:8] == b"\x89PNG\r\n\x1a\n" else ""
    _check_complete(data, where, suffix)
    return cv2.cvtColor(_decode_bytes(data, cv2.IMREAD_COLOR, where), cv2.COLOR_BGR2RGB)


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
    """An image as uint8 RGB (grey, RGBA and 16-bit files converted), resized to size×size when given."""
    img = cv2.cvtColor(_decode(Path(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return img if size is None else resize(img, size)


def mask_from_segmented(gray: np.ndarray, threshold: int) -> np.ndarray:
    """The study's binary mask: grey level > threshold -> 1, else 0 (uint8)."""
    return (gray > threshold).astype(np.uint8)


def _read_pair(image: Path, mask: Path | None, size: int, threshold: int) -> tuple[np.ndarray, np.ndarray | None]:
    rgb = cv2.cvtColor(_decode(image, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if mask is None:
        return resize(rgb, size), None
    gray = _decode(mask, cv2.IMREAD_GRAYSCALE)
    if gray.shape[:2] != rgb.shape[:2]:
        raise DataError(
            f"mask {mask} is {gray.shape[1]}×{gray.shape[0]} but its image {image} is "
            f"{rgb.shape[1]}×{rgb.shape[0]}; a mask must match its image pixel for pixel. Fix or remove the pair."
        )
    return resize(rgb, size), resize(mask_from_segmented(gray, threshold), size, nearest=True)


@dataclass(frozen=True)
class LoadedData:
    """Decoded arrays of every usable image, in index order, plus what was skipped and why."""

    classes: tuple[str, ...]
    images: np.ndarray  # (N, S, S, 3) uint8 RGB
    labels: np.ndarray  # (N,) int32
    masks: np.ndarray | None  # (N, S, S) uint8 in {0, 1}
    names: tuple[str, ...]  # "class/file" relative to Original/
    skipped: tuple[tuple[str, str], ...]  # (name, reason)
    fingerprint: str
    from_cache: bool = False


def fingerprint(index: DatasetIndex, **params: object) -> str:
    """A hash of the file list, sizes, mtimes (images and masks) and the preprocessing parameters."""
    h = hashlib.sha256(json.dumps({"v": _CACHE_VERSION, "classes": index.classes, **params}, sort_keys=True).encode())
    for path in index.images + (index.masks or ()):
        st = path.stat()
        h.update(f"{path.relative_to(index.root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def load(
    index: DatasetIndex,
    image_size: int,
    *,
    mask_threshold: int = 128,
    on_bad_image: str = "skip",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    workers: int | None = None,
) -> LoadedData:
    """Decode every image of ``index`` at image_size×image_size (and its mask), through the on-disk cache.

    on_bad_image: "skip" leaves unreadable or truncated files out and lists them in ``skipped``; "fail" raises a
    DataError naming every one of them.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise DataError(f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, not {on_bad_image!r}")
    if not 0 <= mask_threshold < 255:
        raise DataError(f"mask_threshold must be in [0, 254], not {mask_threshold}")
    fp = fingerprint(index, size=image_size, threshold=mask_threshold, masks=index.masks is not None)
    entry = Path(cache_dir or default_cache_dir()) / "decoded" / fp
    if use_cache and (entry / "meta.json").is_file():
        return _read_cache(entry, index, fp)
    data = _decode_all(index, image_size, mask_threshold, on_bad_image, fp, workers)
    if use_cache:
        _write_cache(entry, data)
    return data


def _decode_all(index, size, threshold, on_bad_image, fp, workers) -> LoadedData:
    originals = index.root / "Original"
    masks = index.masks or (None,) * len(index)

    def work(i: int):
        try:
            return _read_pair(index.images[i], masks[i], size, threshold)
        except BadImageError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=workers or min(32, (os.cpu_count() or 1) + 2)) as pool:
        results = list(pool.map(work, range(len(index))))
    bad = [(i, r) for i, r in enumerate(results) if isinstance(r, BadImageError)]
    if bad and on_bad_image == "fail":
        listed = "\n  ".join(str(r) for _, r in bad[:10])
        raise DataError(
            f"{len(bad)} unreadable image(s):\n  {listed}\n"
            "Replace or delete them, or set on_bad_image: skip to leave them out (they are counted and listed)."
        )
    keep = [i for i, r in enumerate(results) if not isinstance(r, BadImageError)]
    if len(keep) == 0:
        raise DataError(f"none of the {len(index)} images under {originals} could be decoded")
    names = tuple(str(p.relative_to(originals)) for p in index.images)
    return LoadedData(
        classes=index.classes,
        images=np.stack([results[i][0] for i in keep]),
        labels=np.asarray([index.labels[i] for i in keep], dtype=np.int32),
        masks=np.stack([results[i][1] for i in keep]) if index.masks else None,
        names=tuple(names[i] for i in keep),
        skipped=tuple((names[i], str(r)) for i, r in bad),
        fingerprint=fp,
    )


def _write_cache(entry: Path, data: LoadedData) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".tmp-"))
    try:
        np.save(tmp / "images.npy", data.images)
        np.save(tmp / "labels.npy", data.labels)
        if data.masks is not None:  # binary masks stored as bits: 8x less to read back
            np.save(tmp / "masks.npy", np.packbits(data.masks, axis=-1))
        meta = {
            "classes": data.classes,
            "names": data.names,
            "skipped": data.skipped,
            "mask_width": None if data.masks is None else data.masks.shape[-1],
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, entry)  # atomic: a reader sees a whole entry or none
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race, or the disk is full: not fatal


def _read_cache(entry: Path, index: DatasetIndex, fp: str) -> LoadedData:
    meta = json.loads((entry / "meta.json").read_text())
    masks = None
    if (entry / "masks.npy").is_file():
        masks = np.unpackbits(np.load(entry / "masks.npy"), axis=-1, count=meta["mask_width"])
    return LoadedData(
        classes=tuple(meta["classes"]),
        images=np.load(entry / "images.npy"),
        labels=np.load(entry / "labels.npy"),
        masks=masks,
        names=tuple(meta["names"]),
        skipped=tuple(tuple(s) for s in meta["skipped"]),
        fingerprint=fp,
        from_cache=True,
    )


@dataclass(frozen=True)
class CheckReport:
    """What ``sweep data check`` prints: counts, original sizes and every problem found."""

    counts: dict[str, int]
    sizes: dict[str, int]  # "WxH" -> number of images
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check(index: DatasetIndex, workers: int | None = None) -> CheckReport:
    """Decode every image (and mask) once, without the cache, and report sizes and problems."""
    masks = index.masks or (None,) * len(index)

    def work(i: int) -> tuple[str | None, str | None]:
        try:
            img = _decode(index.images[i], cv2.IMREAD_COLOR)
            if masks[i] is not None:
                gray = _decode(masks[i], cv2.IMREAD_GRAYSCALE)
                if gray.shape[:2] != img.shape[:2]:
                    return None, (
                        f"mask {masks[i]} is {gray.shape[1]}x{gray.shape[0]}, "
                        f"its image is {img.shape[1]}x{img.shape[0]}"
                    )
            return f"{img.shape[1]}x{img.shape[0]}", None
        except BadImageError as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max_workers=workers or min(32, (os.cpu_count() or 1) + 2)) as pool:
        results = list(pool.map(work, range(len(index))))
    sizes: dict[str, int] = {}
    for size, _ in results:
        if size is not None:
            sizes[size] = sizes.get(size, 0) + 1
    return CheckReport(index.counts(), sizes, tuple(p for _, p in results if p is not None))
