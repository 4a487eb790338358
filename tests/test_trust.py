"""Trust's pure functions on hand-made arrays with known answers: McNemar, paired bootstrap, Wilcoxon, macro-F1,
ECE, temperature scaling, test-time augmentation."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

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


def test_fold_plans_are_stratified_disjoint_leak_free_and_share_the_test_split():
    from data_pipeline.splits import fold_plans, leakage_audit, plan_splits

    labels = np.repeat([0, 1, 2], [30, 20, 10])
    base = plan_splits(labels, balance_to=40, seed=1)
    plans = fold_plans(labels, base, 5, balance_to=40, seed=1)
    vals = [p.val[:, 0] for p in plans]
    pool = set(range(60)) - set(base.test[:, 0].tolist())
    assert sorted(np.concatenate(vals).tolist()) == sorted(pool)  # every non-test image validated exactly once
    for p, val in zip(plans, vals):
        np.testing.assert_array_equal(p.test, base.test)
        assert (p.val[:, 1] == 0).all() and leakage_audit(p) == {"val": 0, "test": 0}
        assert not set(p.train[:, 0].tolist()) & (set(val.tolist()) | set(base.test[:, 0].tolist()))
        assert np.bincount(labels[p.train[:, 0]]).tolist() == [28, 28, 28]  # topped up per class, own sources only
        share = np.bincount(labels[sorted(pool)]) * len(val) / len(pool)  # stratified: each class's share
        assert abs(np.bincount(labels[val], minlength=3) - share).max() <= 1
    with pytest.raises(ValueError, match="leak_free"):
        fold_plans(labels, plan_splits(labels, protocol="study", balance_to=40), 5)


def test_fold_mean_averages_folds_and_reports_their_spread():
    from search.sweep.trial import fold_mean

    same = {"mixed_precision": "float32"}
    folds = [
        {"val_accuracy": 0.6, "val_loss": 1.0, "diverged": False, "optimizer_steps": 4, **same},
        {"val_accuracy": 0.8, "val_loss": 2.0, "diverged": True, "optimizer_steps": 4, **same},
    ]
    out = fold_mean(folds, "val_accuracy")
    assert out["val_accuracy"] == pytest.approx(0.7) and out["val_loss"] == 1.5
    assert out["val_accuracy_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert out["diverged"] is True and out["mixed_precision"] == "float32" and out["optimizer_steps"] == 4
    assert "val_accuracy_std" not in fold_mean(folds[:1], "val_accuracy")


def test_winner_is_compared_with_runner_up_family_bests_and_the_studys_pick():
    from models.evaluation import per_image_dice
    from search.outputs.report import tables

    rng = np.random.default_rng(0)
    truth = rng.random((30, 8, 8)) > 0.5
    rows, preds = [], {}
    for model, lr, val, noise in (("unet", 0.01, 0.9, 0.0), ("unet", 0.001, 0.8, 0.3), ("unet_fpn", 0.01, 0.7, 0.6)):
        trial = f"{model}-lr{lr:g}-do0"
        rows.append({"trial": trial, "model": model, "lr": lr, "dropout": 0.0, "val_dice": val})
        probs = np.where(rng.random(truth.shape) < noise, 1 - truth, truth).astype(float)
        preds[f"{trial}/dice"] = per_image_dice(truth, probs)
    frame = pd.DataFrame(rows)
    pick = {"model": "unet_fpn", "lr": 0.01, "dropout": 0.0}
    roles = [role for role, _ in tables.opponents(frame, "segmentation", pick)]
    assert roles == ["winner", "runner-up", "best unet_fpn", "the study's pick"]
    table, lines = tables.paired_comparisons(frame, "segmentation", preds, pick, n_resamples=1000)
    assert list(table["verdict"]) == ["better"] * 3  # noise-free masks against noisy ones
    assert lines[0].startswith("The winner unet-lr0.01-do0 is better than runner-up unet-lr0.001-do0 (per-image Dice")
    assert "Wilcoxon p = " in lines[0]
    study = tables.study_pick(tables.reference("segmentation"), "segmentation")
    assert set(study) == {"model", "lr", "dropout"}


def test_classifiers_on_different_test_splits_are_not_paired():
    from search.outputs.report import tables

    frame = pd.DataFrame(
        [
            {"trial": "a", "model": "m", "option": 1, "lr": 0.01, "dropout": 0.0, "val_accuracy": 0.9},
            {"trial": "b", "model": "m", "option": 2, "lr": 0.01, "dropout": 0.0, "val_accuracy": 0.8},
        ]
    )
    labels = np.array([0, 1, 1, 0])
    preds = {"a/probs": np.eye(2)[labels], "a/labels": labels, "b/probs": np.eye(2)[labels], "b/labels": labels}
    table, lines = tables.paired_comparisons(frame, "classification", preds)
    assert table.empty and lines == ["runner-up b: another test split (loading option), so no paired comparison."]


def test_spec_validates_folds_and_calibration():
    from search.study.spec import SpecError, load_study

    study = load_study("classification", "smoke", {"search": {"folds": 3, "tta": True}, "train": {"calibrate": True}})
    assert (study.search.folds, study.search.tta, study.train.calibrate) == (3, True, True)
    with pytest.raises(SpecError) as err:
        load_study(
            "segmentation",
            "smoke",
            {"search": {"folds": 2, "repeats": 2}, "data": {"protocol": "study"}, "train": {"calibrate": True}},
        )
    for text in ("choose folds or repeats", "needs data.protocol leak_free", "train.calibrate: temperature scaling"):
        assert text in str(err.value)


def test_ensemble_averages_its_fold_models_survives_saving_and_calibrates_out_of_fold(tmp_path):
    from types import SimpleNamespace

    import keras

    from models.evaluation import predict
    from search.study.checkpoints import ensemble, fold_member
    from search.sweep.scoring import _validation_probs

    def tiny(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((4, 4, 3))
        out = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
        return keras.Model(inputs, out, name="same_name")  # fold models share their registry name

    members = [tiny(1), tiny(2)]
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    alone = [predict(m, images) for m in members]
    model = ensemble(members)
    model.save(tmp_path / "e.keras")
    loaded = keras.saving.load_model(tmp_path / "e.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(predict(loaded, images), (alone[0] + alone[1]) / 2, atol=1e-6)

    # out-of-fold: fold i's validation images are scored by fold model i only
    folds = tuple(SimpleNamespace(val=SimpleNamespace(images=images[i::2], labels=np.arange(5)[i::2])) for i in (0, 1))
    inputs = {f"val{i}": fold.val.images for i, fold in enumerate(folds)}  # images (a head's: their features)
    probs, labels = _validation_probs(loaded, folds, inputs, 8)
    np.testing.assert_allclose(probs, np.concatenate([alone[0][0::2], alone[1][1::2]]), atol=1e-6)
    assert labels.tolist() == [0, 2, 4, 1, 3] and fold_member(loaded, 1).name == "fold_1"


def test_a_classifiers_metrics_with_intervals_match_scikit_learn_and_the_report():
    from models.evaluation import classification_report

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 80)
    logits = rng.normal(size=(80, 4))
    logits[np.arange(80), labels] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report = classification_report(labels, probs, ("a", "b", "c", "d"))
    out = stats.classifier_intervals(labels, probs, n_resamples=2000)
    assert out["accuracy"]["value"] == pytest.approx(report["accuracy"], abs=1e-12)
    assert out["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)))
    assert out["f1"]["value"] == pytest.approx(report["f1"], abs=1e-12)
    assert out["roc_auc"]["value"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"), abs=1e-12)
    assert out["ece"]["value"] == pytest.approx(report["ece"], abs=1e-12)
    for name, m in out.items():
        assert m["low"] < m["value"] < m["high"], name  # 80 images: a real interval around the estimate
    # batched ECE equals one ECE per resample
    rows = rng.integers(0, 80, (3, 80))
    np.testing.assert_allclose(stats.ece(probs[rows], labels[rows]), [stats.ece(probs[r], labels[r]) for r in rows])
