"""The decoded-array cache: hit, miss, invalidation by a changed file or parameter."""

import os
import shutil

import numpy as np

from data_pipeline import load, scan


def test_hit_returns_identical_arrays(synth_root, cache_dir):
    first = load(scan(synth_root, "segmentation"), 64, cache_dir=cache_dir)
    second = load(scan(synth_root, "segmentation"), 64, cache_dir=cache_dir)
    assert not first.from_cache and second.from_cache
    assert first.fingerprint == second.fingerprint
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.masks, second.masks)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.names == second.names


def test_parameters_are_part_of_the_key(synth_root, cache_dir):
    a = load(scan(synth_root), 64, cache_dir=cache_dir)
    b = load(scan(synth_root), 32, cache_dir=cache_dir)
    c = load(scan(synth_root, "segmentation"), 64, cache_dir=cache_dir)
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3
    assert not b.from_cache and not c.from_cache


def test_changed_added_or_removed_file_invalidates(synth_root, tmp_path, cache_dir):
    root = shutil.copytree(synth_root, tmp_path / "copy")
    base = load(scan(root), 64, cache_dir=cache_dir)
    victim = sorted((root / "Original" / "Pre").iterdir())[0]
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    touched = load(scan(root), 64, cache_dir=cache_dir)
    assert not touched.from_cache and touched.fingerprint != base.fingerprint
    shutil.copy(victim, victim.with_name("extra.png"))
    added = load(scan(root), 64, cache_dir=cache_dir)
    assert not added.from_cache and len(added.images) == len(base.images) + 1
    victim.with_name("extra.png").unlink()
    victim.unlink()
    removed = load(scan(root), 64, cache_dir=cache_dir)
    assert not removed.from_cache and len(removed.images) == len(base.images) - 1


def test_cache_lives_outside_the_data_folder(synth_root, cache_dir):
    load(scan(synth_root), 64, cache_dir=cache_dir)
    assert any((cache_dir / "decoded").iterdir())
    assert not any("decoded" in p.parts for p in synth_root.rglob("*"))


def test_layout_and_mask_rule_are_part_of_the_key(tmp_path, cache_dir):
    import cv2

    root = tmp_path / "d"
    rows = ["image,mask"]
    for i in range(3):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        img = np.full((16, 16, 3), 40 * i, np.uint8)
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 200
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), mask)
        rows.append(f"images/{i}.png,masks/{i}.png")
    (root / "manifest.csv").write_text("\n".join(rows))  # the same files, listed: a second layout
    folders = load(scan(root, "segmentation", "images_masks"), 16, cache_dir=cache_dir)
    listed = load(scan(root, "segmentation"), 16, cache_dir=cache_dir)
    assert (folders.layout, listed.layout) == ("images_masks", "csv")
    assert folders.fingerprint != listed.fingerprint and not listed.from_cache
    strict = load(scan(root, "segmentation"), 16, mask_rule="threshold:220", cache_dir=cache_dir)
    assert strict.fingerprint != listed.fingerprint and strict.masks.sum() == 0 < listed.masks.sum()
    again = load(scan(root, "segmentation"), 16, cache_dir=cache_dir)
    assert again.from_cache and again.mask_rule == listed.mask_rule == "nonzero"  # auto's decision, kept


def test_a_damaged_entry_is_rebuilt(synth_root, cache_dir):
    first = load(scan(synth_root, "segmentation"), 48, cache_dir=cache_dir)
    (entry,) = (cache_dir / "decoded").iterdir()
    for damage in ("images.npy", "meta.json", "masks.npy"):
        target = entry / damage
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])  # a truncated file (a full disk, a kill)
        again = load(scan(synth_root, "segmentation"), 48, cache_dir=cache_dir)
        assert not again.from_cache, damage  # decoded again from the images
        np.testing.assert_array_equal(again.images, first.images)
        np.testing.assert_array_equal(again.masks, first.masks)
        assert load(scan(synth_root, "segmentation"), 48, cache_dir=cache_dir).from_cache  # and written whole again
