"""A trial on a frozen backbone checkpoints its head alone (a few MB): the checkpoint resumes with its optimizer's
state, scores the backbone's features as its whole model scores the images, and is put together with the
experiment's copy of the backbone into that whole model (export, Grad-CAM); a backbone file that is not the one
the head was trained on is refused rather than mixed."""

import dataclasses

import numpy as np
import pytest


def test_head_checkpoint_resumes_and_assembles_into_its_whole_model(tmp_path):
    import keras

    import models
    from models.metrics import get_loss
    from search import checkpoints
    from search.experiment import backbone_file
    from search.features import Backbone, backbone_features, publish_backbone

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
