"""Metric definitions checked against hand-computed values, and the Keras metrics against the numpy reports."""

import keras
import numpy as np
import pytest

from models.evaluation import classification_report, segmentation_report
from models.metrics import PixelScore, bce_dice_loss, dice_loss, get_loss, study_dice, study_iou


def _pair():
    y = np.zeros((2, 4, 4), np.float32)
    y[0, :2, :2] = 1  # 4 foreground pixels in image 0, none in image 1
    p = np.zeros((2, 4, 4), np.float32)
    p[0, :2, :1] = 0.9  # 2 true positives
    p[0, 3, 3] = 0.8  # 1 false positive
    p[1, 0, 0] = 0.6  # 1 false positive in the empty image
    return y, p


def test_segmentation_report_by_hand():
    y, p = _pair()
    r = segmentation_report(y, p)
    tp, fp, fn = 2, 2, 2
    assert r["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == pytest.approx(0.5)
    assert r["accuracy"] == pytest.approx(28 / 32)
    assert r["dice_per_image"] == pytest.approx((4 / 7 + 0.0) / 2)  # image 1: empty mask, 1 FP -> 0
    soft_inter = 0.9 * 2
    assert r["study_dice"] == pytest.approx((2 * soft_inter + 1) / (4 + p.sum() + 1))
    per_image = [(soft_inter + 1) / (4 + p[0].sum() - soft_inter + 1), 1 / (0 + p[1].sum() + 1)]
    assert r["study_iou"] == pytest.approx(np.mean(per_image))
    empty = segmentation_report(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))
    assert empty["dice_per_image"] == 1.0 and empty["iou_per_image"] == 1.0


def test_keras_metrics_match_the_numpy_definitions():
    y, p = _pair()
    yk, pk = y[..., None], p[..., None]
    dice, iou = PixelScore("dice"), PixelScore("iou")
    for m in (dice, iou):  # two batches accumulate to the dataset-level value
        m.update_state(yk[:1], pk[:1])
        m.update_state(yk[1:], pk[1:])
    r = segmentation_report(y, p)
    assert float(dice.result()) == pytest.approx(r["dice"], abs=1e-6)
    assert float(iou.result()) == pytest.approx(r["iou"], abs=1e-6)
    assert float(study_dice(yk, pk)) == pytest.approx(r["study_dice"], abs=1e-6)
    assert float(study_iou(yk, pk)) == pytest.approx(r["study_iou"], abs=1e-6)
    assert float(dice_loss(yk, pk)) == pytest.approx(1 - r["study_dice"], abs=1e-6)
    assert float(bce_dice_loss(yk, pk)) > float(dice_loss(yk, pk))
    restored = PixelScore.from_config(dice.get_config())
    assert restored.kind == "dice" and restored.threshold == 0.5


def test_classification_report_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8]]
    )
    r = classification_report(y, probs, ("A", "B", "C"))
    assert r["accuracy"] == pytest.approx(5 / 6)
    assert r["confusion_matrix"] == [[2, 0, 0], [1, 1, 0], [0, 0, 2]]
    prec = [2 / 3, 1.0, 1.0]
    rec = [1.0, 0.5, 1.0]
    f1 = [2 * p * q / (p + q) for p, q in zip(prec, rec)]
    assert r["precision"] == pytest.approx(np.mean(prec)) and r["recall"] == pytest.approx(np.mean(rec))
    assert r["f1"] == pytest.approx(np.mean(f1))
    assert r["per_class"]["B"]["support"] == 2 and r["per_class"]["C"]["roc_auc"] == pytest.approx(1.0)
    assert r["loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(6), y])))


def test_losses_by_name():
    assert isinstance(get_loss("categorical_crossentropy"), keras.losses.SparseCategoricalCrossentropy)
    assert get_loss("dice") is dice_loss
    with pytest.raises(ValueError, match="unknown loss 'tversky'"):
        get_loss("tversky")


def test_compiled_segmenter_round_trips_through_a_keras_file(tmp_path):
    """Resuming a trial reloads its checkpoint compiled: custom losses and metrics must deserialize."""
    import models
    from models.metrics import training_metrics

    model = models.build("unet", num_classes=1, input_shape=(32, 32, 3), base_filters=4)
    model.compile(optimizer="adam", loss=get_loss("bce_dice"), metrics=training_metrics("segmentation"))
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    y = (x[..., :1] > 128).astype("float32")
    model.train_on_batch(x, y)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=True)
    assert int(loaded.optimizer.iterations) == 1  # Adam's state came back, so a resumed trial continues, not restarts
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    logs = loaded.train_on_batch(x, y, return_dict=True)
    assert {"loss", "dice", "iou", "study_dice", "study_iou"} <= set(logs)
