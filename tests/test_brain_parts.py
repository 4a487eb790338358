"""Issue 18's building blocks on arrays and tiny images: preprocessing steps, the synthetic brain-MRI set,
segmentation and binary metrics, classical baselines, Grad-CAM."""

import re

import cv2
import numpy as np
import pytest
from conftest import tree_state

from data_pipeline import DataConfig, load, prepare, scan, synth_mri
from data_pipeline import preprocess as pp

# ---------------------------------------------------------------------------------------------------------------
# preprocessing steps
# ---------------------------------------------------------------------------------------------------------------


def _disc_image(size=96, box=(20, 30, 60, 70), value=180):
    """Black image with one bright rectangle filling ``box`` (x0, y0, x1, y1, exclusive) and a 2-pixel speck."""
    img = np.zeros((size, size, 3), np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = value
    img[90:92, 5:7] = value  # a speck: not the largest contour
    return img


def test_crop_hard_keeps_the_largest_object_with_padding_and_cuts_the_mask_alike():
    img = _disc_image()
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[45:50, 35:40] = 1
    assert pp.bounding_box(img, "hard", padding=0.0) == (20, 30, 60, 70)
    x0, y0, x1, y1 = pp.bounding_box(img, "hard", padding=0.1)
    assert (x0, y0, x1, y1) == (16, 26, 64, 74)  # 10% of the 40-pixel side on each edge
    out, cut = pp.crop(img, mask, mode="hard", padding=0.1)
    assert out.shape == (48, 48, 3) and cut.shape == (48, 48)
    np.testing.assert_array_equal(out, img[26:74, 16:64])
    np.testing.assert_array_equal(np.argwhere(cut), np.argwhere(mask) - [26, 16])  # the mask moved with its image
    blank = np.zeros((40, 40, 3), np.uint8)
    assert pp.crop(blank)[0] is blank  # nothing found: unchanged


def test_crop_soft_finds_an_object_under_uneven_lighting_where_otsu_does_not():
    size = 128
    ramp = np.tile(np.linspace(0, 170, size, dtype=np.float32), (size, 1))  # light rising to the right
    obj = np.zeros((size, size), np.uint8)
    cv2.circle(obj, (30, 64), 18, 1, -1)
    grey = np.clip(ramp + 60 * obj, 0, 255).astype(np.uint8)
    img = np.repeat(grey[..., None], 3, axis=2)
    truth = (12, 46, 49, 83)
    soft = pp.bounding_box(img, "soft", padding=0.0)
    hard = pp.bounding_box(img, "hard", padding=0.0)
    assert np.abs(np.subtract(soft, truth)).max() <= 3, soft
    assert np.abs(np.subtract(hard, truth)).max() > 20, hard  # Otsu takes the bright half of the ramp


def test_clean_background_blackens_white_backgrounds_and_frames_but_not_bright_tissue():
    img, _ = synth_mri.render("yes", 0, 96)
    head = img > 0
    rgb = np.repeat(img[..., None], 3, axis=2)
    white = rgb.copy()
    white[~head] = 250
    white[40:44, 40:44] = 250  # bright tissue inside the head: must stay
    out, _ = pp.clean_background(white)
    outside = ~cv2.dilate(head.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert (out[outside] == 0).all()
    np.testing.assert_array_equal(out[40:44, 40:44], 250)
    framed = rgb.copy()
    framed[:3], framed[-3:], framed[:, :3], framed[:, -3:] = 245, 245, 245, 245
    out, _ = pp.clean_background(framed)
    assert out[:4].max() == 0 and out[:, -4:].max() == 0
    np.testing.assert_array_equal(out[10:-10, 10:-10], rgb[10:-10, 10:-10])  # the scan itself untouched


def _detail_energy(img: np.ndarray) -> float:
    grey = img[..., 0].astype(np.float32)
    return float(np.mean((grey - cv2.GaussianBlur(grey, (0, 0), 2)) ** 2))


def test_musica_is_the_identity_at_amplification_1_and_amplifies_details_above():
    rng = np.random.default_rng(0)
    grey, _ = synth_mri.render("yes", 3, 96)
    img = np.repeat(grey[..., None], 3, axis=2)
    colour = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)  # odd sizes, colour
    for x in (img, colour):
        np.testing.assert_array_equal(pp.musica(x, amplification=1.0)[0], x)
        np.testing.assert_array_equal(pp.musica(x, amplification=[1, 1, 1], levels=3)[0], x)
    energies = [_detail_energy(pp.musica(img, amplification=a)[0]) for a in (1.0, 1.5, 2.5)]
    assert energies[0] < energies[1] < energies[2], energies
    out = pp.musica(img, amplification=3.0, p=0.5)[0]
    assert out.min() >= img.min() and out.max() <= img.max()  # the input's range kept
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()  # grey stays grey
    pyramid = pp.laplacian_pyramid(grey, 4)
    np.testing.assert_allclose(pp.reconstruct(pyramid), grey, atol=1e-3)
    assert len(pyramid) == 5 and pyramid[-1].shape == (6, 6)


def test_grayscale_repeats_the_luminance():
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 200
    out, _ = pp.grayscale(img)
    assert out.shape == (4, 4, 3) and (out == round(0.299 * 200)).all()


@pytest.mark.parametrize(
    "steps, message",
    [
        ("crop", r"preprocess: 'crop' must be a list of texts or mappings"),
        (["blur"], r"preprocess\[0\]: 'blur' is not one of crop, clean_background, musica, grayscale"),
        ([{"crop": {"mode": "medium"}}], r"preprocess\[0\].crop.mode: 'medium' must be one of hard, soft"),
        (["crop", {"musica": {"alpha": 2}}], r"preprocess\[1\].musica.alpha: unknown parameter; allowed: levels"),
        ([{"musica": {"amplification": 0.5}}], "must be a number >= 1"),
        ([{"musica": {"levels": 2, "amplification": [2, 2, 2]}}], "3 values for 2 levels"),
        ([{"crop": {"padding": 0.1}, "musica": {}}], r"must be a step name or \{name: \{param: value\}\}"),
    ],
)
def test_bad_steps_are_named_with_their_allowed_values(steps, message):
    problems = DataConfig(preprocess=steps).problems()
    assert len(problems) == 1 and re.search(message, problems[0]), problems


def test_resolve_writes_every_default_out():
    steps = pp.resolve(["crop", {"musica": {"levels": 3}}])
    assert steps == (
        {"crop": {"mode": "hard", "padding": 0.05}},
        {"musica": {"levels": 3, "amplification": 1.5, "p": 0.7}},
    )
    assert pp.resolve(steps) == steps
    assert DataConfig(preprocess=["crop"]).preprocess == ("crop",)  # a YAML list kept as a tuple


# ---------------------------------------------------------------------------------------------------------------
# the synthetic MRI set, and preprocessing where images are decoded
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mri_root(tmp_path_factory):
    return synth_mri.write_dataset(tmp_path_factory.mktemp("mri") / "brain", (6, 8), size=64, seed=2)


def test_synthetic_mri_layout_classes_and_exact_masks(mri_root, tmp_path):
    index = scan(mri_root, "classification")
    assert index.layout == "class_folders" and index.classes == ("no", "yes")
    assert index.counts() == {"no": 6, "yes": 8} and index.images[0].name == "N1.png"
    seg = scan(mri_root, "segmentation")
    assert len(seg) == 14 and all(m[0].name == f"{i.stem}_mask.png" for i, m in zip(seg.images, seg.masks))
    again = synth_mri.write_dataset(tmp_path / "again", (6, 8), size=64, seed=2)
    for p in sorted(mri_root.rglob("*.png")):
        assert p.read_bytes() == (again / p.relative_to(mri_root)).read_bytes()  # deterministic
    image, mask = synth_mri.render("yes", 1, 64, seed=2)
    np.testing.assert_array_equal(cv2.imread(str(mri_root / "yes" / "Y2_mask.png"), 0), mask * 255)
    np.testing.assert_array_equal(cv2.imread(str(mri_root / "yes" / "Y2.png"), 0), image)
    inside, around = image[mask > 0].mean(), image[cv2.dilate(mask, np.ones((7, 7), np.uint8)) > mask].mean()
    assert inside > around + 20  # the tumour is brighter than the tissue around it


def test_synthetic_mri_variety():
    renders = [synth_mri.render(c, i, 64) for c in synth_mri.CLASSES for i in range(60)]
    yes = [m for (_, m), c in zip(renders, ["no"] * 60 + ["yes"] * 60) if c == "yes"]
    assert all(m.sum() == 0 for _, m in renders[:60]) and all(m.sum() > 0 for m in yes)
    regions = [cv2.connectedComponents(m)[0] - 1 for m in yes]
    sizes = [m.sum() for m in yes]
    assert 2 in regions and max(sizes) > 4 * min(sizes)  # two-region slices; varied sizes
    white = [img for img, _ in renders if img[0, 0] >= 220]
    assert 1 <= len(white) <= 20  # occasional white backgrounds or frames
    assert all((pp.clean_background(np.repeat(w[..., None], 3, 2))[0][:2] == 0).all() for w in white)


def test_load_applies_steps_before_resizing_keys_the_cache_and_never_writes_the_data(mri_root, cache_dir):
    before = tree_state(mri_root)
    index = scan(mri_root, "segmentation")
    plain = load(index, 32, cache_dir=cache_dir)
    steps = ["clean_background", {"crop": {"mode": "hard", "padding": 0.02}}, "musica"]
    cropped = load(index, 32, cache_dir=cache_dir, preprocess_steps=steps)
    assert cropped.fingerprint != plain.fingerprint and not cropped.from_cache
    assert load(index, 32, cache_dir=cache_dir, preprocess_steps=steps).from_cache
    other = load(index, 32, cache_dir=cache_dir, preprocess_steps=[{"crop": {"padding": 0.2}}])
    assert other.fingerprint not in (plain.fingerprint, cropped.fingerprint)
    # cropped to the head, then resized: the head fills the frame, and the tumour mask grows with it
    assert (cropped.images[:, :, :, 0] > 20).mean() > (plain.images[:, :, :, 0] > 20).mean() + 0.1
    assert cropped.masks.sum() > plain.masks.sum()
    image, mask = synth_mri.render("yes", 0, 64, seed=2)
    rgb, cut = pp.apply(steps, np.repeat(image[..., None], 3, 2), mask)
    np.testing.assert_array_equal(cropped.masks[6], cv2.resize(cut, (32, 32), interpolation=cv2.INTER_NEAREST))
    np.testing.assert_array_equal(cropped.images[6], cv2.resize(rgb, (32, 32), interpolation=cv2.INTER_AREA))
    assert tree_state(mri_root) == before


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_prepare_reads_the_embedded_brain_mri_set(task, cache_dir):
    cfg = DataConfig(
        task=task, synthetic="brain_mri", synthetic_counts=(10, 14), synthetic_size=64, image_size=32, balance_to=None
    )
    data = prepare(cfg, cache_dir=cache_dir)
    assert data.classes == ("no", "yes") and data.layout == "class_folders"
    n = sum(len(data.split(s)) for s in ("train", "val", "test"))
    assert n == 24
    if task == "segmentation":
        has_tumour = data.train.masks.reshape(len(data.train), -1).max(1) > 0
        np.testing.assert_array_equal(has_tumour, data.train.labels == 1)
    else:
        assert data.train.masks is None


def test_synthetic_settings_are_validated():
    assert DataConfig(synthetic="brain").problems() == ["synthetic: 'brain' must be one of leukemia, brain_mri"]
    (problem,) = DataConfig(synthetic="brain_mri", synthetic_counts=(1, 2, 3)).problems()
    assert problem.startswith("synthetic_counts: [1, 2, 3] must be 2 positive integers (images of no, yes")
    assert DataConfig(synthetic_counts=(3, 4, 4, 3)).problems() == []


# ---------------------------------------------------------------------------------------------------------------
# segmentation metrics, binary classification metrics, losses
# ---------------------------------------------------------------------------------------------------------------


def _square(top, left, side=10, size=32):
    m = np.zeros((size, size), np.uint8)
    m[top : top + side, left : left + side] = 1
    return m


def test_boundary_f1_known_answers():
    from models.evaluation import boundary_f1

    truth = _square(10, 10)
    shifted = _square(10, 13)  # 3 pixels to the right
    # Of the true outline's 36 pixels, 22 lie within 2 pixels of the shifted outline (worked out by hand: none of
    # the left side, 6 of the right side, 8 of the top and 8 of the bottom); by symmetry precision is 22/36 too.
    np.testing.assert_allclose(boundary_f1(truth[None], shifted[None]), [22 / 36])
    np.testing.assert_allclose(boundary_f1(truth[None], _square(10, 11)[None]), [1.0])  # 1 px off: within tolerance
    assert boundary_f1(truth[None], _square(10, 11)[None], tolerance=0)[0] < 1
    empty = np.zeros_like(truth)
    np.testing.assert_array_equal(
        boundary_f1(np.stack([empty, truth, empty]), np.stack([empty, empty, truth])), [1, 0, 0]
    )


def test_multi_region_dice_counts_components_and_scores_only_those_images():
    from models.evaluation import multi_region_dice, regions, segmentation_report

    two = np.maximum(_square(2, 2, 6), _square(20, 20, 6))
    touching_diagonally = np.maximum(_square(2, 2, 4), _square(6, 6, 4))  # corner to corner: one 8-connected region
    assert regions(two) == 2 and regions(touching_diagonally) == 1 and regions(np.zeros((4, 4))) == 0
    masks = np.stack([two, _square(5, 5), two])
    probs = np.stack([two, np.zeros((32, 32)), _square(2, 2, 6)]).astype(
        np.float32
    )  # perfect, missed, one of two found
    out = multi_region_dice(masks, probs)
    assert out == {"dice_multi_region": pytest.approx((1 + 2 * 36 / (72 + 36)) / 2), "multi_region_images": 2}
    assert np.isnan(multi_region_dice(masks[1:2], probs[1:2])["dice_multi_region"])
    report = segmentation_report(masks, probs)
    # boundary F1: 1, 0, and for one of two squares found precision 1, recall 1/2, so F1 2/3
    assert report["multi_region_images"] == 2 and report["boundary_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)


def test_binary_metrics_and_youden_threshold_known_answers():
    from models.evaluation import binary_metrics, binary_report, youden_threshold

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    m = binary_metrics(labels, scores)
    assert m["roc_auc"] == pytest.approx(15 / 16)  # 0.4 beats 3 of 4 negatives, the others all 4
    assert (m["sensitivity"], m["specificity"], m["precision"], m["f1"]) == pytest.approx((0.75, 0.75, 0.75, 0.75))
    assert m["confusion"] == {"tp": 3, "fp": 1, "fn": 1, "tn": 3}
    probs2 = np.stack([1 - scores, scores], 1)  # softmax columns: the positive class's column is used
    assert binary_metrics(labels, probs2, positive=1) == m
    flipped = binary_metrics(1 - labels, probs2[:, ::-1], positive=0)
    assert flipped["sensitivity"] == m["sensitivity"] and flipped["roc_auc"] == m["roc_auc"]
    val_labels, val_scores = np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.35, 0.4, 0.6, 0.9])
    assert youden_threshold(val_labels, val_scores) == pytest.approx(0.4)  # J = 1 there
    report = binary_report(val_labels, val_scores, labels, scores, positive_name="yes")
    assert report["positive_class"] == "yes" and report["youden_threshold"] == pytest.approx(0.4)
    at = report["at_youden"]  # test scores >= 0.4: 0.6 (a negative) and all four positives
    assert (at["sensitivity"], at["specificity"], at["precision"]) == pytest.approx((1.0, 0.75, 0.8))
    assert at["f1"] == pytest.approx(8 / 9) and report["f1"] == pytest.approx(0.75)
    assert youden_threshold(np.ones(3), np.array([0.2, 0.5, 0.9])) == 0.5  # one class: no choice to make


def test_segmentation_losses_by_name():
    import keras

    from models.metrics import get_loss
    from models.tasks import task_info

    y = np.array([[1.0, 0.0, 1.0, 0.0]], "float32")
    p = np.array([[0.9, 0.2, 0.6, 0.1]], "float32")
    values = {
        name: float(keras.ops.convert_to_numpy(get_loss(name)(y, p))) for name in task_info("segmentation").losses
    }
    assert values["bce"] == pytest.approx(values["binary_crossentropy"])
    bce = -np.mean(np.log([0.9, 0.8, 0.6, 0.9]))
    assert values["bce"] == pytest.approx(bce, rel=1e-4)
    focal = -np.mean([(1 - q) ** 2 * np.log(q) for q in (0.9, 0.8, 0.6, 0.9)])  # gamma 2 on the true class's prob
    assert values["focal"] == pytest.approx(focal, rel=1e-4) and values["focal"] < values["bce"]


# ---------------------------------------------------------------------------------------------------------------
# classical baselines
# ---------------------------------------------------------------------------------------------------------------


def test_hsv_threshold_recovers_the_smear_sets_own_window():
    from data_pipeline import synth
    from models import baselines
    from models.evaluation import segmentation_report

    images = np.stack([synth.render(c, i, 64) for c in synth.CLASSES for i in range(3)])
    masks = np.stack([synth.segment(img)[0] for img in images])
    params = baselines.fit("hsv_threshold", images[::2], masks[::2])
    assert (np.array(params["low"]) >= synth.HSV_LOW).all() and (np.array(params["high"]) <= synth.HSV_HIGH).all()
    predicted = baselines.predict("hsv_threshold", params, images[1::2])
    assert predicted.shape == masks[1::2].shape and predicted.dtype == np.uint8
    assert segmentation_report(masks[1::2], predicted)["dice"] > 0.95  # the masks were made by such a window


def test_kmeans_picks_k_by_silhouette_and_the_brightest_cluster():
    from models import baselines

    rng = np.random.default_rng(0)
    truth = np.zeros((6, 32, 32), np.uint8)
    grey = np.zeros((6, 32, 32), np.float32)
    for i in range(6):
        cv2.circle(grey[i], (16, 16), 13, 100, -1)  # tissue
        cv2.circle(truth[i], (10 + i, 14), 3 + i % 3, 1, -1)  # tumour of varying size and place
    grey[truth > 0] = 220
    images = np.repeat(np.clip(grey + rng.normal(0, 4, grey.shape), 0, 255).astype(np.uint8)[..., None], 3, 3)
    params = baselines.fit("kmeans", images[:4], truth[:4])
    assert params["k"] == 3 and max(params["silhouette"], key=params["silhouette"].get) == 3
    np.testing.assert_allclose(params["centres"], [0, 100, 220], atol=6)
    np.testing.assert_array_equal(baselines.predict("kmeans", params, images[4:]), truth[4:])
    with pytest.raises(ValueError, match="unknown baseline 'otsu'; one of hsv_threshold, kmeans"):
        baselines.fit("otsu", images, truth)


# ---------------------------------------------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------------------------------------------


def _check_gradcam(r: dict) -> None:
    assert r["1"]["peak"] == [2, 3] and r["1"]["in_red"] == 1.0 and r["1"]["in_green"] == 0.0  # red: class 1
    assert r["0"]["peak"] == [20, 22] and r["0"]["in_green"] == 1.0 and r["0"]["in_red"] == 0.0
    assert r["predicted_is_class_1"] and r["overlay"] == [[32, 32, 3], "uint8", 0, 51]


def test_gradcam_peaks_where_the_evidence_is_on_tensorflow_and_jax():
    """tests/scripts/gradcam_check.py here (the session's backend, TensorFlow by default) and in a fresh JAX
    process (the backend is fixed per process)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import keras

    script = Path(__file__).parent / "scripts" / "gradcam_check.py"
    other = "jax" if keras.backend.backend() != "jax" else "tensorflow"
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env={**os.environ, "KERAS_BACKEND": other, "PYTHONPATH": str(script.parents[2])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sys.path.insert(0, str(script.parent))
    try:
        from gradcam_check import check
    finally:
        sys.path.remove(str(script.parent))
    here = check()
    assert here["backend"] == keras.backend.backend()
    _check_gradcam(here)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    there = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert there["backend"] == other
    _check_gradcam(there)


@pytest.mark.parametrize("name", ["custom_cnn", "resnet50"])
def test_gradcam_runs_on_registered_classifiers(name):
    import models
    from models.gradcam import gradcam, split_at_map

    model = models.build(name, num_classes=2, input_shape=(32, 32, 3), dense_units=8)
    extractor, head = split_at_map(model)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(head(extractor(images.astype("float32"))), model(images.astype("float32")), atol=1e-5)
    heat = gradcam(model, images)
    assert heat.shape == (2, 32, 32) and heat.dtype == np.float32 and heat.min() >= 0 and heat.max() <= 1


@pytest.mark.parametrize("name, backbone", [("deeplabv3_plus", "resnet50"), ("fcn8", "vgg16")])
def test_segmenter_encoders_load_the_classifiers_imagenet_file(name, backbone, tmp_path, monkeypatch):
    """The encoder's no-top weights file (what keras.applications caches) loads into the segmenter's encoder."""
    from conftest import save_legacy_h5

    import models

    source = models.build(backbone, num_classes=2, input_shape=(32, 32, 3)).get_layer("backbone")
    rng = np.random.default_rng(1)
    for w in source.weights:  # weights no fresh build could have by chance
        w.assign(rng.normal(0, 1, w.shape).astype("float32"))
    info = models.get(name)
    assert info.imagenet_weights == models.get(backbone).imagenet_weights
    cached = tmp_path / "models" / info.imagenet_weights
    cached.parent.mkdir()
    save_legacy_h5(source, cached)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    model = models.build(name, num_classes=1, input_shape=(32, 32, 3), weights="imagenet", base_filters=4)
    by_path = {w.path: w for w in source.weights}
    loaded = model.get_layer("encoder").weights  # the layers up to the deepest tap (DeepLabV3+ stops in conv4)
    assert len(loaded) > 0.75 * len(by_path)
    for w in loaded:
        np.testing.assert_array_equal(np.asarray(w), np.asarray(by_path[w.path]))
