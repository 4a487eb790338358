"""Exact and near-duplicate images: the near-duplicate thresholds validated on real photographs and on different
images that look alike, the flat-image guard, and issue 27's scenario through `sweep data check` on real files,
with its cache."""

import itertools
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from data_pipeline import duplicates, scan, synth, synth_mri
from data_pipeline.duplicates import (
    FLAT_STD,
    PHASH_MAX,
    THUMB_MAX,
    Signatures,
    duplicate_clusters,
    find_clusters,
    pair_distances,
    signature,
)
from data_pipeline.groups import joined
from search.cli import main

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text", "hubble_deep_field")
PHOTOS += ("immunohistochemistry", "retina", "cell", "brick", "grass", "gravel", "clock", "microaneurysms")


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]


def _jpeg(rgb: np.ndarray, quality: int = 75) -> np.ndarray:
    _, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]


def _resized(rgb: np.ndarray, factor: float = 0.9) -> np.ndarray:
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA)


def _signed(images: list[np.ndarray]) -> Signatures:
    found = [signature(np.ascontiguousarray(a)) for a in images]
    return Signatures(
        tuple(f[0] for f in found), np.asarray([f[1] for f in found], np.uint64), np.stack([f[2] for f in found])
    )


def _distances(images: list[np.ndarray], pairs: list[tuple[int, int]]):
    sig = _signed(images)
    return pair_distances(sig.phash, sig.thumbs, np.asarray(pairs, np.intp).reshape(-1, 2))


def _all_pairs(n: int, offset: int = 0) -> list[tuple[int, int]]:
    return [(i + offset, j + offset) for i, j in itertools.combinations(range(n), 2)]


def test_near_threshold_separates_copies_from_different_images_that_look_alike():
    """Copies (JPEG quality 75, a 10% smaller resize; also half size then JPEG, JPEG quality 50) of real photographs
    are within both thresholds with margin; different photographs, crops and flips of other photographs, different
    faces, different synthetic smear cells and different synthetic brain slices are not near duplicates. The hash
    alone does not separate the brain slices (printed below): the thumbnail distance does."""
    photos = [_rgb(getattr(skimage.data, name)()) for name in PHOTOS]
    variants = (_jpeg, _resized, lambda p: _jpeg(_resized(p, 0.5)), lambda p: _jpeg(p, 50))  # and harsher ones
    copies = [v for p in photos for v in (p, *(f(p) for f in variants))]
    step = 1 + len(variants)
    same = [(step * k, step * k + v) for k in range(len(photos)) for v in range(1, step)]
    same_bits, same_mad = _distances(copies, same)

    others = [c for p in photos for c in (p[p.shape[0] // 10 :, p.shape[1] // 10 :], p[:, ::-1])]  # crops, flips
    n = len(photos)
    crossed = [(k, n + 2 * m + v) for k in range(n) for m in range(n) if m != k for v in (0, 1)]
    faces = [_rgb((f * 255).astype(np.uint8)) for f in skimage.data.lfw_subset()[:60]]  # 25×25 faces
    cells = [synth.render(c, i, 224) for c in synth.CLASSES for i in range(8)]
    slices = [_rgb(synth_mri.render(c, i, 224)[0]) for c in synth_mri.CLASSES for i in range(20)]
    families = {"photos": photos + others, "faces": faces, "cells": cells, "brain slices": slices}
    pairs = {"photos": _all_pairs(n) + crossed, **{k: _all_pairs(len(v)) for k, v in families.items() if k != "photos"}}
    print(f"same image: hash bits max {same_bits.max()}, thumbnail grey levels max {same_mad.max():.2f}")
    assert same_bits.max() <= PHASH_MAX // 2 and same_mad.max() <= THUMB_MAX / 2  # margin on the copies' side
    for name, images in families.items():
        bits, mad = _distances(images, pairs[name])
        hash_close = int((bits <= PHASH_MAX).sum())
        print(f"{name}: {len(bits)} different pairs: hash bits min {bits.min()} ({hash_close} within {PHASH_MAX}), "
              f"thumbnail grey levels min {mad.min():.2f}")  # fmt: skip
        assert mad.min() > 2 * THUMB_MAX, name  # margin on the different images' side
    assert _distances(slices, pairs["brain slices"])[0].min() <= PHASH_MAX  # why the thumbnail test is needed


def test_flat_images_are_matched_exactly_only():
    """Blank and near-black images (all but identical thumbnails, hashes of noise) never form a near cluster, even
    though both distances would call the blanks copies; the price: a JPEG re-encoding of a near-black image is not
    found either. Exact copies of them still are one cluster."""
    rng = np.random.default_rng(0)
    flat = [np.full((96, 96, 3), g, np.uint8) for g in range(4)]  # blank: black and near-black
    for _ in range(6):  # near-black with faint, different content
        dark = np.clip(rng.normal(3, 1.5, (96, 96)), 0, 255).astype(np.uint8)
        cv2.circle(dark, tuple(int(v) for v in rng.integers(15, 80, 2)), int(rng.integers(5, 20)), 8, -1)
        flat.append(_rgb(dark))
    flat += [_jpeg(a) for a in flat[4:]]
    sig = _signed(flat)
    assert sig.thumbs.std(axis=1).max() < FLAT_STD
    bits, mad = pair_distances(sig.phash, sig.thumbs, np.asarray(_all_pairs(4), np.intp))
    assert (bits <= PHASH_MAX).all() and (mad <= THUMB_MAX).all()  # the blanks: without the guard, one cluster
    assert find_clusters(sig) == []
    with_copy = _signed([flat[0], flat[4], flat[0].copy()])
    assert find_clusters(with_copy) == [("exact", (0, 2))]


def _issue_27_set(root):
    """Issue 27's set: class folders of real image files (synthetic smears written with OpenCV), 12 exact copies of
    Benign images filed under Early, and 12 JPEG re-encodings (quality 75) of Early images beside them."""
    for k, name in enumerate(("Benign", "Early")):
        (root / name).mkdir(parents=True)
        for i in range(16):
            cv2.imwrite(str(root / name / f"{i:02d}.png"), synth.render(synth.CLASSES[k], i, 128)[..., ::-1])
    exact, near = set(), set()
    for i in range(12):
        shutil.copyfile(root / "Benign" / f"{i:02d}.png", root / "Early" / f"copy-{i:02d}.png")
        exact.add((f"Benign/{i:02d}.png", f"Early/copy-{i:02d}.png"))
        image = cv2.imread(str(root / "Early" / f"{i:02d}.png"))
        cv2.imwrite(str(root / "Early" / f"re-{i:02d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 75])
        near.add((f"Early/{i:02d}.png", f"Early/re-{i:02d}.jpg"))
    return exact, near


def _check(capsys, root, *args):
    capsys.readouterr()
    code = main(["data", "check", str(root), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_issue_27_copies_across_classes_and_reencodings_found_by_data_check(tmp_path, capsys):
    root = tmp_path / "data"
    exact, near = _issue_27_set(root)
    code, out, _ = _check(capsys, root, "--json")
    report = json.loads(out)
    found = {(c["kind"], tuple(Path(f).relative_to(root).as_posix() for f in c["files"])) for c in report["duplicates"]}
    assert found == {("exact", pair) for pair in exact} | {("near", pair) for pair in near}
    assert len(report["label_conflicts"]) == 12
    assert all(c["classes"] == ["Benign", "Early"] and c["kind"] == "exact" for c in report["label_conflicts"])
    assert code == 1 and len(report["problems"]) == 12 and "filed under classes Benign and Early" in out
    assert any("12 cluster(s) of duplicate images within a class" in w["problem"] for w in report["warnings"])

    code, text, _ = _check(capsys, root)
    assert code == 1 and "duplicates: 24 cluster(s) of 48 images (12 exact, 12 near), 12 label conflict(s)" in text
    assert "exact Benign + Early LABEL CONFLICT: Benign/00.png, Early/copy-00.png" in text
    assert "near  Early: Early/00.png, Early/re-00.jpg" in text

    index = scan(root)
    ids = joined(None, [c.images for c in duplicate_clusters(index)], len(index))
    assert len(set(ids)) == len(index) - 24  # each cluster one group, every other image its own
    names = index.names
    assert all(ids[names.index(a)] == ids[names.index(b)] for a, b in exact | near)


def _decided_once(tmp_path):
    """The issue's set written and its duplicates decided once: (root, cache folder, clusters, the cache entry)."""
    root, cache = tmp_path / "data", tmp_path / "cache"
    _issue_27_set(root)
    first = duplicate_clusters(scan(root), cache_dir=cache)
    (entry,) = (cache / "duplicates").iterdir()
    return root, cache, first, entry


def test_decision_cached_by_content(tmp_path, monkeypatch):
    """The second check decodes nothing (the entry is read); changing one file's content decides again."""
    root, cache, first, entry = _decided_once(tmp_path)
    assert [c for c, _ in json.loads(entry.read_text())].count("exact") == 12

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cached decision")

    with monkeypatch.context() as m:
        m.setattr(duplicates, "signatures", no_decoding)
        assert duplicate_clusters(scan(root), cache_dir=cache) == first
    cv2.imwrite(str(root / "Early" / "re-00.jpg"), synth.render("Pro", 99, 128))  # no longer a copy
    again = duplicate_clusters(scan(root), cache_dir=cache)
    assert len(again) == 23 and len(list((cache / "duplicates").iterdir())) == 2


@pytest.mark.parametrize("damage", ["not json", '[["exact", [0, 9999]]]'])
def test_a_damaged_entry_is_decided_again(tmp_path, damage):
    root, cache, first, entry = _decided_once(tmp_path)
    entry.write_text(damage)
    assert duplicate_clusters(scan(root), cache_dir=cache) == first
    assert json.loads(entry.read_text()) == [[c.kind, list(c.images)] for c in first]


def _prepared(root, cache, **data):
    from data_pipeline import DataConfig, prepare

    cfg = DataConfig(data_dir=str(root), image_size=32, option=2, balance_to=None, **data)
    return prepare(cfg, cache_dir=cache)


def _split_of(prepared) -> dict[str, str]:
    return {prepared.names[i]: s for s in ("train", "val", "test") for i in prepared.split(s).sources.tolist()}


def test_sweeps_keep_copies_in_one_split_or_drop_them_and_refuse_a_label_conflict(tmp_path, capsys):
    """data.duplicates through the real pipeline on issue 27's set: group (the default) refuses images filed under
    two classes, in one line, writing nothing; drop leaves those out whole and keeps one image of every other
    cluster; group keeps each pair of copies in one split where ignore lets them cross, as the audit counts."""
    root, cache = tmp_path / "data", tmp_path / "cache"
    exact, near = _issue_27_set(root)
    before = sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*"))
    storage = tmp_path / "runs"
    code = main(["run", "classification", "--preset", "smoke", "--data-dir", str(root), "--storage", str(storage)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "filed under classes Benign, Early (and 11 more" in err, err
    assert "data.duplicates: drop" in err and not storage.exists()
    assert sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*")) == before

    dropped = _prepared(root, cache, duplicates="drop")
    gone = {name for name, _ in dropped.skipped}
    assert gone == {n for pair in exact for n in pair} | {b for _, b in near}  # conflicts whole, second copies
    assert dict(dropped.skipped)["Early/re-03.jpg"] == "a copy of Early/03.png (data.duplicates: drop)"
    assert not gone & set(dropped.names) and dropped.audit["duplicates_crossing"] == 0

    for _, b in exact:  # without the label conflicts: 12 pairs of near copies within Early
        (root / b).unlink()
    grouped, ignored = _prepared(root, cache), _prepared(root, cache, duplicates="ignore")
    where, loose = _split_of(grouped), _split_of(ignored)
    assert all(where[a] == where[b] for a, b in near) and grouped.audit["duplicates_crossing"] == 0
    crossing = sum(loose[a] != loose[b] for a, b in near)
    assert ignored.audit["duplicates_crossing"] == crossing > 0
