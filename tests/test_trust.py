"""Trust's pure functions on hand-made arrays with known answers: McNemar, paired bootstrap, Wilcoxon, macro-F1,
ECE, temperature scaling, test-time augmentation."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from models import stats


def test_mcnemar_exact_p_value_of_a_known_table():
    # 9 images only A gets right, 1 only B: two-sided exact p = 2 · P(X ≤ 1 | Binomial(10, 1/2)) = 22/1024
    a = np.array([1] * 9 + [0] + [1] * 30 + [0] * 5, bool)
    b = np.array([0] * 9 + [1] + [1] * 30 + [0] * 5, bool)
    out = stats.mcnemar(a, b)
    assert (out["only_a"], out["only_b"]) == (9, 1)
    assert out["p"] == pytest.approx(22 / 1024, abs=1e-12)
    assert stats.mcnemar(a, a)["p"] == 1.0  # they never disagree


def test_macro_f1_matches_scikit_learn_on_batches_of_resamples():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, (3, 50)), rng.integers(0, 4, (3, 50))
    p[2] = np.where(p[2] == 3, 0, p[2])  # a class never predicted scores 0
    want = [f1_score(y[i], p[i], average="macro", labels=range(4), zero_division=0) for i in range(3)]
    np.testing.assert_allclose(stats.macro_f1(y, p, 4), want, atol=1e-12)


def _probs(pred: np.ndarray, k: int = 3) -> np.ndarray:
    out = np.full((len(pred), k), 0.1 / (k - 1))
    out[np.arange(len(pred)), pred] = 0.9
    return out


def test_bootstrap_interval_excludes_zero_for_a_clearly_better_classifier_and_includes_it_for_identical_ones():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    good = labels.copy()
    good[:20] = (good[:20] + 1) % 3  # 90% right
    bad = labels.copy()
    bad[100:180] = (bad[100:180] + 1) % 3  # 60% right
    out = stats.compare_classifiers(labels, _probs(good), _probs(bad), n_resamples=2000)
    assert out["difference"] == pytest.approx(0.3)
    assert 0 < out["low"] < 0.3 < out["high"] and out["p"] < 1e-6 and out["verdict"] == "better"
    assert out["f1"]["low"] > 0
    assert stats.sentence("B", out).startswith("better than B (accuracy difference +0.300, 95% CI 0.")
    same = stats.compare_classifiers(labels, _probs(good), _probs(good), n_resamples=2000)
    assert same["difference"] == 0 and same["low"] <= 0 <= same["high"] and same["p"] == 1.0
    assert stats.sentence("B", same).startswith("not distinguishable from B on this test set (")
    # the same seed gives the same interval
    again = stats.compare_classifiers(labels, _probs(good), _probs(bad), n_resamples=2000)
    assert (again["low"], again["high"]) == (out["low"], out["high"])


def test_segmenters_compared_on_per_image_dice_with_wilcoxon():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(2)
    a = rng.uniform(0.8, 0.95, 40)
    worse = a - rng.uniform(0.05, 0.15, 40)
    out = stats.compare_segmenters(worse, a, n_resamples=2000)
    assert out["high"] < 0 and out["verdict"] == "worse"
    assert out["p"] == pytest.approx(wilcoxon(worse, a).pvalue)
    same = stats.compare_segmenters(a, a, n_resamples=2000)
    assert same["verdict"] == "indistinguishable" and same["low"] <= 0 <= same["high"]


def test_ece_of_a_perfectly_calibrated_and_of_an_over_confident_predictor():
    calibrated = np.tile([0.8, 0.2], (100, 1))  # says 80% class 0 ...
    labels = np.array([0] * 80 + [1] * 20)  # ... and is right on 80 of 100
    assert stats.ece(calibrated, labels) == pytest.approx(0.0, abs=1e-12)
    over = np.tile([0.99, 0.01], (100, 1))  # 99% sure, right half the time
    half = np.array([0, 1] * 50)
    assert stats.ece(over, half) == pytest.approx(0.49)
    r = stats.reliability(over, half)
    assert r["count"][-1] == 100 and r["accuracy"][-1] == pytest.approx(0.5) and np.isnan(r["accuracy"][0])


def test_temperature_scaling_softens_an_over_confident_predictor_and_keeps_its_labels():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(400, 4)) * 2
    labels = np.array([rng.choice(4, p=np.exp(z) / np.exp(z).sum()) for z in logits])  # calibrated at T = 1
    over = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)  # the same model, 3× over-confident
    t = stats.fit_temperature(over, labels)
    assert t == pytest.approx(3, rel=0.2)
    fixed = stats.apply_temperature(over, t)
    assert (fixed.argmax(1) == over.argmax(1)).all()
    assert stats.ece(fixed, labels) < stats.ece(over, labels) / 2


def test_tta_averages_the_symmetries_and_turns_masks_back():
    from models.evaluation import predict, tta_transforms

    assert len(tta_transforms(8, 8)) == 8 and len(tta_transforms(8, 6)) == 4 and tta_transforms(8, 8)[0] == (0, False)

    class Echo:  # a "segmenter" whose mask is its input's red channel: TTA must give the input's own mask back
        def __call__(self, x, training=False):
            return x[..., :1] / 255.0

    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(predict(Echo(), images, tta=True), images[..., :1] / 255.0, atol=1e-6)

    class TopLeft:  # a "classifier" that looks at one corner: TTA averages the 8 corners' views
        def __call__(self, x, training=False):
            return x[:, 0, 0, :1] / 255.0

    out = predict(TopLeft(), images, tta=True)
    corners = images[:, [0, 0, -1, -1], [0, -1, 0, -1], 0] / 255.0
    np.testing.assert_allclose(out[:, 0], corners.mean(1), atol=1e-6)
