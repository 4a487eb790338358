"""A trial on a frozen backbone checkpoints its head alone (a few MB): the checkpoint resumes with its optimizer's
state, scores the backbone's features as its whole model scores the images, and is put together with the
experiment's copy of the backbone into that whole model (export, Grad-CAM); a backbone file that is not the one
the head was trained on is refused rather than mixed."""

import dataclasses
import json

import numpy as np
import pytest


def test_head_checkpoint_resumes_and_assembles_into_its_whole_model(tmp_path):
    import keras

    import models
    from models.metrics import get_loss
    from search.study import checkpoints
    from search.study.experiment import backbone_file
    from search.sweep.features import Backbone, backbone_features, publish_backbone

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 8)
    backbone = Backbone("efficientnetv2_b0", 32, None, 7, "tensorflow", None)
    features = backbone_features(backbone, {"train": x}, tmp_path / "cache")
    experiment = str(tmp_path / "experiment")
    publish_backbone(features, experiment)
    build = {"num_classes": 4, "dropout": 0.2, "dense_units": 16, "freeze_backbone": True}
    head = models.build_head("efficientnetv2_b0", feature_shape=features.by_split["train"].shape[1:], **build)
    head.compile(optimizer=keras.optimizers.Adam(0.01), loss=get_loss("categorical_crossentropy"))
    head.fit(features.by_split["train"], y, batch_size=4, epochs=1, verbose=0)
    record = {"spec": dataclasses.asdict(backbone), "digest": features.digest, "build": build}
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    checkpoints.write(folder, [head], {"epoch": 1, "best": 0.5, "backbone": record})
    whole_size = sum(w.numpy().nbytes for w in models.build("efficientnetv2_b0", num_classes=4,
                                                             input_shape=(32, 32, 3)).weights)  # fmt: skip
    assert (folder / checkpoints.CHECKPOINT_MODEL).stat().st_size < 0.2 * whole_size  # no backbone in it

    (resumed,) = checkpoints.load(folder)  # compiled: Adam's moments and step count come back
    assert int(resumed.optimizer.iterations.numpy()) == 2
    for a, b in zip(resumed.optimizer.variables, head.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The same head weights, and its dropout stream where it stood (a .keras file leaves that out; the checkpoint's
    # state keeps it): one more epoch of each, in the same order, ends bitwise the same.
    for model in (head, resumed):
        model.fit(features.by_split["train"], y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(resumed.weights, head.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # A checkpoint written before the dropout streams were kept loads as it was saved, its streams from the start.
    state = json.loads((folder / checkpoints.CHECKPOINT_STATE).read_text())
    kept = state.pop("seed_states")
    assert len(kept) == 1 and kept[0]  # the head's dropout has a stream
    (folder / checkpoints.CHECKPOINT_STATE).write_text(json.dumps(state))
    (older,) = checkpoints.load(folder)
    assert int(older.optimizer.iterations.numpy()) == 2
    on_features = checkpoints.saved_model(folder).predict(features.by_split["train"], verbose=0)
    whole = checkpoints.whole_model(folder, experiment)
    assert whole.name == "efficientnetv2_b0" and whole.input_shape == (None, 32, 32, 3)
    np.testing.assert_allclose(whole.predict(x, verbose=0), on_features, atol=1e-5)

    other = Backbone("efficientnetv2_b0", 32, None, 8, "tensorflow", None)  # another seed: another backbone
    stranger = backbone_features(other, {"train": x}, tmp_path / "cache")
    assert stranger.digest != features.digest
    with open(backbone_file(experiment, features.digest), "wb") as f:
        f.write(stranger.weights_file.read_bytes())
    with pytest.raises(RuntimeError, match="not the one its file holds"):
        checkpoints.whole_model(folder, experiment)


def test_gradcam_of_a_head_from_its_trials_cached_maps_is_its_whole_models(tmp_path, monkeypatch):
    """Trials keep the feature maps of the report's example images beside their features; Grad-CAM of a head
    checkpoint from those maps, with no backbone built, gives its whole model's predictions and heatmaps (what a
    node without the maps computes)."""
    from types import SimpleNamespace

    import keras

    import models
    import search.sweep.features
    from search.study import checkpoints
    from search.sweep import scoring
    from search.sweep.features import Backbone, backbone_features, publish_backbone

    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (9, 64, 64, 3), dtype=np.uint8)  # 64 px: a 2 x 2 feature map, so heatmaps vary
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2])
    data = SimpleNamespace(test=SimpleNamespace(images=x, labels=labels), classes=["a", "b", "c"])
    examples = scoring.gradcam_index(data)
    assert list(labels[examples]) == [0, 0, 1, 1, 2, 2]
    backbone = Backbone("efficientnetv2_b0", 64, None, 7, "tensorflow", None)
    cache = tmp_path / "cache"
    monkeypatch.setattr(search.sweep.features, "MAP_BATCH", 4)  # the 6 examples' maps in two calls
    features = backbone_features(backbone, {"test": x}, cache, maps_of=scoring.gradcam_images({1: data}))
    experiment = str(tmp_path / "experiment")
    publish_backbone(features, experiment)
    build = {"num_classes": 3, "dropout": 0.2, "dense_units": 16, "freeze_backbone": True}
    head = models.build_head("efficientnetv2_b0", feature_shape=features.by_split["test"].shape[1:], **build)
    head.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    head.fit(features.by_split["test"], labels, batch_size=3, epochs=3, verbose=0)
    record = {"spec": dataclasses.asdict(backbone), "digest": features.digest, "build": build}
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    checkpoints.write(folder, [head], {"epoch": 3, "best": 0.5, "backbone": record})

    def no_backbone(*args):
        raise AssertionError("the whole model was built although the maps are cached")

    with monkeypatch.context() as m:
        m.setattr(scoring, "whole_model", no_backbone)
        from_maps = scoring.gradcam_examples(str(folder), data, experiment, str(cache))
    whole = scoring.gradcam_examples(str(folder), data, experiment, str(tmp_path / "empty-cache"))
    assert sorted(from_maps) == sorted(whole) == ["gradcam_heatmaps", "gradcam_images", "gradcam_labels",
                                                  "gradcam_predicted"]  # fmt: skip
    np.testing.assert_array_equal(from_maps["gradcam_images"], x[examples])
    np.testing.assert_array_equal(from_maps["gradcam_labels"], whole["gradcam_labels"])
    np.testing.assert_array_equal(from_maps["gradcam_predicted"], whole["gradcam_predicted"])
    heat = from_maps["gradcam_heatmaps"].astype("float32")
    assert heat.shape == (6, 64, 64) and heat.std(axis=(1, 2)).max() > 0.05
    np.testing.assert_allclose(heat, whole["gradcam_heatmaps"].astype("float32"), atol=2e-3)
