"""The embedded synthetic dataset and the whole preparation (real files, real decoding, real augmentation)."""

import json

import numpy as np
import pytest

from data_pipeline import DataConfig, DataError, load, prepare, scan, synth
from data_pipeline.io import read_rgb


def test_layout_names_and_determinism(tmp_path):
    a = synth.write_dataset(tmp_path / "a", (2, 3, 2, 2), size=48, seed=1)
    b = synth.write_dataset(tmp_path / "b", (2, 3, 2, 2), size=48, seed=1)
    index = scan(a, "segmentation")
    assert index.classes == synth.CLASSES
    assert index.counts() == {"Benign": 2, "Early": 3, "Pre": 2, "Pro": 2}
    assert index.images[0].name == "WBC-Benign-001.png"
    assert (a / "Original" / "Early" / "WBC-Malignant-Early-003.png").is_file()
    for p in index.images + tuple(m for (m,) in index.masks):
        assert p.read_bytes() == (b / p.relative_to(a)).read_bytes()


def test_segmented_files_keep_cells_in_colour_and_auto_gives_back_the_exact_mask(synth_root, cache_dir):
    index = scan(synth_root, "segmentation")
    data = load(index, 64, cache_dir=cache_dir)
    assert data.mask_rule == "nonzero"  # auto, on lossless cells-in-colour-on-black files
    truth = np.stack([synth.segment(read_rgb(p))[0] for p in index.images])
    np.testing.assert_array_equal(data.masks, truth)
    seg = np.stack([read_rgb(m) for (m,) in index.masks])
    kept = seg[truth.astype(bool)]
    assert (kept.max(axis=1) > 0).all() and np.ptp(kept.astype(int), axis=1).mean() > 20  # in colour, never black
    grey = load(index, 64, mask_rule="threshold:128", cache_dir=cache_dir).masks
    assert grey.sum() < 0.9 * truth.sum()  # the old grey > 128 rule drops the dark nuclei


def test_classes_differ_in_cell_size():
    area = {c: np.mean([synth.segment(synth.render(c, i, 96))[0].mean() for i in range(12)]) for c in synth.CLASSES}
    assert area["Benign"] < area["Early"] < area["Pro"]  # the class signal is real (and overlapping)


def test_refuses_to_overwrite(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        synth.write_dataset(tmp_path / "x", (1, 1, 1, 1), size=32)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("protocol, leaks", [("leak_free", False), ("study", True)])
def test_prepare_end_to_end(synth_root, cache_dir, protocol, leaks):
    cfg = DataConfig(
        task="segmentation", data_dir=str(synth_root), image_size=32, option=1, protocol=protocol, balance_to=20, seed=4
    )
    data = prepare(cfg, cache_dir=cache_dir)
    assert data.train.images.shape[1:] == (32, 32, 3) and data.train.masks.shape[1:] == (32, 32)
    assert np.bincount(data.train.labels).tolist() == [14] * 4
    assert (sum(data.audit.values()) > 0) == leaks
    if protocol == "leak_free":
        assert not data.val.augmented.any() and not data.test.augmented.any()
    summary = json.loads(json.dumps(data.summary()))
    assert summary["leakage_audit"] == data.audit and summary["splits"]["train"]["n"] == 56
    again = prepare(cfg, cache_dir=cache_dir)
    np.testing.assert_array_equal(again.train.images, data.train.images)  # seeded: same images


def test_prepare_embedded_dataset_by_default(cache_dir):
    cfg = DataConfig(image_size=32, balance_to=None, synthetic_counts=(3, 4, 4, 3), synthetic_size=32)
    data = prepare(cfg, cache_dir=cache_dir)
    assert data.classes == synth.CLASSES and len(data.train) + len(data.val) + len(data.test) == 14


def test_invalid_settings_listed_together(cache_dir):
    cfg = DataConfig(option=3, protocol="x", image_size=8, data_dir="/no/such/dir")
    with pytest.raises(DataError) as err:
        prepare(cfg, cache_dir=cache_dir)
    for field in ("option:", "protocol:", "image_size:", "data_dir:"):
        assert field in str(err.value)
