"""Reading a dataset folder: layout parsing, formats, masks, and every bad input with its message."""

import shutil

import cv2
import numpy as np
import pytest
from conftest import tree_state

from data_pipeline import DataError, check, load, scan


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def _rgb(h=40, w=40, value=(10, 200, 30)):
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = value  # RGB
    return img


def test_odd_class_names_formats_and_case(tmp_path):
    rgb = _rgb()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    _write(tmp_path / "Original" / "b class" / "x.JPG", bgr)
    _write(tmp_path / "Original" / "b class" / "y.Png", bgr)
    _write(tmp_path / "Original" / "Ärger" / "z.tif", bgr)
    _write(tmp_path / "Original" / "Ärger" / "w.bmp", bgr)
    _write(tmp_path / "Original" / "A" / "g.jpeg", cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))  # greyscale
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    _write(tmp_path / "Original" / "A" / "h.png", rgba)  # with alpha
    (tmp_path / "Original" / "A" / "notes.txt").write_text("not an image")
    index = scan(tmp_path)
    assert index.classes == ("A", "b class", "Ärger")  # sorted, kept as written
    assert index.counts() == {"A": 2, "b class": 2, "Ärger": 2}
    data = load(index, 32, cache_dir=tmp_path / "cache")
    assert data.images.shape == (6, 32, 32, 3) and data.images.dtype == np.uint8
    png = data.images[data.names.index("b class/y.Png")]
    assert np.abs(png.astype(int) - rgb[0, 0]).max() <= 1  # RGB order, not OpenCV's BGR
    assert data.images[data.names.index("A/h.png")].shape == (32, 32, 3)  # RGBA -> RGB
    grey = data.images[data.names.index("A/g.jpeg")]
    assert np.ptp(grey.astype(int), axis=-1).max() <= 1  # greyscale -> three equal channels


def test_masks_pair_by_file_name_and_threshold(synth_root, cache_dir):
    index = scan(synth_root, "segmentation")
    assert all(m.name == i.name and m.parent.name == i.parent.name for i, (m,) in zip(index.images, index.masks))
    data = load(index, 64, cache_dir=cache_dir)
    assert data.masks.shape == (len(index), 64, 64) and set(np.unique(data.masks)) <= {0, 1}
    assert data.masks.mean() > 0.01
    strict = load(index, 64, mask_rule="threshold:250", cache_dir=cache_dir)
    assert strict.masks.sum() < data.masks.sum()  # the threshold is a real parameter


def test_masks_resize_nearest_and_stay_binary(synth_root, cache_dir):
    data = load(scan(synth_root, "segmentation"), 48, cache_dir=cache_dir)
    assert data.masks.shape[1:] == (48, 48) and set(np.unique(data.masks)) == {0, 1}


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda r: shutil.rmtree(r / "Original"), "Original is missing"),
        (lambda r: [p.unlink() for p in (r / "Original" / "Pre").iterdir()], "holds no images"),
        (lambda r: [shutil.rmtree(r / "Original" / c) for c in ("Early", "Pre", "Pro")], "at least 2"),
    ],
    ids=["no-Original", "empty-class", "single-class"],
)
def test_bad_layouts_name_the_path(synth_root, tmp_path, breakage, message):
    root = shutil.copytree(synth_root, tmp_path / "copy")
    breakage(root)
    with pytest.raises(DataError, match=message) as err:
        scan(root)
    assert str(root) in str(err.value)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan(tmp_path / "nowhere")


def test_missing_mask_lists_the_expected_path(synth_root, tmp_path):
    root = shutil.copytree(synth_root, tmp_path / "copy")
    gone = sorted((root / "Segmented" / "Early").iterdir())[0]
    gone.unlink()
    with pytest.raises(DataError, match="image without a mask") as err:
        scan(root, "segmentation")
    assert str(gone) in str(err.value)
    assert len(scan(root, "classification")) == len(scan(synth_root))  # classification needs no masks


def test_mask_of_another_size(synth_root, tmp_path, cache_dir):
    root = shutil.copytree(synth_root, tmp_path / "copy")
    mask = sorted((root / "Segmented" / "Pro").iterdir())[0]
    _write(mask, np.zeros((10, 12), np.uint8))
    with pytest.raises(DataError, match="is 12×10 but its image"):
        load(scan(root, "segmentation"), 64, cache_dir=cache_dir)
    report = check(scan(root, "segmentation"))
    assert not report.ok and report.problems[0]["path"] == str(mask) and "12×10" in report.problems[0]["problem"]


def _corrupt(root):
    files = sorted((root / "Original" / "Benign").iterdir())
    files[0].write_bytes(files[0].read_bytes()[:200])  # truncated PNG
    files[1].write_bytes(b"this is not an image")
    return files[:2]


def test_bad_images_skipped_and_counted_or_fail(synth_root, tmp_path, cache_dir):
    root = shutil.copytree(synth_root, tmp_path / "copy")
    bad = _corrupt(root)
    before = tree_state(root)
    data = load(scan(root), 64, cache_dir=cache_dir)
    assert len(data.images) == len(scan(root)) - 2
    assert sorted(name for name, _ in data.skipped) == sorted(f"Benign/{p.name}" for p in bad)
    assert any("truncated PNG" in reason for _, reason in data.skipped)
    assert load(scan(root), 64, cache_dir=cache_dir).skipped == data.skipped  # also reported from the cache
    with pytest.raises(DataError, match="2 unreadable image") as err:
        load(scan(root), 64, on_bad_image="fail", use_cache=False)
    assert all(str(p) in str(err.value) for p in bad)
    assert tree_state(root) == before  # the user's folder is never written
    report = check(scan(root))
    assert len(report.problems) == 2


def test_truncated_jpeg_detected(tmp_path, cache_dir):
    for c in ("a", "b"):
        _write(tmp_path / "Original" / c / "ok.jpg", _rgb())
    path = tmp_path / "Original" / "a" / "cut.jpg"
    _write(path, np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-300])
    data = load(scan(tmp_path), 32, cache_dir=cache_dir)
    assert data.skipped == (("a/cut.jpg", f"{path}: truncated JPEG (no end-of-image marker)"),)


def _too_many_pixels(path):
    """A real, small PNG whose header says 50000x50000: more pixels than OpenCV decodes (CV_IO_MAX_IMAGE_PIXELS)."""
    import struct
    import zlib

    data = bytearray(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", 50_000, 50_000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # its CRC, so the header is valid
    path.write_bytes(bytes(data))


def test_an_image_opencv_refuses_is_a_bad_image(tmp_path, cache_dir):
    root = tmp_path / "data"
    _two_classes(root)
    huge = root / "a" / "huge.png"
    _too_many_pixels(huge)
    data = load(scan(root), 32, cache_dir=cache_dir)  # on_bad_image: skip
    assert len(data.images) == 4 and [name for name, _ in data.skipped] == ["a/huge.png"]
    assert data.skipped[0][1].startswith(f"{huge}: OpenCV refuses to decode it")
    with pytest.raises(DataError, match="1 unreadable image") as err:
        load(scan(root), 32, on_bad_image="fail", use_cache=False)
    assert str(huge) in str(err.value) and "\n" not in str(err.value)
    assert [p["path"] for p in check(scan(root)).problems] == [str(huge)]


def _two_classes(root, per_class=2):
    for cls, value in (("a", 60), ("b", 200)):
        for i in range(per_class):
            _write(root / cls / f"{cls}{i}.png", _rgb(value=(value, i * 40, 30)))


def test_symlinked_folders_and_files_count_once(tmp_path):
    store = tmp_path / "store"
    _two_classes(store)
    root = tmp_path / "data"
    root.mkdir()
    (root / "a").symlink_to(store / "a", target_is_directory=True)  # a linked class folder
    (root / "b").mkdir()
    for f in sorted((store / "b").iterdir()):
        (root / "b" / f.name).symlink_to(f)  # linked files, each once
    index = scan(root)
    assert index.counts() == {"a": 2, "b": 2}
    assert len({p.resolve() for p in index.images}) == len(index) == 4


@pytest.mark.parametrize(
    "link, target",
    [
        ("a/loop", ".."),  # the loop: 2 files had become 82 images
        ("a/self", "."),
        ("b/also_a", "../a"),  # one real folder under two classes
        ("b/b0_again.png", "../a/a0.png"),  # one real image under two classes
    ],
)
def test_a_second_path_to_one_folder_or_image_is_refused(tmp_path, link, target):
    _two_classes(tmp_path / "data")
    root = tmp_path / "data"
    (root / link).symlink_to(target)
    before = tree_state(tmp_path)
    with pytest.raises(DataError, match="reached through a symbolic link") as err:
        scan(root)
    message = str(err.value)
    assert "\n" not in message and str(root / link) in message
    assert tree_state(tmp_path) == before
