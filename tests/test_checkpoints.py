"""A classifier's latest checkpoint on a frozen pretrained backbone is its head and optimizer state: put back onto
a rebuilt model it has the same weights and optimizer state (Adam's moments, step count) as when it was written, and
a different backbone is refused rather than mixed."""

from dataclasses import replace

import numpy as np
import pytest

from search.spec import Train


def _build(seed: int):
    import keras

    import models
    from models.metrics import get_loss

    keras.utils.set_random_seed(seed)
    model = models.build(
        "inception_resnet_v2", num_classes=4, input_shape=(75, 75, 3), weights=None, dropout=0.2, freeze_backbone=True
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=get_loss("categorical_crossentropy"))
    return model


def test_head_checkpoint_resumes_exactly_and_refuses_another_backbone(tmp_path):
    import models
    from search import checkpoints

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (8, 75, 75, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 8)
    model = _build(seed=7)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    irv2, unet = models.get("inception_resnet_v2"), models.get("unet")
    pretrained = Train(weights="imagenet", freeze_backbone=True)
    fine_tuned = replace(pretrained, fine_tune_layers=5, fine_tune_after=1)
    assert checkpoints.head_suffices(irv2, pretrained, 1)
    assert not checkpoints.head_suffices(irv2, replace(pretrained, weights=None), 1)  # random backbone
    assert not checkpoints.head_suffices(irv2, replace(pretrained, freeze_backbone=False), 1)
    assert checkpoints.head_suffices(irv2, fine_tuned, 1)
    assert not checkpoints.head_suffices(irv2, fine_tuned, 2)
    assert not checkpoints.head_suffices(unet, pretrained, 1)
    checkpoints.write(tmp_path, model, {"epoch": 1, "best": 0.5}, whole=False, info=irv2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.npz", "state.json"]  # no backbone weights
    assert (tmp_path / "head.npz").stat().st_size < 0.2 * sum(w.numpy().nbytes for w in model.weights)

    whole, state, head = checkpoints.read(tmp_path)
    assert whole is None and state["epoch"] == 1 and state["best"] == 0.5
    again = _build(seed=7)
    backbone = again.get_layer("backbone")  # as a pretrained backbone is: the same weights file, the same weights
    backbone.set_weights(model.get_layer("backbone").get_weights())
    checkpoints.restore_head(irv2, again, again, head, state)
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
    for a, b in zip(again.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # Adam's moments and step count too
    assert int(again.optimizer.iterations.numpy()) == 2  # two steps done: the next epoch continues from there

    first = backbone.weights[0]
    first.assign(first.numpy() + 1e-3)  # another backbone (a changed weights file)
    with pytest.raises(RuntimeError, match="rebuilt backbone differs"):
        checkpoints.restore_head(irv2, again, again, head, state)
