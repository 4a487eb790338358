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
