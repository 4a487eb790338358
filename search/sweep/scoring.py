"""The only place the test split is used: each trial's best checkpoint scored on it once the sweep has ended, as
parallel Ray tasks (on the cluster's GPUs when trials had them)."""

from __future__ import annotations

from typing import Any

from models.tasks import task_info
from search import storage as store
from search.study.checkpoints import backbone_weights, fold_member, head_record, model_files, saved_model, whole_model
from search.study.spec import Study

SHOWN_MASKS = 8  # test images whose predicted masks are kept for the report's figure
GRADCAM_PER_CLASS = 2  # test images per class the report shows the best classifier's Grad-CAM heatmaps of


def evaluate_checkpoint(
    checkpoint_path: str,
    task: str,
    batch_size: int,
    data,
    compile_cache=None,
    *,
    experiment_dir: str,
    cache_dir: str | None = None,
    tta: bool = False,
    calibrate: bool = False,
) -> tuple[dict, dict]:
    """Test-split metrics of one checkpoint (the only place the test split is used), and what the report needs:
    the test probabilities (classification) or the per-image Dice and the first predicted masks (segmentation).
    A head on a frozen backbone scores the backbone's cached features of the test images (``search.sweep.features``:
    the same numbers as its whole model on the images, without running the backbone again).
    ``compile_cache``: (backend, wanted, cache_dir) as the trials had it: checkpoints of one model share a compiled
    program. ``tta``: also the metrics with test-time augmentation (``tta_*``, the whole model on turned images).
    ``calibrate``: fit a temperature on the validation split, ECE before and after (``calibration``)."""
    import tempfile

    from search.sweep import compile_cache as jax_cache

    if compile_cache is not None:
        jax_cache.enable_for(*compile_cache)
    import numpy as np

    from data_pipeline.cache import default_cache_dir
    from data_pipeline.config import positive_index
    from models import stats
    from models.evaluation import binary_report, per_image_dice, predict, report_from_probs

    folds = data if isinstance(data, tuple) else (data,)
    data = folds[0]  # every fold has the same test split
    with tempfile.TemporaryDirectory() as tmp:
        folder = store.download(checkpoint_path, tmp)
        model, record = saved_model(folder), head_record(folder)
        inputs = {"test": data.test.images} | {f"val{i}": f.val.images for i, f in enumerate(folds)}
        if record is not None:
            features = _head_inputs(record, inputs, cache_dir or default_cache_dir(), experiment_dir, tmp)
            if features is None:  # this node's backbone is another (a random one built apart): the whole model
                model, record = whole_model(folder, experiment_dir), None
            else:
                inputs = features
        whole = whole_model(folder, experiment_dir) if tta and record is not None else model
    probs = predict(model, inputs["test"], batch_size)
    report = report_from_probs(data.test, probs, task, data.classes)
    if tta:
        tta_probs = predict(whole, data.test.images, batch_size, tta=True)
        with_tta = report_from_probs(data.test, tta_probs, task, data.classes)
        report |= {f"tta_{k}": v for k, v in with_tta.items() if isinstance(v, float)}
    facts = task_info(task)
    positive = positive_index(data.classes, data.config.positive_class) if facts.class_scores else None
    if positive is not None or (facts.class_scores and calibrate):
        val_probs, val_labels = _validation_probs(model, folds, inputs, batch_size)
    if positive is not None:  # two classes: binary metrics of the positive class, its threshold chosen on validation
        binary = binary_report(val_labels, val_probs, data.test.labels, probs, positive, data.classes[positive])
        report |= binary_columns(binary) | {"binary": binary}
    if facts.class_scores and calibrate:
        temperature = stats.fit_temperature(val_probs, val_labels)
        report["ece_calibrated"] = stats.ece(stats.apply_temperature(probs, temperature), data.test.labels)
        fitted_on = "validation" if len(folds) == 1 else "out-of-fold validation (each fold model on its own fold)"
        report["calibration"] = {"temperature": temperature, "fitted_on": fitted_on}
    if not facts.masks:
        return report, {"probs": probs, "labels": data.test.labels.astype(np.int32)}
    return report, {
        "dice": per_image_dice(data.test.masks, probs[..., 0], facts.threshold),
        "masks": (probs[:SHOWN_MASKS, ..., 0] >= facts.threshold).astype(np.uint8),
    }


def _head_inputs(record: dict, images: dict, cache_dir, experiment_dir: str, tmp: str) -> dict | None:
    """The backbone's features of ``images`` (split -> images) for a head checkpoint (its state's ``record``),
    from this node's feature cache; None when this node's backbone is not the one the head was trained on."""
    from search.sweep.features import Backbone, backbone_features

    def experiment_copy():  # only when this node has no entry for the backbone
        return backbone_weights(record, experiment_dir, tmp)

    features = backbone_features(Backbone(**record["spec"]), images, cache_dir, weights_file=experiment_copy)
    return features.by_split if features.digest == record["digest"] else None


BINARY_AT_HALF = ("roc_auc", "sensitivity", "specificity")  # of the positive class, at probability 0.5
BINARY_AT_YOUDEN = ("sensitivity", "specificity", "precision", "f1", "accuracy")


def binary_columns(binary: dict) -> dict[str, float]:
    """The results columns (without ``test_``) of ``models.evaluation.binary_report``: ROC AUC, sensitivity and
    specificity at 0.5, the threshold Youden's J chose on validation and the test metrics at it (``youden_*``)."""
    at_youden = binary["at_youden"]
    return {
        **{k: binary[k] for k in BINARY_AT_HALF},
        "youden_threshold": binary["youden_threshold"],
        **{f"youden_{k}": at_youden[k] for k in BINARY_AT_YOUDEN},
    }


def _validation_probs(model, folds: tuple, inputs: dict, batch_size: int):
    """Validation probabilities to calibrate on: the model's own, or for an ensemble of fold models each fold
    model's on its own validation fold (out-of-fold: no image is scored by a model that trained on it).
    ``inputs``: ``val<i>`` -> fold i's validation images, or their features for a head."""
    import numpy as np

    from models.evaluation import predict

    if len(folds) == 1:
        return predict(model, inputs["val0"], batch_size), folds[0].val.labels
    probs = [predict(fold_member(model, i), inputs[f"val{i}"], batch_size) for i in range(len(folds))]
    return np.concatenate(probs), np.concatenate([f.val.labels for f in folds])


def score_baselines(data) -> list[dict]:
    """The classical segmentation baselines (models.baselines: no training), each fitted on the training split and
    scored on the test split by the same code as the deep models; one JSON-ready row each."""
    import numpy as np

    from models import baselines
    from models.evaluation import segmentation_report

    rows = []
    for name, baseline in baselines.BASELINES.items():
        params = baselines.fit(name, data.train.images, data.train.masks)
        predicted = baselines.predict(name, params, data.test.images).astype(np.float32)
        report = segmentation_report(data.test.masks, predicted)
        rows.append({"model": name, "description": baseline.description, "params": params, **report})
    return rows


def gradcam_index(data, per_class: int = GRADCAM_PER_CLASS):
    """The test images the report explains (indices into the test split of ``data``, a loading option's data or its
    folds): the first ``per_class`` of each class."""
    import numpy as np

    data = data[0] if isinstance(data, tuple) else data
    labels = data.test.labels
    return np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(len(data.classes))])


def gradcam_images(datasets: dict):
    """Every loading option's example images (``gradcam_index``): a frozen backbone's trials keep their feature maps
    (``search.sweep.features``), whichever option's trial wins."""
    import numpy as np

    def test_images(data):
        return (data[0] if isinstance(data, tuple) else data).test.images

    return np.concatenate([test_images(d)[gradcam_index(d)] for d in datasets.values()])


def gradcam_examples(checkpoint_path: str, data, experiment_dir: str, cache_dir: str | None = None) -> dict:
    """Grad-CAM heatmaps (models.gradcam, for the predicted class) of one checkpoint on the example test images
    (``gradcam_index``), with those images, their labels and predictions; {} for a model without a single feature
    map (a k-fold ensemble). A head on a frozen backbone explains the feature maps its sweep's trials kept in this
    node's cache (no backbone built here: the same heatmaps as its whole model's, tested); a whole model, or a head
    whose maps this node lacks, runs its whole model."""
    import tempfile

    import keras
    import numpy as np

    from data_pipeline.cache import default_cache_dir
    from models.gradcam import gradcam_of_map, has_map, head_on_map, split_at_map
    from search.sweep.features import Backbone, cached_maps

    index = gradcam_index(data)
    if not len(index):  # no test image to explain
        return {}
    data = data[0] if isinstance(data, tuple) else data
    images = data.test.images[index]
    with tempfile.TemporaryDirectory() as tmp:
        folder = store.download(checkpoint_path, tmp)
        if len(model_files(folder)) > 1:
            return {}
        record, fmap = head_record(folder), None
        if record is not None:
            backbone = Backbone(**record["spec"])
            fmap = cached_maps(backbone, record["digest"], images, cache_dir or default_cache_dir())
        if fmap is not None:
            head = head_on_map(saved_model(folder), fmap.shape[1:])
        else:
            model = whole_model(folder, experiment_dir)
            if not has_map(model):
                return {}
            extractor, head = split_at_map(model)
            fmap = keras.ops.convert_to_numpy(extractor(images.astype("float32"), training=False))
    predicted = keras.ops.convert_to_numpy(head(fmap.astype("float32"), training=False)).argmax(-1)
    return {
        "gradcam_images": images,
        "gradcam_labels": data.test.labels[index].astype(np.int32),
        "gradcam_predicted": predicted.astype(np.int32),
        "gradcam_heatmaps": gradcam_of_map(head, fmap, images.shape[1:3], predicted).astype(np.float16),
    }


def start_gradcam(rows: list[dict], study: Study, datasets: dict, resources: dict, experiment_dir: str):
    """``gradcam_examples`` of the best trial (chosen on validation, so known before the test scoring, beside which
    it runs) as a Ray task: (that trial's name, the task's reference), or None without a checkpoint to explain."""
    import pandas as pd
    import ray

    from search.study.results import best_row

    best = best_row(pd.DataFrame(rows), study.metric, study.mode)
    if best is None or not best.get("checkpoint"):
        return None
    data = datasets[int(best.get("option", study.data.option))]
    task = ray.remote(num_cpus=resources["cpus_per_trial"], num_gpus=resources["gpus_per_trial"])(gradcam_examples)
    return best["trial"], task.remote(best["checkpoint"], data, experiment_dir, resources.get("cache_dir"))


def evaluate_all(
    jobs: list[tuple[str, Any]], study: Study, datasets: dict, resources: dict, experiment_dir: str
) -> list:
    """Evaluate checkpoints as parallel Ray tasks (on the cluster's GPUs when trials had them): per job, what
    ``evaluate_checkpoint`` returns, or the ``ray.exceptions.RayError`` its task ended with (an unreadable checkpoint,
    an exception while scoring, a worker killed for memory), so that one trial's failure costs only its own scores."""
    import ray

    refs = {opt: ray.put(d) for opt, d in datasets.items()}
    cpus, gpus = resources["cpus_per_trial"], resources["gpus_per_trial"]
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=1)(evaluate_checkpoint)
    cache = (study.train.backend, study.train.compile_cache, resources.get("cache_dir"))
    options = {"tta": study.search.tta, "calibrate": study.train.calibrate, "experiment_dir": experiment_dir}
    options["cache_dir"] = resources.get("cache_dir")
    pending = [task.remote(path, study.task, study.train.batch_size, refs[opt], cache, **options) for path, opt in jobs]
    return [_outcome(ref) for ref in pending]


def _outcome(ref):
    """A task's result, or the error it ended with."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        return exc
