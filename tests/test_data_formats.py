"""Real datasets as they ship: every layout and every mask encoding, made on disk (tiny images) and read through
`sweep data check --json`; every bad input with its message, exit code 2 and nothing written."""

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_sweep, tree_state

from search.cli import main

SIZE = 40


def _scene(seed: int, h: int = SIZE, w: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A textured RGB image with one or two dark-purple cells, and their true mask (bool)."""
    rng = np.random.default_rng(seed)
    img = (np.array([230, 205, 215]) + rng.normal(0, 6, (h, w, 3))).clip(0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(1 + seed % 2):
        r = int(rng.integers(min(h, w) // 8, min(h, w) // 4))
        cx, cy = int(rng.integers(r + 1, w - r - 1)), int(rng.integers(r + 1, h - r - 1))
        cv2.circle(mask, (cx, cy), r, 1, -1)
    cell = (np.array([90, 40, 120]) * rng.uniform(0.5, 1.1, (h, w, 1))).clip(25, 255).astype(np.uint8)
    img[mask > 0] = cell[mask > 0]
    return img, mask.astype(bool)


def _save(path: Path, arr: np.ndarray, quality: int = 90) -> Path:
    """Write RGB/RGBA/grey arrays (RGB order) with OpenCV; JPEG at the given quality."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    assert cv2.imwrite(str(path), arr, [cv2.IMWRITE_JPEG_QUALITY, quality] if jpeg else [])
    return path


def _binary(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def _on_black(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[..., None], img, 0).astype(np.uint8)


def _check(capsys, *args) -> tuple[int, dict | None, str]:
    """`sweep data check ARGS --json`: exit code, the JSON (None on an error) and stderr."""
    code = main(["data", "check", *map(str, args), "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith("{") else None), err


# ---- layouts -------------------------------------------------------------------------------------------------------


def _kaggle(root: Path, classes=("Benign", "Early"), n=4) -> float:
    """Original/<class>/x.jpg + Segmented/<class>/x.jpg, cells in colour on black (JPEG), like Kaggle ALL."""
    fractions = []
    for c in classes:
        for i in range(n):
            img, mask = _scene(i + 10 * len(c))
            sub = (c,) if c else ()
            _save(root.joinpath("Original", *sub, f"WBC-{c or 'x'}-{i:03d}.jpg"), img)
            _save(root.joinpath("Segmented", *sub, f"WBC-{c or 'x'}-{i:03d}.jpg"), _on_black(img, mask))
            fractions.append(mask.mean())
    return float(np.mean(fractions))


def _kvasir(root: Path) -> float:
    """images/x.jpg + masks/x.jpg (same name, 0/255 JPEG masks), like Kvasir-SEG."""
    fr = []
    for i in range(5):
        img, mask = _scene(i)
        _save(root / "images" / f"cju{i}qkwl.jpg", img)
        _save(root / "masks" / f"cju{i}qkwl.jpg", _binary(mask), quality=75)
        fr.append(mask.mean())
    return float(np.mean(fr))


def _isic(root: Path) -> float:
    """image/ISIC_x.jpg + mask/ISIC_x_segmentation.png; images of mixed sizes, like ISIC 2018."""
    fr = []
    for i in range(5):
        img, mask = _scene(i, SIZE + 8 * i, SIZE)
        _save(root / "Image" / f"ISIC_{i:07d}.jpg", img)
        _save(root / "Mask" / f"ISIC_{i:07d}_Segmentation.png", _binary(mask))
        fr.append(mask.mean())
    return float(np.mean(fr))


def _isic_2018(root: Path) -> float:
    """ISIC 2018 task 1 as it unzips: *_Input/ISIC_x.jpg + *_GroundTruth/ISIC_x_segmentation.png, plus text files."""
    fr = []
    for i in range(3):
        img, mask = _scene(i)
        _save(root / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{i:07d}.jpg", img)
        _save(root / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{i:07d}_segmentation.png", _binary(mask))
        fr.append(mask.mean())
    (root / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("CC-BY-NC")
    (root / "ISIC2018_Task1_Training_GroundTruth" / "ATTRIBUTION.txt").write_text("ISIC")
    return float(np.mean(fr))


def _imgs_labels(root: Path) -> float:
    """imgs/x.tif + labels/x-mask.png, masks 0/1 (look black)."""
    fr = []
    for i in range(4):
        img, mask = _scene(i)
        _save(root / "imgs" / f"scan {i}.tif", img)
        _save(root / "labels" / f"scan {i}-mask.png", mask.astype(np.uint8))
        fr.append(mask.mean())
    return float(np.mean(fr))


def _busi(root: Path) -> float:
    """<class>/name (k).png + name (k)_mask.png [+ _mask_1.png], masks in the same folders; normal: empty masks."""
    fr = []
    for k, c in enumerate(("benign", "malignant", "normal")):
        for i in range(3):
            img, mask = _scene(7 + 3 * k + i)  # a different scene in each class: the same one would be a label conflict
            if c == "normal":
                mask[:] = False
            stem = f"{c} ({i + 1})"
            _save(root / c / f"{stem}.png", cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))  # ultrasound: grey
            half = mask.copy()
            half[:, SIZE // 2 :] = False
            _save(root / c / f"{stem}_mask.png", _binary(half))
            if i == 0 and c != "normal":  # a second lesion: BUSI's _mask_1, merged with the first
                other = mask.copy()
                other[:, : SIZE // 2] = False
                _save(root / c / f"{stem}_mask_1.png", _binary(other))
                fr.append(mask.mean())
            else:
                fr.append(half.mean())
    return float(np.mean(fr))


def _lgg(root: Path) -> float:
    """<patient>/<patient>_k.tif + <patient>_k_mask.tif (LGG brain MRI); patient folders are the classes."""
    fr = []
    for n, p in enumerate(("TCGA_CS_4941_19960909", "TCGA_DU_5872_19950223")):
        for k in range(1, 4):
            img, mask = _scene(k + 3 * n)  # each patient's own slices: the same ones would be label conflicts
            _save(root / p / f"{p}_{k}.tif", img)
            _save(root / p / f"{p}_{k}_mask.tif", _binary(mask))
            fr.append(mask.mean())
    return float(np.mean(fr))


def _csv(root: Path) -> float:
    """manifest.csv with image,label,mask, relative paths into sub-folders (and a column in odd case/spacing)."""
    rows = ["Image, Label ,mask"]
    fr = []
    for i in range(4):
        img, mask = _scene(i)
        _save(root / "data" / "x" / f"{i}.png", img)
        _save(root / "data" / "y" / f"{i}.png", _binary(mask))
        rows.append(f"data/x/{i}.png,{'ab'[i % 2]},data/y/{i}.png")
        fr.append(mask.mean())
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return float(np.mean(fr))


LAYOUT_CASES = {
    # name: (builder, data path below root, layout, task, classes, counts, expected mask rule)
    "kaggle-all": (_kaggle, "", "original_segmented", "segmentation", ["Benign", "Early"], 8, "threshold:"),
    "one-class-folder": (
        lambda r: _kaggle(r, ("tile",), 5),
        "",
        "original_segmented",
        "segmentation",
        ["tile"],
        5,
        "threshold:",
    ),
    "no-class-folder": (lambda r: _kaggle(r, ("",), 5), "", "original_segmented", "segmentation", ["all"], 5, None),
    "kvasir": (_kvasir, "", "images_masks", "segmentation", ["all"], 5, "threshold"),
    "isic": (_isic, "", "images_masks", "segmentation", ["all"], 5, "nonzero"),
    "imgs-labels": (_imgs_labels, "", "images_masks", "segmentation", ["all"], 4, "nonzero"),
    "isic-2018-folders": (_isic_2018, "", "images_masks", "segmentation", ["all"], 3, "nonzero"),
    "busi": (_busi, "", "class_folders", "segmentation", ["benign", "malignant", "normal"], 9, "nonzero"),
    "lgg": (_lgg, "", "class_folders", "segmentation", ["TCGA_CS_4941_19960909", "TCGA_DU_5872_19950223"], 6, None),
    "csv-in-root": (_csv, "", "csv", "segmentation", ["a", "b"], 4, "nonzero"),
    "csv-file": (_csv, "manifest.csv", "csv", "segmentation", ["a", "b"], 4, "nonzero"),
}


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=list(LAYOUT_CASES))
def test_layout_detected_counted_and_masks_read(tmp_path, capsys, case):
    build, sub, layout, task, classes, total, rule = LAYOUT_CASES[case]
    root = tmp_path / "data"
    truth = build(root)
    before = tree_state(root)
    code, report, err = _check(capsys, root / sub)
    assert code == 0, err
    assert (report["layout"], report["task"], report["classes"]) == (layout, task, classes)
    assert report["counts"]["total"] == total and sum(report["counts"][c] for c in classes) == total
    used = report["mask_rule"]
    assert report["mask_rule_configured"] == "auto" and (rule is None or used.startswith(rule)), used
    fg = report["foreground_fraction"]
    assert fg["mean"] == pytest.approx(truth, abs=0.02)  # the masks the loader makes are the true ones
    assert fg["min"] <= fg["median"] <= fg["max"] and report["problems"] == []
    assert report["image_sizes"]["min"] and report["image_sizes"]["max"]
    assert tree_state(root) == before  # nothing under the user's folder is written


def test_csv_absolute_paths_and_classification_from_labels(tmp_path, capsys):
    elsewhere = tmp_path / "store"
    rows = ["image,label"]
    for i in range(4):
        rows.append(f"{_save(elsewhere / f'{i}.bmp', _scene(i)[0])},{['yes', 'no'][i % 2]}")
    csv = tmp_path / "lists" / "train.csv"
    csv.parent.mkdir()
    csv.write_text("\n".join(rows))
    code, report, err = _check(capsys, csv)
    assert code == 0, err
    assert (report["layout"], report["task"], report["classes"]) == ("csv", "classification", ["no", "yes"])
    assert report["mask_rule"] is None and report["foreground_fraction"] is None


def test_csv_paths_through_a_linked_folder_are_inside(tmp_path, capsys):
    store = tmp_path / "big-disk"
    for i in range(2):
        img, mask = _scene(i)
        _save(store / f"{i}.png", img)
        _save(store / f"{i}_mask.png", _binary(mask))
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "linked").symlink_to(store, target_is_directory=True)
    (tmp_path / "proj" / "manifest.csv").write_text(
        "image,mask\nlinked/0.png,linked/0_mask.png\n./linked/1.png,linked/1_mask.png\n"
    )
    code, report, err = _check(capsys, tmp_path / "proj")
    assert code == 0 and report["layout"] == "csv" and report["counts"]["total"] == 2, err


def test_keras_class_folders_odd_names_mixed_sizes_grey_and_warnings(tmp_path, capsys):
    root = tmp_path / "flowers"
    for i in range(3):  # odd class names; a file name containing "_mask" that is an image, not a mask
        _save(root / "with_mask" / f"with_mask_{i}.jpg", _scene(i)[0])
        _save(root / "Ärger class" / f"{i}.png", cv2.cvtColor(_scene(i + 3)[0], cv2.COLOR_RGB2GRAY))  # grey
        _save(root / "big" / "nested" / f"{i}.jpeg", _scene(i + 6, 64, 48)[0])  # Keras recurses into sub-folders
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._0.jpg").write_bytes(b"\0")
    code, report, err = _check(capsys, root)
    assert code == 0, err
    assert report["layout"] == "class_folders" and report["task"] == "classification"
    assert report["classes"] == ["big", "with_mask", "Ärger class"] and report["counts"]["total"] == 9
    assert (report["image_sizes"]["min"], report["image_sizes"]["max"]) == (f"{SIZE}x{SIZE}", "48x64")
    warned = [(w["path"], w["problem"]) for w in report["warnings"]]
    assert sum("fewer than 10" in p for _, p in warned) == 3
    assert any(w == str(root / "big" / "nested") and "every image size (48x64)" in p for w, p in warned)  # scanner
    assert any(w == str(root / "Ärger class") and "every channel count (1)" in p for w, p in warned)


# ---- mask encodings -----------------------------------------------------------------------------------------------


def _with_masks(root: Path, encode, ext="png", n=4, quality=90) -> float:
    fr = []
    for i in range(n):
        img, mask = _scene(i)
        _save(root / "images" / f"{i}.png", img)
        _save(root / "masks" / f"{i}_mask.{ext}", encode(img, mask, i), quality=quality)
        fr.append(mask.mean())
    return float(np.mean(fr))


def _label_image(img, mask, i):
    return (mask * (1 + i % 3)).astype(np.uint8)  # labels 1..3: every non-zero label is foreground


def _rgba_alpha(img, mask, i):
    out = np.full((*mask.shape, 4), 255, np.uint8)  # white everywhere, transparent background
    out[..., 3] = _binary(mask)
    return out


def _rgba_colour(img, mask, i):
    return np.dstack([_on_black(img, mask), np.full(mask.shape, 255, np.uint8)])


def _label_16bit(img, mask, i):
    return (mask * 1000).astype(np.uint16)


ENCODINGS = {
    # name: (encode, extension, JPEG quality, rule auto must choose)
    "0-255": (lambda img, m, i: _binary(m), "png", 90, "nonzero"),
    "0-1": (lambda img, m, i: m.astype(np.uint8), "png", 90, "nonzero"),
    "labels": (_label_image, "png", 90, "nonzero"),
    "labels-16bit": (_label_16bit, "png", 90, "nonzero"),
    "jpeg-noise": (lambda img, m, i: _binary(m), "jpg", 60, "threshold:"),
    "rgba-alpha": (_rgba_alpha, "png", 90, "nonzero"),
    "rgba-colour": (_rgba_colour, "png", 90, "nonzero"),
    "colour-on-black-png": (lambda img, m, i: _on_black(img, m), "png", 90, "nonzero"),
    "colour-on-black-jpeg": (lambda img, m, i: _on_black(img, m), "jpg", 75, "threshold:"),
}


@pytest.mark.parametrize("name", ENCODINGS, ids=list(ENCODINGS))
def test_mask_encoding_auto(tmp_path, capsys, name):
    encode, ext, quality, rule = ENCODINGS[name]
    truth = _with_masks(tmp_path / "d", encode, ext, quality=quality)
    code, report, err = _check(capsys, tmp_path / "d")
    assert code == 0, err
    assert report["mask_rule"].startswith(rule)
    assert report["foreground_fraction"]["mean"] == pytest.approx(truth, abs=0.01)
    assert report["foreground_fraction"]["empty"] == 0


def test_colour_on_black_keeps_dark_nuclei_that_grey_128_drops(tmp_path, capsys):
    truth = _with_masks(tmp_path / "d", lambda img, m, i: _on_black(img, m), "jpg", quality=75)
    _, auto, _ = _check(capsys, tmp_path / "d")
    code, grey, _ = _check(capsys, tmp_path / "d", "--mask-rule", "threshold:128")
    assert code == 0 and grey["mask_rule"] == grey["mask_rule_configured"] == "threshold:128"
    assert auto["foreground_fraction"]["mean"] == pytest.approx(truth, abs=0.01)
    assert grey["foreground_fraction"]["mean"] < 0.5 * truth  # the study's rule loses most of a purple cell


# ---- auto on masks it did not draw: real photographs thresholded into true masks ---------------------------------


@pytest.fixture(scope="module")
def real_masks() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Photographs bundled in scikit-image's wheel (no download): RGB image and true mask (bool), the bright side of
    Otsu's threshold (for the IHC slide, of its haematoxylin stain: the nuclei), one-pixel specks opened away as an
    annotator would not draw them."""
    from skimage import color, data, filters

    def truth(value):
        mask = (value > filters.threshold_otsu(value)).astype(np.uint8)
        return cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))) > 0

    ihc = data.immunohistochemistry()
    photos = {"coins": data.coins(), "camera": data.camera(), "astronaut": data.astronaut(), "cat": data.chelsea()}
    photos = {k: v if v.ndim == 3 else cv2.cvtColor(v, cv2.COLOR_GRAY2RGB) for k, v in photos.items()}
    out = {k: (v, truth(v.max(axis=2))) for k, v in photos.items()}
    out["ihc-nuclei"] = (ihc, truth(color.rgb2hed(ihc)[..., 0]))
    return out


def _labels(img, mask):
    return cv2.connectedComponents(mask.astype(np.uint8))[1].astype(np.uint16)  # one label per object, 16-bit


REAL_ENCODINGS = {
    # name: (encode(img, mask) -> mask array, extension, JPEG quality)
    "0-1-png": (lambda img, m: m.astype(np.uint8), "png", 0),
    "0-255-png": (lambda img, m: _binary(m), "png", 0),
    "grey-128-png": (lambda img, m: m.astype(np.uint8) * 128, "png", 0),
    "labels-png": (_labels, "png", 0),
    "colour-png": (_on_black, "png", 0),
    **{
        f"{name}-jpeg-q{q}": (encode, "jpg", q)
        for q in (50, 75, 95)
        for name, encode in (
            ("white", lambda img, m: _binary(m)),
            ("grey-128", lambda img, m: m.astype(np.uint8) * 128),
            ("colour", _on_black),
        )
    },
    "white-jpeg-q98": (lambda img, m: _binary(m), "jpg", 98),  # issue 24: so few levels that auto took it as exact
}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("name", REAL_ENCODINGS, ids=list(REAL_ENCODINGS))
def test_auto_reaches_the_true_masks_of_real_images(tmp_path, real_masks, name):
    """Each encoding as files on disk, the rule picked as the loader picks it (a sample of the dataset), every mask
    read with it: IoU >= 0.98 with the true mask on every image."""
    from data_pipeline import scan
    from data_pipeline.io import read_mask, resolve_mask_rule

    encode, ext, quality = REAL_ENCODINGS[name]
    for photo, (img, mask) in real_masks.items():
        _save(tmp_path / "images" / f"{photo}.png", img)
        _save(tmp_path / "masks" / f"{photo}.{ext}", encode(img, mask), quality)
    index = scan(tmp_path, "segmentation", "auto")
    rule = resolve_mask_rule(index, "auto")
    assert rule == "nonzero" if ext == "png" else rule.startswith("threshold:"), rule
    for image, masks in zip(index.images, index.masks, strict=True):
        truth = real_masks[image.stem][1]
        assert _iou(read_mask(masks, rule, truth.shape, image) > 0, truth) >= 0.98, (image.stem, rule)


def test_otsu_matches_scikit_image(real_masks):
    from skimage.filters import threshold_otsu

    from data_pipeline import masks

    for img, _ in real_masks.values():
        hist = masks.histogram(masks.intensity(img))
        assert masks._otsu(hist) == threshold_otsu(hist=(hist, np.arange(256)))


def test_data_check_shows_each_rules_foreground(tmp_path, capsys, real_masks):
    """White nuclei saved as JPEG (issue 24): auto's fraction is the true one, nonzero's is inflated by the ringing,
    threshold:128 and color_on_black agree with auto; the text report prints them on one line."""
    img, mask = real_masks["ihc-nuclei"]
    for i, quality in enumerate((60, 90, 98)):
        _save(tmp_path / "d" / "images" / f"{i}.png", img)
        _save(tmp_path / "d" / "masks" / f"{i}.jpg", _binary(mask), quality)
    code, report, err = _check(capsys, tmp_path / "d")
    assert code == 0, err
    sample = report["mask_sample"]
    fractions = sample["foreground_by_rule"]
    assert (sample["files"], sample["lossy"], sample["auto"]) == (3, True, report["mask_rule"])
    assert list(fractions) == [report["mask_rule"], "nonzero", "threshold:128", "color_on_black"]
    assert fractions[report["mask_rule"]] == pytest.approx(mask.mean(), abs=0.002)
    assert fractions["threshold:128"] == pytest.approx(mask.mean(), abs=0.002)
    assert fractions["color_on_black"] == pytest.approx(mask.mean(), abs=0.005)  # some q60 ringing is above 32
    assert fractions["nonzero"] > 1.05 * mask.mean()
    assert main(["data", "check", str(tmp_path / "d"), "--mask-rule", "nonzero"]) == 0
    text = capsys.readouterr().out
    assert f"foreground of 3 sampled mask files (JPEG) by rule: nonzero {fractions['nonzero']:.3f} (applied), " in text
    assert f"{report['mask_rule']} {fractions[report['mask_rule']]:.3f} (auto)" in text


@pytest.mark.parametrize(
    "fill, expected", [(0, "every mask is empty"), (255, "every mask is full")], ids=["empty", "full"]
)
def test_all_empty_or_full_masks_warned(tmp_path, capsys, fill, expected):
    _with_masks(tmp_path / "d", lambda img, m, i: np.full(m.shape, fill, np.uint8))
    code, report, _ = _check(capsys, tmp_path / "d")
    assert code == 0 and any(expected in w["problem"] for w in report["warnings"])


# ---- bad inputs: one clear message naming the path, exit code 2, nothing written -----------------------------------


def _pairs(root: Path, n=3):
    for i in range(n):
        img, mask = _scene(i)
        _save(root / "images" / f"{i}.png", img)
        _save(root / "masks" / f"{i}.png", _binary(mask))


def _missing_mask(root):
    _pairs(root)
    (root / "masks" / "1.png").unlink()
    return root, root / "images" / "1.png", "image without a mask"


def _orphan_mask(root):
    _pairs(root)
    _save(root / "masks" / "7_mask.png", np.zeros((SIZE, SIZE), np.uint8))
    return root, root / "masks" / "7_mask.png", "mask without an image"


def _duplicate_stem(root):
    _pairs(root)
    _save(root / "images" / "2.jpg", _scene(2)[0])
    return root, root / "images" / "2.png", "same stem"


def _csv_missing_file(root):
    _save(root / "a.png", _scene(0)[0])
    (root / "list.csv").write_text("image,label\na.png,x\nb.png,y\n")
    return root / "list.csv", root / "b.png", "row 3: image file does not exist"


def _csv_empty(root):
    root.mkdir(parents=True)
    (root / "manifest.csv").write_text("")
    return root, root / "manifest.csv", "is empty"


def _csv_header_only(root):
    root.mkdir(parents=True)
    (root / "manifest.csv").write_text("image,mask\n")
    return root, root / "manifest.csv", "no rows"


def _csv_escapes(root):
    _save(root.parent / "outside.png", _scene(0)[0])
    _save(root / "in.png", _scene(1)[0])
    (root / "m.csv").write_text("image,label\nin.png,a\n../outside.png,b\n")
    return root / "m.csv", root.parent / "outside.png", "resolves outside"


def _unknown_layout(root):
    (root / "docs").mkdir(parents=True)
    (root / "notes.txt").write_text("x")
    return root, root, "no dataset layout recognised"


BAD = {
    "image-without-mask": _missing_mask,
    "mask-without-image": _orphan_mask,
    "duplicate-stem": _duplicate_stem,
    "csv-missing-file": _csv_missing_file,
    "csv-empty": _csv_empty,
    "csv-header-only": _csv_header_only,
    "csv-path-outside": _csv_escapes,
    "unknown-layout": _unknown_layout,
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_named_exit_2_nothing_written(tmp_path, capsys, case):
    data, path, message = BAD[case](tmp_path / "user" / "data")
    before = tree_state(tmp_path)
    sheet = tmp_path / "out" / "sheet.png"
    code, report, err = _check(capsys, data, "--sheet", sheet)
    assert code == 2 and report is None
    assert err.startswith("error: ") and message in err and str(path) in err, err
    assert "Traceback" not in err
    assert tree_state(tmp_path) == before and not sheet.parent.exists()


def test_unknown_layout_lists_what_was_found_and_the_layouts(tmp_path, capsys):
    _unknown_layout(tmp_path / "d")
    code, _, err = _check(capsys, tmp_path / "d")
    assert code == 2 and "docs/" in err and "notes.txt" in err
    for name in ("csv", "original_segmented", "images_masks", "class_folders"):
        assert f"  {name}: " in err
    code, _, err = _check(capsys, tmp_path / "d", "--layout", "images_masks")
    assert code == 2 and "no images and masks folders" in err
    code, _, err = _check(capsys, tmp_path / "d", "--layout", "tiles")
    assert code == 2 and "'tiles' is not auto or one of" in err


def test_bad_mask_rule_refused(tmp_path, capsys):
    _pairs(tmp_path / "d")
    code, _, err = _check(capsys, tmp_path / "d", "--mask-rule", "threshold:300")
    assert code == 2 and "threshold:N must be an integer in [0, 254]" in err


# ---- the contact sheet ---------------------------------------------------------------------------------------------


def test_contact_sheet_outlines_masks_and_stays_out_of_the_data(tmp_path, capsys):
    root = tmp_path / "data"
    _busi(root)
    before = tree_state(root)
    sheet = tmp_path / "sheet.png"
    code, report, err = _check(capsys, root, "--sheet", sheet)
    assert code == 0 and report["layout"] == "class_folders"
    img = cv2.imread(str(sheet))
    assert img.shape[0] >= 3 * 112  # one row per class
    green = (img[..., 1] == 255) & (img[..., 0] == 0) & (img[..., 2] == 0)
    assert green[:112].sum() > 20 and green[2 * 114 :].sum() == 0  # outlines on benign; normal's masks are empty
    code, _, err = _check(capsys, root, "--sheet", root / "sheet.png")
    assert code == 2 and "never written" in err and tree_state(root) == before
    code, _, err = _check(capsys, root, "--sheet", tmp_path / "sheet.txt")
    assert code == 2 and "is a PNG file" in err and not (tmp_path / "sheet.txt").exists()


# ---- smoke sweeps on layouts without classes -----------------------------------------------------------------------


def _sweep_and_read(tmp_path, data_dir) -> tuple[pd.DataFrame, dict]:
    """`sweep run` of one tiny U-Net trial (1 epoch) on data_dir; its results table and sweep.json."""
    spec = {
        "task": "segmentation",
        "space": {"model": ["unet"], "lr": [0.01]},
        "train": {"batch_size": 4, "epochs": 1, "base_filters": 4},
        "data": {"image_size": 32, "balance_to": None},
        "scheduler": {"grace_period": 1, "reduction_factor": 2},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    proc = run_sweep(
        "run", tmp_path / "tiny.yaml", "--data-dir", data_dir, "--storage", tmp_path / "runs", "--name", "s"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / "runs" / "s"
    frame = pd.read_csv(exp / "results.csv")
    assert frame["status"].eq("completed").all() and frame["test_dice"].between(0, 1).all()
    return frame, json.loads((exp / "sweep.json").read_text())


def test_smoke_sweep_on_one_class_folder_segmentation(tmp_path):
    """The issue's report: Original/tile/*.jpg + Segmented/tile/*.jpg stopped with 'a classifier needs 2 classes'."""
    root = tmp_path / "nuclei"
    _kaggle(root, ("tile",), 12)
    before = tree_state(root)
    _, sweep = _sweep_and_read(tmp_path, root)
    data = sweep["data"]["2"]
    assert (data["classes"], data["layout"]) == (["tile"], "original_segmented")
    assert data["mask_rule"].startswith("threshold:")  # auto on JPEG masks
    assert sum(data["splits"][s]["n"] for s in ("train", "val", "test")) == 12
    assert tree_state(root) == before


def test_smoke_sweep_on_images_and_masks_folders(tmp_path):
    root = tmp_path / "kvasir"
    for i in range(12):
        img, mask = _scene(i)
        _save(root / "images" / f"{i}.jpg", img)
        _save(root / "masks" / f"{i}.jpg", _binary(mask), quality=75)
    before = tree_state(root)
    _, sweep = _sweep_and_read(tmp_path, root)
    data = sweep["data"]["2"]
    assert (data["classes"], data["layout"]) == (["all"], "images_masks")
    assert data["mask_rule"].startswith("threshold:") and sweep["study"]["data"]["mask_rule"] == "auto"
    assert tree_state(root) == before


def test_study_rejects_an_unknown_layout_or_mask_rule_at_load():
    from search.study.spec import SpecError, load_study

    with pytest.raises(SpecError) as err:
        load_study("segmentation", "smoke", {"data": {"layout": "tiles", "mask_rule": "threshold:999"}})
    assert "data.layout: 'tiles' must be one of auto, csv" in str(err.value)
    assert "data.mask_rule: 'threshold:999'" in str(err.value)
    study = load_study("segmentation", "smoke", {"data": {"mask_rule": "threshold:100", "layout": "images_masks"}})
    assert (study.data.mask_rule, study.data.layout) == ("threshold:100", "images_masks")


def test_sweeps_recorded_before_mask_rule_still_load():
    from search.study.spec import SpecError, load_study, study_from_record

    old = load_study("segmentation", "smoke").to_dict()
    del old["data"]["mask_rule"], old["data"]["layout"]
    old["data"]["mask_threshold"] = 128  # a sweep.json written before data.mask_rule existed
    old["data"]["online_augmentation"] = False  # and while data had this key (never read; train's is the one)
    study = study_from_record(old)
    assert (study.data.mask_rule, study.data.layout) == ("threshold:128", "auto")
    with pytest.raises(SpecError, match=r"data\.online_augmentation: unknown key"):  # a study file is told it is wrong
        load_study("segmentation", "smoke", {"data": {"online_augmentation": True}})


def test_exif_orientation_ignored_so_masks_line_up(tmp_path, capsys):
    from PIL import Image

    img, mask = _scene(3, 24, SIZE)  # 40 wide, 24 high
    (tmp_path / "d" / "images").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° to display": a phone photo
    Image.fromarray(img).save(tmp_path / "d" / "images" / "p.jpg", exif=exif)
    _save(tmp_path / "d" / "masks" / "p.png", _binary(mask))
    code, report, err = _check(capsys, tmp_path / "d")
    assert code == 0 and report["problems"] == [] and report["image_sizes"]["max"] == f"{SIZE}x24", err
    from data_pipeline import load, scan

    data = load(scan(tmp_path / "d", "segmentation"), 16, use_cache=False)
    assert data.masks.mean() == pytest.approx(mask.mean(), abs=0.05)
