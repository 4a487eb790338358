"""Exact and near-duplicate images of a dataset, as clusters: what ``sweep data check`` lists and what splits keep
together (``data.duplicates: group``: ``groups.joined`` makes each cluster one group, so a copy never lands in
training and its twin in test).

Exact: the same decoded pixels at the stored size (uint8 RGB, EXIF orientation ignored as everywhere else). A byte
copy, a PNG re-save, a lossless change of format, a grey image stored as RGB or a file with other metadata are the
same image; a resized or re-encoded JPEG copy is not exact, it is near.

Near: two images are near duplicates when both tests hold:
  * their 64-bit perceptual hashes (``imagehash.phash``: the sign of the low DCT frequencies of a 32×32 grey
    thumbnail against their median) differ in at most ``PHASH_MAX`` bits, and
  * their 32×32 grey thumbnails differ by at most ``THUMB_MAX`` grey levels on average.
The hash alone does not separate medical images that look alike: it ignores brightness and gain, and two different
synthetic brain slices differ in 2 bits of 64. The thumbnail test does: re-encodings and small resizes of a photograph
differ by at most 1.3 grey levels, different slices, cells, faces and photographs by 10 or more
(``tests/test_duplicates.py`` measures both). An image whose thumbnail is near-uniform (standard deviation below
``FLAT_STD`` grey levels: blank, near-black) is matched exactly only: its hash is noise and every such image would
be "near" every other.

Clusters are the connected components of the exact and near pairs. The decision is cached per dataset (cache kind
``duplicates``: one JSON file) keyed by the files' contents and the detector's settings, so a second check or sweep
reads the files (to hash them) but decodes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data_pipeline.cache import cache_folder, mark_used
from data_pipeline.errors import DataError
from data_pipeline.files import write_file
from data_pipeline.groups import joined
from data_pipeline.io import read_rgb
from data_pipeline.layout import DatasetIndex

PHASH_MAX = 10  # bits of 64; same image: at most 4 measured
THUMB = 32  # thumbnail side (pixels)
THUMB_MAX = 4.0  # mean absolute grey difference of the thumbnails; same image: at most 1.3 measured, different: 10+
FLAT_STD = 8.0  # thumbnails flatter than this (grey levels) are matched exactly only
_VERSION = 1  # of the detector: part of the cache key
_BLOCK = 256  # rows of the pairwise hash comparison at a time (256 × 3,256 distances: a few MB)


@dataclass(frozen=True)
class Cluster:
    """Images that are copies of one another: indices into the dataset (ascending), their names and classes."""

    images: tuple[int, ...]
    names: tuple[str, ...]
    kind: str  # "exact" (all the same pixels) or "near" (some only look the same)
    classes: tuple[str, ...]  # the classes its images are filed under, sorted

    @property
    def label_conflict(self) -> bool:
        """The same image filed under two or more classes."""
        return len(self.classes) > 1


@dataclass(frozen=True)
class Signatures:
    """What the detector knows of each image; ``pixels`` is None where the file could not be decoded."""

    pixels: tuple[str | None, ...]  # hash of the decoded pixels and their shape
    phash: np.ndarray  # (N,) uint64
    thumbs: np.ndarray  # (N, THUMB * THUMB) float32 grey levels


def signature(rgb: np.ndarray) -> tuple[str, int, np.ndarray]:
    """One decoded image's (pixel hash, 64-bit perceptual hash, grey thumbnail)."""
    import imagehash
    from PIL import Image

    pixels = hashlib.sha256(f"{rgb.shape}".encode() + np.ascontiguousarray(rgb).tobytes()).hexdigest()
    bits = imagehash.phash(Image.fromarray(rgb)).hash.ravel()
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    thumb = cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    return pixels, int(np.packbits(bits).view(">u8")[0]), thumb


def signatures(index: DatasetIndex, workers: int | None = None) -> Signatures:
    """Decode every image of ``index`` once and sign it (undecodable ones: no signature)."""

    def one(path: Path):
        try:
            return signature(read_rgb(path))
        except DataError:  # reported by the check and the loader; it cannot be anyone's duplicate
            return None, 0, np.zeros(THUMB * THUMB, np.float32)

    with ThreadPoolExecutor(max_workers=workers or min(32, (os.cpu_count() or 1) + 2)) as pool:
        found = list(pool.map(one, index.images))
    return Signatures(
        pixels=tuple(f[0] for f in found),
        phash=np.asarray([f[1] for f in found], np.uint64),
        thumbs=np.stack([f[2] for f in found]) if found else np.zeros((0, THUMB * THUMB), np.float32),
    )


def pair_distances(phash: np.ndarray, thumbs: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each pair (row of ``pairs``): the bits in which the perceptual hashes differ, and the mean absolute
    difference of the thumbnails in grey levels."""
    bits = np.bitwise_count(phash[pairs[:, 0]] ^ phash[pairs[:, 1]])
    return bits, np.abs(thumbs[pairs[:, 0]] - thumbs[pairs[:, 1]]).mean(axis=1)


def near_pairs(phash: np.ndarray, thumbs: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Pairs (i < j) of near duplicates among the ``usable`` images, shape (P, 2): hashes within ``PHASH_MAX``
    bits (all pairs, XOR and popcount on uint64, a block of rows at a time), then thumbnails within ``THUMB_MAX``."""
    ok = np.flatnonzero(usable)
    h = phash[ok]
    found = [np.zeros((0, 2), np.intp)]
    for start in range(0, len(ok), _BLOCK):
        i, j = np.nonzero(np.bitwise_count(h[start : start + _BLOCK, None] ^ h[None, :]) <= PHASH_MAX)
        i += start
        found.append(np.stack([i[i < j], j[i < j]], 1))
    pairs = ok[np.concatenate(found)]
    return pairs[pair_distances(phash, thumbs, pairs)[1] <= THUMB_MAX]


def find_clusters(sig: Signatures) -> list[tuple[str, tuple[int, ...]]]:
    """(kind, image indices) of every cluster of two or more images (pure): connected components of the exact
    pairs (same pixel hash) and the near pairs; "exact" when all of a cluster's images have the same pixels."""
    n = len(sig.pixels)
    decoded = np.asarray([p is not None for p in sig.pixels], bool)
    usable = decoded & (sig.thumbs.std(axis=1) >= FLAT_STD)
    first: dict[str, int] = {}
    exact = [(first.setdefault(p, i), i) for i, p in enumerate(sig.pixels) if p is not None]
    exact = [pair for pair in exact if pair[0] != pair[1]]
    edges = np.concatenate([np.asarray(exact, np.intp).reshape(-1, 2), near_pairs(sig.phash, sig.thumbs, usable)])
    component = joined(None, edges.tolist(), n)  # each pair a cluster of two: the components of all pairs
    if component is None:  # no pair at all
        return []
    members: dict[int, list[int]] = {}
    for i in np.flatnonzero(decoded):
        members.setdefault(int(component[i]), []).append(int(i))
    out = []
    for images in members.values():
        if len(images) > 1:
            kind = "exact" if len({sig.pixels[i] for i in images}) == 1 else "near"
            out.append((kind, tuple(images)))
    return sorted(out, key=lambda c: c[1])


# ---- the cached decision ---------------------------------------------------------------------------------------------


def _key(index: DatasetIndex) -> str:
    """The detector's settings and every image file's content, in index order."""
    settings = {"v": _VERSION, "phash_max": PHASH_MAX, "thumb": THUMB, "thumb_max": THUMB_MAX, "flat_std": FLAT_STD}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in index.images:
        try:
            with path.open("rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        except OSError:  # unreadable: reported elsewhere; its absence is part of the key
            h.update(b"\0unreadable")
    return h.hexdigest()[:24]


def duplicate_clusters(
    index: DatasetIndex, *, cache_dir: str | Path | None = None, use_cache: bool = True, workers: int | None = None
) -> list[Cluster]:
    """The clusters of exact and near-duplicate images of ``index`` (each of two or more images, in index order),
    decided once per dataset content and cached. Images in no cluster have no copy."""
    entry = cache_folder("duplicates", cache_dir) / f"{_key(index)}.json" if use_cache else None
    found = _read(entry, len(index)) if entry is not None and entry.is_file() else None
    if found is None:
        found = find_clusters(signatures(index, workers))
        if entry is not None:
            with contextlib.suppress(DataError):  # a full or read-only cache: the decision is in memory
                write_file(entry, json.dumps([[kind, list(images)] for kind, images in found]).encode())
    else:
        mark_used(entry)
    names = index.names or tuple(str(p) for p in index.images)
    return [
        Cluster(
            images=images,
            names=tuple(names[i] for i in images),
            kind=kind,
            classes=tuple(sorted({index.classes[index.labels[i]] for i in images})),
        )
        for kind, images in found
    ]


def _read(entry: Path, n: int) -> list[tuple[str, tuple[int, ...]]] | None:
    """The cached clusters, or None when the entry is damaged (then it is removed and decided again)."""
    try:
        found = [(kind, tuple(int(i) for i in images)) for kind, images in json.loads(entry.read_text())]
        if any(kind not in ("exact", "near") or not all(0 <= i < n for i in images) for kind, images in found):
            raise ValueError("not this dataset's clusters")
        return found
    except (OSError, ValueError, TypeError):
        entry.unlink(missing_ok=True)
        return None
